"""Few-shot episodes given as image folders, as omniglot/evaluate.py and mimgnet/evaluate.py read them, and
their report: accuracy per episode, the mean with its 95% CI, and predictions.csv (docs/own-data.md).

A folder of episodes holds one folder per episode: <episode>/support/<class>/<image> and
<episode>/query/<class>/<image> (the support classes are the episode's classes), or the query images directly
in <episode>/query/ (unlabelled: predicted, not scored). Hidden files (.DS_Store) and files whose suffix is not
an image format Pillow opens (Thumbs.db, notes.txt) are skipped; a class folder without any image is refused.
Each image becomes an array through the caller's load_image(path), which raises UserError on a file it cannot
decode; every image of an episode must give the same shape.
"""
import argparse
import csv
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .cli import check_positive, check_seed
from .distributed import resolve_device
from .evaluation import mean_confidence_interval
from .runfiles import UserError, seed_everything, write_text

IMAGE_SUFFIXES = frozenset(suffix for suffix, image_format in Image.registered_extensions().items()
                           if image_format in Image.OPEN)
PREDICTIONS_COLUMNS = ["episode", "file", "predicted", "probability"]


@dataclass
class Episode:
    """One episode's items: images as load_image gives them, or their features."""
    name: str
    classes: list            # class names (support folder names), label k = classes[k]
    support: torch.Tensor    # (Ns, ...)
    y_support: torch.Tensor  # (Ns,)
    query: torch.Tensor      # (Nq, ...)
    y_query: torch.Tensor    # (Nq,) labels, or None when the queries are unlabelled
    query_files: list        # (Nq,) paths relative to query/


def visible_entries(folder):
    """The entries of `folder` whose name does not start with a dot, in name order."""
    return sorted(p for p in folder.iterdir() if not p.name.startswith("."))


def image_files(folder):
    """The visible files of `folder` whose suffix is an image format (see the module docstring)."""
    return [p for p in visible_entries(folder) if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()]


def class_folders(folder):
    """The visible sub-folders of `folder`, in name order."""
    return [p for p in visible_entries(folder) if p.is_dir()]


def load_images(folder, load_image):
    """(n, ...) tensor of the image files in `folder` (load_image: path -> array), and the files; none is an
    error."""
    files = image_files(folder)
    if not files:
        raise UserError(f"{folder}: no image files (.png, .jpg, ... that Pillow reads)")
    return torch.from_numpy(np.stack([load_image(p) for p in files])), files


def load_episode(folder, load_image):
    """An Episode from <folder>/support/<class>/* and <folder>/query/[<class>/]*, each image through
    load_image(path) -> array."""
    support_dir, query_dir = folder / "support", folder / "query"
    if not support_dir.is_dir():
        raise UserError(f"{folder}: episode without a support/ folder")
    if not query_dir.is_dir():
        raise UserError(f"{folder}: episode without a query/ folder")
    class_dirs = class_folders(support_dir)
    if not class_dirs:
        raise UserError(f"{support_dir}: no class folders")
    classes = [d.name for d in class_dirs]
    support, y_support = [], []
    for k, d in enumerate(class_dirs):
        images, _ = load_images(d, load_image)
        support.append(images)
        y_support += [k] * len(images)
    query_classes = class_folders(query_dir)
    if query_classes and image_files(query_dir):
        raise UserError(f"{query_dir}: holds both class folders and images; use one or the other")
    if query_classes:
        query, y_query, files = [], [], []
        for d in query_classes:
            if d.name not in classes:
                raise UserError(f"{d}: class {d.name!r} is not among the support classes of {folder}")
            images, paths = load_images(d, load_image)
            query.append(images)
            y_query += [classes.index(d.name)] * len(images)
            files += [p.relative_to(query_dir).as_posix() for p in paths]
        query, y_query = torch.cat(query), torch.tensor(y_query)
    else:
        query, paths = load_images(query_dir, load_image)
        y_query, files = None, [p.name for p in paths]
    return Episode(folder.name, classes, torch.cat(support), torch.tensor(y_support), query, y_query, files)


def episode_folders(root):
    """The episode folders of `root`, in name order; none is an error."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"{root}: no such episodes folder")
    folders = class_folders(root)
    if not folders:
        raise UserError(f"{root}: no episode folders")
    return folders


# ---- prediction and report

@torch.inference_mode()
def predict_episode(model, episode, mc_samples, em_iters, device):
    """Class probabilities (Nq, K) of the episode's queries by the semi-supervised EM (model.predict); the
    model must be in evaluation mode."""
    probs = model.predict(episode.support[None].to(device), episode.y_support[None].to(device),
                          episode.query[None].to(device), len(episode.classes), mc_samples, em_iters)
    return probs[0].cpu()


def baseline_accuracy(predictions, episode):
    """Accuracy of a baseline (metagmvae.evaluation: (support, y_support, query, way) -> labels) on one
    labelled episode."""
    predicted = predictions(episode.support[None], episode.y_support[None], episode.query[None],
                            len(episode.classes))[0]
    return float((predicted == episode.y_query).float().mean())


def evaluate(model, episodes, mc_samples, em_iters, device, baselines=None):
    """Print each labelled episode's accuracy (and that of every baseline, {name: predictions function},
    on the same items), then the means +- 95% CI.  Returns the predictions.csv rows of the unlabelled
    episodes."""
    baselines = baselines or {}
    accuracies, baseline_scores, rows = [], {name: [] for name in baselines}, []
    for episode in episodes:
        probs = predict_episode(model, episode, mc_samples, em_iters, device)
        confidence, predicted = probs.max(-1)
        if episode.y_query is None:
            rows += [[episode.name, f, episode.classes[p], f"{c:.6f}"]
                     for f, p, c in zip(episode.query_files, predicted.tolist(), confidence.tolist())]
            continue
        correct = int((predicted == episode.y_query).sum())
        accuracies.append(correct / len(predicted))
        for name, predictions in baselines.items():
            baseline_scores[name].append(baseline_accuracy(predictions, episode))
        print(f"{episode.name}: {100 * accuracies[-1]:.2f} % ({correct}/{len(predicted)} queries, "
              f"{len(episode.classes)}-way)" + "".join(f", {name} {100 * scores[-1]:.2f} %"
                                                      for name, scores in baseline_scores.items()))
    if accuracies:
        for name, scores in {"mean accuracy": accuracies, **baseline_scores}.items():
            mean, ci95 = mean_confidence_interval(scores)
            print(f"{name}: {100 * mean:.2f} +- {100 * ci95:.2f} % over {len(scores)} episodes")
    return rows


def write_predictions(path, rows):
    """predictions.csv: a header (PREDICTIONS_COLUMNS) and the rows, written atomically."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(PREDICTIONS_COLUMNS)
    writer.writerows(rows)
    try:
        write_text(path, buffer.getvalue())
    except OSError as e:
        raise UserError(f"{path}: cannot write ({e.strerror or e})") from None
    print(f"wrote {len(rows)} predictions to {path}")


def predict_and_report(model, episodes, mc_samples, em_iters, seed, device, predictions_path, baselines=None):
    """What both evaluate.py do once the episodes hold the model's items: seed the MC draws, evaluate (see
    evaluate) and write the unlabelled episodes' predictions, if any, to predictions_path."""
    seed_everything(seed)
    rows = evaluate(model, episodes, mc_samples, em_iters, device, baselines)
    if rows:
        write_predictions(predictions_path, rows)


# ---- command line

def episodes_parser(description, checkpoint_help):
    """The flags both evaluate.py take."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, required=True, help=checkpoint_help)
    parser.add_argument("--episodes", type=Path, required=True,
                        help="folder of episode folders, each with support/<class>/ and query/[<class>/]")
    parser.add_argument("--mc-samples", type=int, default=32, help="MC samples S per item")
    parser.add_argument("--em-iters", type=int, default=10, help="iterations of the semi-supervised EM")
    parser.add_argument("--seed", type=int, default=0, help="seeds the MC draws")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="auto = cuda when available")
    parser.add_argument("--predictions", type=Path, default=None,
                        help="CSV for episodes with unlabelled queries (None = <episodes>/predictions.csv)")
    return parser


def check_episodes_args(args, counts=()):
    """Refuse non-positive --mc-samples, --em-iters and other `counts` (attribute names) and a bad --seed;
    returns the torch device of --device."""
    check_positive(args, ["mc_samples", "em_iters", *counts])
    check_seed(args.seed)
    return resolve_device(args.device)
