"""Few-shot predictions of an Omniglot checkpoint (ours or the authors') on episodes given as image folders.

    python omniglot/evaluate.py --checkpoint runs/omniglot-5way/best_1shot.pt --episodes my_episodes

--episodes holds one folder per episode: <episode>/support/<class>/<image> and <episode>/query/<class>/<image>
(any format Pillow reads; the support classes are the episode's classes). Hidden files (.DS_Store) and files
whose suffix is not an image format Pillow opens (Thumbs.db, notes.txt) are skipped; a class folder without
any image, or an image file that cannot be decoded (empty, damaged), is refused. Each image is converted like the
training data: grayscale (transparency over white), inverted when its background is light (mean of the
border pixels > 0.5 on [0, 1]), resized to 28x28 with Lanczos filtering, float in [0, 1] with ink = 1.
Support and queries are encoded as one set and labelled by the semi-supervised EM (model.predict).
Prints each episode's accuracy and their mean with its 95% CI. An episode whose query images lie directly
in query/ (no class folders) is predicted instead: one row (episode, file, predicted class, probability)
per image in predictions.csv.
"""
import argparse
import csv
import io
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from metagmvae.cli import check_positive, check_seed  # noqa: E402
from metagmvae.distributed import resolve_device  # noqa: E402
from metagmvae.evaluation import mean_confidence_interval  # noqa: E402
from metagmvae.runfiles import UserError, exit_on_user_error, seed_everything, write_text  # noqa: E402
from omniglot.trainer import load_model  # noqa: E402

IMAGE_SIZE = 28
IMAGE_SUFFIXES = frozenset(suffix for suffix, image_format in Image.registered_extensions().items()
                           if image_format in Image.OPEN)


@dataclass
class Episode:
    name: str
    classes: list            # class names (support folder names), label k = classes[k]
    support: torch.Tensor    # (Ns, 1, 28, 28)
    y_support: torch.Tensor  # (Ns,)
    query: torch.Tensor      # (Nq, 1, 28, 28)
    y_query: torch.Tensor    # (Nq,) labels, or None when the queries are unlabelled
    query_files: list        # (Nq,) paths relative to query/


def load_image(path):
    """An image file -> (28, 28) float32 in [0, 1], ink = 1 (see the module docstring)."""
    try:
        with Image.open(path) as im:
            if im.mode in ("RGBA", "LA", "PA") or "transparency" in im.info:
                im = Image.alpha_composite(Image.new("RGBA", im.size, "white"), im.convert("RGBA"))
            gray = im.convert("L")
            gray.load()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise UserError(f"{path}: unreadable image ({e})") from None
    full = np.asarray(gray, dtype=np.float32) / 255.0
    border = np.concatenate([full[0], full[-1], full[:, 0], full[:, -1]])
    small = np.asarray(gray.resize((IMAGE_SIZE, IMAGE_SIZE), Image.LANCZOS), dtype=np.float32) / 255.0
    return 1.0 - small if border.mean() > 0.5 else small


def _visible(folder):
    return sorted(p for p in folder.iterdir() if not p.name.startswith("."))


def _image_files(folder):
    """The visible files of `folder` whose suffix is an image format (see the module docstring)."""
    return [p for p in _visible(folder) if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()]


def _images(folder):
    """(n, 1, 28, 28) tensor of the image files in `folder`, and the files; none is an error."""
    files = _image_files(folder)
    if not files:
        raise UserError(f"{folder}: no image files (.png, .jpg, ... that Pillow reads)")
    return torch.from_numpy(np.stack([load_image(p) for p in files]))[:, None], files


def _class_folders(folder):
    return [p for p in _visible(folder) if p.is_dir()]


def load_episode(folder):
    """An Episode from <folder>/support/<class>/* and <folder>/query/[<class>/]*."""
    support_dir, query_dir = folder / "support", folder / "query"
    if not support_dir.is_dir():
        raise UserError(f"{folder}: episode without a support/ folder")
    if not query_dir.is_dir():
        raise UserError(f"{folder}: episode without a query/ folder")
    class_dirs = _class_folders(support_dir)
    if not class_dirs:
        raise UserError(f"{support_dir}: no class folders")
    classes = [d.name for d in class_dirs]
    support, y_support = [], []
    for k, d in enumerate(class_dirs):
        images, _ = _images(d)
        support.append(images)
        y_support += [k] * len(images)
    query_classes = _class_folders(query_dir)
    if query_classes and _image_files(query_dir):
        raise UserError(f"{query_dir}: holds both class folders and images; use one or the other")
    if query_classes:
        query, y_query, files = [], [], []
        for d in query_classes:
            if d.name not in classes:
                raise UserError(f"{d}: class {d.name!r} is not among the support classes of {folder}")
            images, paths = _images(d)
            query.append(images)
            y_query += [classes.index(d.name)] * len(images)
            files += [p.relative_to(query_dir).as_posix() for p in paths]
        query, y_query = torch.cat(query), torch.tensor(y_query)
    else:
        query, paths = _images(query_dir)
        y_query, files = None, [p.name for p in paths]
    return Episode(folder.name, classes, torch.cat(support), torch.tensor(y_support), query, y_query, files)


def load_episodes(root):
    """Every episode folder of `root`, in name order."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"{root}: no such episodes folder")
    folders = _class_folders(root)
    if not folders:
        raise UserError(f"{root}: no episode folders")
    return [load_episode(f) for f in folders]


def predict_episode(model, episode, mc_samples, em_iters, device):
    """Class probabilities (Nq, K) of the episode's queries; the model must be in evaluation mode."""
    probs = model.predict(episode.support[None].to(device), episode.y_support[None].to(device),
                          episode.query[None].to(device), len(episode.classes), mc_samples, em_iters)
    return probs[0].cpu()


def write_predictions(path, rows):
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["episode", "file", "predicted", "probability"])
    writer.writerows(rows)
    write_text(path, buffer.getvalue())


def evaluate(model, episodes, args, device):
    """Print per-episode accuracies and their mean +- 95% CI; returns (accuracies, prediction rows)."""
    accuracies, rows = [], []
    for episode in episodes:
        probs = predict_episode(model, episode, args.mc_samples, args.em_iters, device)
        confidence, predicted = probs.max(-1)
        if episode.y_query is None:
            rows += [[episode.name, f, episode.classes[p], f"{c:.6f}"]
                     for f, p, c in zip(episode.query_files, predicted.tolist(), confidence.tolist())]
            continue
        correct = int((predicted == episode.y_query).sum())
        accuracies.append(correct / len(predicted))
        print(f"{episode.name}: {100 * accuracies[-1]:.2f} % ({correct}/{len(predicted)} queries, "
              f"{len(episode.classes)}-way)")
    if accuracies:
        mean, ci95 = mean_confidence_interval(accuracies)
        print(f"mean accuracy: {100 * mean:.2f} +- {100 * ci95:.2f} % over {len(accuracies)} episodes")
    return accuracies, rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, required=True, help="our .pt checkpoint or the authors' .pth")
    parser.add_argument("--episodes", type=Path, required=True,
                        help="folder of episode folders, each with support/<class>/ and query/[<class>/]")
    parser.add_argument("--mc-samples", type=int, default=32, help="MC samples S per item")
    parser.add_argument("--em-iters", type=int, default=10, help="iterations of the semi-supervised EM")
    parser.add_argument("--seed", type=int, default=0, help="seeds the MC draws")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="auto = cuda when available")
    parser.add_argument("--predictions", type=Path, default=None,
                        help="CSV for episodes with unlabelled queries (None = <episodes>/predictions.csv)")
    args = parser.parse_args(argv)
    with exit_on_user_error(parser.prog):
        check_positive(args, ["mc_samples", "em_iters"])
        check_seed(args.seed)
        device = resolve_device(args.device)
        episodes = load_episodes(args.episodes)
        model = load_model(args.checkpoint, device).eval()
        seed_everything(args.seed)
        _, rows = evaluate(model, episodes, args, device)
        if rows:
            path = args.predictions or args.episodes / "predictions.csv"
            try:
                write_predictions(path, rows)
            except OSError as e:
                raise UserError(f"{path}: cannot write ({e.strerror or e})") from None
            print(f"wrote {len(rows)} predictions to {path}")


if __name__ == "__main__":
    main()
