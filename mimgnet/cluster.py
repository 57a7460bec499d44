"""Group an unlabeled folder of photos into K clusters with a SimCLR encoder and a Mini-ImageNet checkpoint.

    python mimgnet/cluster.py --encoder runs/simclr/last.pt --checkpoint runs/mimgnet/last.pt \
        --images my_photos --clusters 5

Every image under --images (any nesting; hidden and non-image files skipped) is converted like the
training data (data/prepare_mimgnet.py load_image: RGB, 84x84) and encoded by the SimCLR encoder as the
feature export does (simclr/trainer.py encode, ENCODER_CHUNK images at a time); the Meta-GMVAE model
then encodes all the features as ONE set and groups them as omniglot/cluster.py does (training prior's
EM from --restarts starts, responsibilities averaged over MC samples).  Writes <out>/clusters.csv (file,
cluster, confidence) and <out>/cluster_<k>.png (the members as RGB thumbnails).  With class folders,
prints the adjusted Rand index and normalised mutual information beside k-means on the SimCLR features.
"""
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from metagmvae.startup import quiet_ctrl_c  # noqa: E402  (torch-free: first)
quiet_ctrl_c(__name__)  # a Ctrl-C from here on: one line, exit code 130

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from data.prepare_mimgnet import load_image  # noqa: E402
from metagmvae import imagefolders  # noqa: E402
from metagmvae import cpu_memory  # noqa: E402
from metagmvae.runfiles import exit_on_user_error  # noqa: E402
from mimgnet.evaluate import check_encoder_matches  # noqa: E402
from mimgnet.dataset import split_features  # noqa: E402
from mimgnet.model import load_model  # noqa: E402
from omniglot.figures import TILE, save_tiles  # noqa: E402
from simclr import trainer as simclr_trainer  # noqa: E402


def main(argv=None):
    """Returns {"cluster": (N,), "confidence": (N,), "scores": {name: {"ari", "nmi"}} or None}."""
    cpu_memory.set_up()
    parser = imagefolders.grouping_parser(__doc__)
    parser.add_argument("--encoder", type=Path, required=True, help="the SimCLR checkpoint the features came from")
    parser.add_argument("--checkpoint", type=Path, required=True,
                        help="our Mini-ImageNet .pt checkpoint or the authors' .pth, trained on the --encoder's "
                             "features")
    args = parser.parse_args(argv)
    with exit_on_user_error(parser.prog):
        device, files = imagefolders.start_grouping(args)
        encoder = simclr_trainer.load_model(args.encoder, device)
        model = load_model(args.checkpoint, device).eval()
        check_encoder_matches(encoder, model, args.encoder, args.checkpoint)
        images = np.stack([load_image(f) for f in files])  # (N, 84, 84, 3) uint8
        pixels = torch.from_numpy(images).permute(0, 3, 1, 2)  # (N, 3, 84, 84), as simclr/data.py
        features = simclr_trainer.encode(encoder, pixels, imagefolders.ENCODER_CHUNK, device)  # (N, F)
        features = torch.from_numpy(features).to(device)
        cluster, confidence, _, _, scores = imagefolders.group_folder(
            args, files, features, model, baseline_features=features, baseline_name="k-means on SimCLR features",
            load_split=split_features)
        return imagefolders.finish_grouping(args, files, cluster, confidence, scores, lambda k, members, path:
                                            save_tiles([Image.fromarray(images[i]).resize((TILE, TILE))
                                                        for i in members], 0, path))


if __name__ == "__main__":
    main()
