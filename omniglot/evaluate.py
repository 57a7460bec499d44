"""Few-shot predictions of an Omniglot checkpoint (ours or the authors') on episodes given as image folders.

    python omniglot/evaluate.py --checkpoint runs/omniglot-5way/best_1shot.pt --episodes my_episodes

--episodes holds one folder per episode: <episode>/support/<class>/<image> and <episode>/query/<class>/<image>
(any format Pillow reads; the folders are read by metagmvae/imagefolders.py, see docs/own-data.md); an image
file that cannot be decoded (empty, damaged) is refused. Each image is converted like the
training data: opened upright in 8 bits (imagefolders.open_image: EXIF orientation, transparency over white,
16-bit and float images by their scale), grayscale, resized to 28x28 with Lanczos filtering, float in [0, 1]
with the paper at 0 and the ink up to 1: the paper level is the median of all pixels (ink covers the lesser
part of a drawing; a frame or a dark edge does not decide it), the ink what differs from it (darker when the
image's mean is below the paper level, then (paper - x) / paper, else (x - paper) / (1 - paper)), so black
ink on white gives 1 - x and light ink on black x; a blank image (all pixels equal), or an episode whose images
are all one picture, is refused.
Support and queries are encoded as one set and labelled by the semi-supervised EM (model.predict).
Prints each episode's accuracy and their mean with its 95% CI. An episode whose query images lie directly
in query/ (no class folders) is predicted instead: one row (episode, file, predicted class, probability)
per image in <out>/predictions.csv (--out; default <episodes>-predictions beside --episodes, which is only read).
"""
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from metagmvae.startup import quiet_ctrl_c  # noqa: E402  (torch-free: first)
quiet_ctrl_c(__name__)  # a Ctrl-C from here on: one line, exit code 130

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from metagmvae import imagefolders  # noqa: E402
from metagmvae import cpu_memory  # noqa: E402
from metagmvae.runfiles import UserError, exit_on_user_error  # noqa: E402
from omniglot.dataset import load_split  # noqa: E402
from omniglot.model import load_model  # noqa: E402

IMAGE_SIZE = 28
# the most of a converted drawing that ink may cover: real Omniglot drawings at most 0.2; a drawing whose ink
# covers more than half the picture is read inverted, its paper then covering what the ink does not
MAX_INK_COVER = 0.35
IMAGE_SUFFIXES = imagefolders.IMAGE_SUFFIXES  # also read as omniglot.evaluate.IMAGE_SUFFIXES


def load_image(path):
    """An image file -> (28, 28) float32 in [0, 1], paper = 0, ink up to 1 (see the module docstring)."""
    gray = imagefolders.open_image(path, path, "L")
    full = np.asarray(gray, dtype=np.float32) / 255.0  # (H, W)
    small = np.asarray(gray.resize((IMAGE_SIZE, IMAGE_SIZE), Image.LANCZOS), dtype=np.float32) / 255.0
    if np.ptp(small) == 0:
        raise UserError(f"{path}: blank image (all pixels equal at 28x28 grayscale); expected a drawing")
    paper = np.float32(np.median(full))
    if full.mean(dtype=np.float64) < paper:  # dark ink; not blank, so paper > 0
        drawing = np.clip((paper - small) / paper, 0, 1)
    else:  # light ink; not blank, so paper < 1
        drawing = np.clip((small - paper) / (1 - paper), 0, 1)
    if drawing.mean() > MAX_INK_COVER:
        raise UserError(f"{path}: read as a drawing whose ink covers {drawing.mean():.0%} of it (real Omniglot "
                        f"drawings: at most 20%): ink over most of the picture is taken as the paper (the median "
                        "shade) and the drawing read inverted, and strokes this heavy are none the model knows; "
                        "crop or thin it")
    return drawing


def load_episode(folder):
    """An imagefolders.Episode of <folder> with support (Ns, 1, 28, 28) and query (Nq, 1, 28, 28)."""
    return imagefolders.load_episode(folder, lambda path: load_image(path)[None])


def main(argv=None):
    cpu_memory.set_up()
    parser = imagefolders.episodes_parser(__doc__.split("\n")[0], "our .pt checkpoint or the authors' .pth")
    args = parser.parse_args(argv)
    with exit_on_user_error(parser.prog):
        device, out = imagefolders.check_episodes_args(args)
        episodes = [load_episode(folder) for folder in imagefolders.episode_folders(args.episodes)]
        model = load_model(args.checkpoint, device).eval()
        imagefolders.check_episodes_not_trained_on(episodes, args.checkpoint, load_split, f"--episodes {args.episodes}")
        imagefolders.predict_and_report(model, episodes, args.mc_samples, args.em_iters, args.seed, device, out)


if __name__ == "__main__":
    main()
