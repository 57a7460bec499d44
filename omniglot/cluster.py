"""Group an unlabeled folder of handwritten characters into K clusters with an Omniglot checkpoint.

    python omniglot/cluster.py --checkpoint runs/omniglot-5way/last.pt --images my_drawings --clusters 5

Every image under --images (any nesting; hidden files and non-image files skipped, as omniglot/evaluate.py
does) is converted like the training data (omniglot/evaluate.py load_image) and the model encodes all of
them as ONE set, as in training: the conv encoder runs on ENCODER_CHUNK images at a time, the set-level
posterior on the whole set.  The training prior's EM fits K components to the MC latent samples of the
set from --restarts random starts; the start of highest likelihood is kept.  Each image goes to the
cluster of largest responsibility averaged over its MC samples; that average is its confidence.
Writes <out>/clusters.csv (file, cluster, confidence) and <out>/cluster_<k>.png (the decoded component
mean framed in blue, then the members).  When every image sits in a class folder below --images (at
least two classes), prints the adjusted Rand index and the normalised mutual information of the clusters
against the folders, beside k-means on the raw pixels (k-means++ starts, same K and restarts).
"""
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from metagmvae.startup import quiet_ctrl_c  # noqa: E402  (torch-free: first)
quiet_ctrl_c(__name__)  # a Ctrl-C from here on: one line, exit code 130

import numpy as np  # noqa: E402
import torch  # noqa: E402

from metagmvae import imagefolders  # noqa: E402
from metagmvae import cpu_memory  # noqa: E402
from metagmvae.runfiles import check_finite_result, exit_on_user_error  # noqa: E402
from omniglot.dataset import load_split  # noqa: E402
from omniglot.evaluate import load_image  # noqa: E402
from omniglot.figures import image_tile, save_tiles  # noqa: E402
from omniglot.model import load_model  # noqa: E402


def main(argv=None):
    """Returns {"cluster": (N,), "confidence": (N,), "scores": {name: {"ari", "nmi"}} or None}."""
    cpu_memory.set_up()
    parser = imagefolders.grouping_parser(__doc__)
    parser.add_argument("--checkpoint", type=Path, required=True,
                        help="our Omniglot .pt checkpoint or the authors' .pth")
    args = parser.parse_args(argv)
    with exit_on_user_error(parser.prog):
        device, files = imagefolders.start_grouping(args)
        model = load_model(args.checkpoint, device).eval()
        images = torch.from_numpy(np.stack([load_image(f) for f in files]))[:, None].to(device)  # (N, 1, 28, 28)
        cluster, confidence, _, mu, scores = imagefolders.group_folder(
            args, files, images, model, baseline_features=images.flatten(1), baseline_name="k-means on pixels",
            load_split=load_split)
        with torch.no_grad():
            component_means = torch.sigmoid(model.decode(mu)).cpu()  # (K, 1, 28, 28)
        check_finite_result(component_means, "decoded cluster means")
        images = images.cpu()
        return imagefolders.finish_grouping(args, files, cluster, confidence, scores, lambda k, members, path:
                                            save_tiles([image_tile(component_means[k])]
                                                       + [image_tile(images[i]) for i in members], 1, path))


if __name__ == "__main__":
    main()
