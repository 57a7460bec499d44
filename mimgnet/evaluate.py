"""Few-shot predictions of a Mini-ImageNet feature model (ours or the authors') on natural images given as folders.

    python mimgnet/evaluate.py --encoder runs/simclr/last.pt --checkpoint runs/mimgnet-1shot/best_1shot.pt \
        --episodes my_episodes

--episodes holds one folder per episode: <episode>/support/<class>/<image> and <episode>/query/<class>/<image>
(any format Pillow reads; the folders are read by metagmvae/imagefolders.py, see docs/own-data.md); an image
file that cannot be decoded (empty, damaged) is refused. Each image is converted as the feature export converts
Mini-ImageNet: RGB, resized to 84x84 (Pillow bilinear, aspect ratio not kept), uint8
(data/prepare_mimgnet.py), then the --encoder's SimCLR features in eval mode with the export's normalisation
(simclr/trainer.py encode). Support and queries are labelled by the semi-supervised EM of the feature model
(model.predict). Prints each episode's accuracy beside two baselines on the same features (nearest class
mean, softmax regression), and the means with their 95% CI. An episode whose query images lie directly in
query/ (no class folders) is predicted instead: one row (episode, file, predicted class, probability) per
image in <out>/predictions.csv (--out; default <episodes>-predictions beside --episodes, which is only read).
"""
import sys
from dataclasses import replace
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from metagmvae.startup import quiet_ctrl_c  # noqa: E402  (torch-free: first)
quiet_ctrl_c(__name__)  # a Ctrl-C from here on: one line, exit code 130

import torch  # noqa: E402

from data.prepare_mimgnet import load_image  # noqa: E402
from metagmvae import imagefolders  # noqa: E402
from metagmvae import cpu_memory  # noqa: E402
from metagmvae.evaluation import logistic_regression_predictions, nearest_class_mean_predictions  # noqa: E402
from metagmvae.runfiles import exit_on_user_error  # noqa: E402
from mimgnet.dataset import split_features  # noqa: E402
from mimgnet.model import check_feature_size, check_same_encoder, load_model  # noqa: E402
from simclr import trainer as simclr_trainer  # noqa: E402
from simclr.model import encoder_sha256  # noqa: E402

BASELINES = {"feature nearest class mean": nearest_class_mean_predictions,
             "feature softmax regression": logistic_regression_predictions}


def check_encoder_matches(encoder, model, encoder_path, checkpoint_path):
    """Refuse a feature model whose input size is not the encoder's feature size, or that was trained on the
    features of another encoder (mimgnet.model.check_same_encoder)."""
    remedy = "pass the SimCLR checkpoint whose features the model was trained on"
    check_feature_size(model, encoder.encoder.feature_size, checkpoint_path, source=f"--encoder {encoder_path}",
                       remedy=remedy)
    check_same_encoder(checkpoint_path, encoder_sha256(encoder), f"--encoder {encoder_path}", remedy)


def load_episode(folder, encoder, batch_size, device):
    """An imagefolders.Episode of <folder> whose support (Ns, F) and query (Nq, F) are the encoder's features
    of its images."""
    episode = imagefolders.load_episode(folder, load_image)  # images (N, 84, 84, 3) uint8
    images = torch.cat([episode.support, episode.query]).permute(0, 3, 1, 2)  # (Ns + Nq, 3, 84, 84)
    features = torch.from_numpy(simclr_trainer.encode(encoder, images, batch_size, device))
    return replace(episode, support=features[:len(episode.support)], query=features[len(episode.support):])


def main(argv=None):
    cpu_memory.set_up()
    parser = imagefolders.episodes_parser(__doc__.split("\n")[0],
                                          "Mini-ImageNet feature model: our .pt checkpoint or the authors' .pth")
    parser.add_argument("--encoder", type=Path, required=True,
                        help="SimCLR checkpoint (simclr/main.py's last.pt) whose features the model was trained on")
    parser.add_argument("--batch-size", type=int, default=256, help="images per encoder pass")
    args = parser.parse_args(argv)
    with exit_on_user_error(parser.prog):
        device, out = imagefolders.check_episodes_args(args, ["batch_size"])
        encoder = simclr_trainer.load_model(args.encoder, device)
        model = load_model(args.checkpoint, device).eval()
        check_encoder_matches(encoder, model, args.encoder, args.checkpoint)
        episodes = [load_episode(folder, encoder, args.batch_size, device)
                    for folder in imagefolders.episode_folders(args.episodes)]
        imagefolders.check_episodes_not_trained_on(episodes, args.checkpoint, split_features,
                                                   f"--episodes {args.episodes}")
        imagefolders.predict_and_report(model, episodes, args.mc_samples, args.em_iters, args.seed, device,
                                        out, BASELINES)


if __name__ == "__main__":
    main()
