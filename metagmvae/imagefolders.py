"""Your own images: few-shot episodes given as image folders, as omniglot/evaluate.py and mimgnet/evaluate.py
read them, and their report (accuracy per episode, the mean with its 95% CI, predictions.csv;
docs/own-data.md); and an unlabeled folder grouped into K clusters, as omniglot/cluster.py and
mimgnet/cluster.py do it (clusters.csv, a PNG per cluster, scores against class folders;
docs/clustering.md).

A folder of episodes holds one folder per episode: <episode>/support/<class>/<image> and
<episode>/query/<class>/<image> (the support classes are the episode's classes), or the query images directly
in <episode>/query/ (unlabelled: predicted, not scored). Hidden files (.DS_Store) and files whose suffix is not
an image format Pillow opens (Thumbs.db, notes.txt) are skipped; a class folder without any image is refused, and
so is a file named as an image, or an entry beside class or episode folders, that is a broken symbolic link, a link
loop, a FIFO or a device, and a folder or an image outside the layout (a folder inside a class folder, an image
beside class or episode folders, an episode folder other than support/ and query/).
Each image becomes an array through the caller's load_image(path), which raises UserError on a file it cannot
decode; every image of an episode must give the same shape. Two support classes holding the same picture (as
load_image gives it, or near-copies of it: copies.py) are refused, and so are labelled episodes of different
ways in one folder (their mean would mix chance levels), and two labelled episodes, or two unlabelled ones, that
hold the same pictures, or copies of them, in support and in query whatever their file and class-folder names
(one episode twice: the 95% CI counts episodes as independent). Every command opens its image files with open_image:
upright, 8 bits per channel.
"""
import argparse
import csv
import errno
import io
import os
import unicodedata
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from .cli import FLOAT_BYTES, MIN_WAY, HelpFormatter, check_positive, check_seed
from .clustering import adjusted_rand_index, cluster_set, kmeans, normalized_mutual_info, restart_streams
from .copies import COPIES, drawing_size, near_copies
from .distributed import resolve_device
from .episodes import GROUPING_EM, GROUPING_KMEANS, GROUPING_NOISE, STREAM_BYTES, EpisodeRandom
from .evaluation import MIN_EPISODES, mean_confidence_interval
from .folders import OutputFolder, check_outside_inputs
from .runfiles import UserError, check_finite_result, check_fits_in_memory, check_regular_file, seed_everything
from .training import trained_splits

IMAGE_SUFFIXES = frozenset(suffix for suffix, image_format in Image.registered_extensions().items()
                           if image_format in Image.OPEN)
PREDICTIONS_COLUMNS = ["episode", "file", "predicted", "probability"]
PREDICTIONS, CLUSTERS = "predictions.csv", "clusters.csv"
PREDICTIONS_KIND, CLUSTERS_KIND = "predictions", "clusters"  # kinds of output folder, in their records
# The set posterior attends over all N images at once: 4 heads x N^2 attention scores, and the EM holds
# restarts x N x S latent samples.  At 5000 images, S = 32, D = 64, 10 restarts that is about 0.4 GB each.
MAX_IMAGES = 5000
ENCODER_CHUNK = 256  # images per pass of the per-item encoder
# Pillow modes of 8 bits a channel that convert to L and RGB as a viewer shows them; others (CMYK, YCbCr, LAB,
# HSV) are read through RGB
EIGHT_BIT_MODES = ("1", "L", "P", "RGB", "RGBA", "LA", "PA", "La", "RGBa")
MIN_IMAGE_SIDE = 8  # pixels: a smaller side is a strip or a dot, not a picture


def open_image(source, origin, mode):
    """The image of `source` (a path or a binary file; `origin` names it in errors) as a loaded Pillow image
    of `mode` ("L" or "RGB"), upright (its EXIF orientation applied; Pillow's warning about images of many
    pixels silenced, its error on images over its pixel limit refused).  A transparent image is laid on white
    paper, as a viewer shows it; modes Pillow converts only to RGB (LAB) go through RGB.  16-bit and other
    integer images (mode I;16, I) are divided by 257, float images (mode F) with values in [0, 1] multiplied
    by 255 and in [0, 255] kept; other values of those modes, integer images whose values all lie in [0, 255]
    (8-bit values in a 16-bit file, nearly black as 16 bits), files of several frames (an animation, a
    multi-page TIFF) and images under MIN_IMAGE_SIDE pixels a side raise UserError, as a file that Pillow
    cannot decode does (whatever Pillow raises: a damaged EXIF block or header raises struct.error or
    TypeError)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(source) as im:
                frames = getattr(im, "n_frames", 1)
                im = ImageOps.exif_transpose(im)  # a loaded copy
            if im.mode not in EIGHT_BIT_MODES and im.mode != "F" and not im.mode.startswith("I"):
                im = im.convert("RGB")
    except FileNotFoundError:
        raise UserError(f"{origin}: image not found") from None
    except Exception as e:  # a damaged file can make Pillow raise anything (struct.error, TypeError, ...)
        raise UserError(f"{origin}: unreadable image ({type(e).__name__}: {e})") from None
    if frames > 1:
        raise UserError(f"{origin}: {frames} frames (an animation or a multi-page file); expected one picture")
    if min(im.size) < MIN_IMAGE_SIDE:
        raise UserError(f"{origin}: {im.size[0]}x{im.size[1]} pixels; a picture needs at least {MIN_IMAGE_SIDE} "
                        "pixels a side (scaled to the model's size, this would be a few stretched pixels)")
    if im.mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in im.info:
        return Image.alpha_composite(Image.new("RGBA", im.size, "white"), im.convert("RGBA")).convert(mode)
    if im.mode != "F" and not im.mode.startswith("I"):
        return im.convert(mode)
    values = np.asarray(im, dtype=np.float64)  # (H, W)
    if not np.isfinite(values).all():
        raise UserError(f"{origin}: float image holding NaN or Inf")
    low, high = values.min(), values.max()
    if im.mode != "F":
        if low < 0 or high > 65535:
            raise UserError(f"{origin}: integer image (mode {im.mode}) with values in [{low:.0f}, {high:.0f}]; "
                            "expected 16 bits, [0, 65535]")
        if high <= 255:
            raise UserError(f"{origin}: {im.mode} image with values in [{low:.0f}, {high:.0f}]: 8-bit values in a "
                            "16-bit file? As 16 bits it is nearly black; save it with 8 bits")
        scale = 1 / 257
    elif low >= 0 and high <= 1:
        scale = 255
    elif low >= 0 and high <= 255:
        scale = 1
    else:
        raise UserError(f"{origin}: float image with values in [{low:.3g}, {high:.3g}]; expected [0, 1] or "
                        "[0, 255]")
    return Image.fromarray(np.rint(values * scale).astype(np.uint8)).convert(mode)


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
    pictures: torch.Tensor = None  # (Ns + Nq, ...) what tells it from other episodes: episode_pictures


def shown(path):
    """`path` as text that prints and writes as UTF-8: the bytes of a name that are not UTF-8 escaped (\\xff)."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def is_utf8(name):
    """Whether the file name `name` (str, as os.listdir gives it) is valid UTF-8."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:  # undecodable bytes, kept by Python as lone surrogates
        return False
    return True


def visible_entries(folder):
    """The entries of `folder` whose name does not start with a dot, in name order: every image folder is
    listed here.  A folder that cannot be listed raises UserError naming it, and so does a folder or a file
    named as an image whose name is not UTF-8 (it could be neither printed nor written to a CSV file)."""
    try:
        entries = sorted(p for p in folder.iterdir() if not p.name.startswith("."))
    except OSError as e:
        raise UserError(f"{shown(folder)}: cannot list this folder ({e.strerror or e})") from None
    for entry in entries:
        if not is_utf8(entry.name) and (is_named_as_image(entry) or entry.is_dir()):
            raise UserError(f"{shown(entry)}: a name that is not UTF-8 (\\xNN marks each byte that is not), "
                            "which could be neither printed nor written to a CSV file; rename it")
    return entries


def is_image_file(path):
    """Whether `path`, named as an image, is a file to read: True for a regular file, False for a folder; a
    broken symbolic link, a link loop, a FIFO, a device or a socket raises UserError naming it, as an image
    that cannot be decoded does."""
    check_regular_file(path)
    return path.is_file()


def is_named_as_image(path):
    """Whether the suffix of `path` is an image format Pillow opens."""
    return path.suffix.lower() in IMAGE_SUFFIXES


def image_files(folder):
    """The visible files of `folder` whose suffix is an image format (see the module docstring); a folder
    inside it is outside the layout and raises UserError naming it."""
    entries = visible_entries(folder)
    for entry in entries:
        check_regular_file(entry)
        if entry.is_dir():
            raise UserError(f"{entry}: a folder inside a class folder; the layout is <episode>/support/<class>/"
                            "<image> and <episode>/query/[<class>/]<image> (docs/own-data.md)")
    return [p for p in entries if is_named_as_image(p) and is_image_file(p)]


def subfolders(folder):
    """The visible sub-folders of `folder`, in name order, and its visible image files; a broken symbolic link,
    a link loop (a class or an episode that would vanish), a FIFO or a device among its entries raises
    UserError naming it."""
    entries = visible_entries(folder)
    for entry in entries:
        check_regular_file(entry)
    return [p for p in entries if p.is_dir()], [p for p in entries if is_named_as_image(p) and p.is_file()]


def class_folders(folder):
    """The visible sub-folders of `folder` (see subfolders); an image file beside them is outside the layout
    and raises UserError naming it."""
    folders, images = subfolders(folder)
    if images:
        raise UserError(f"{images[0]}: an image beside the class or episode folders; the layout is <episode>/"
                        "support/<class>/<image> and <episode>/query/[<class>/]<image> (docs/own-data.md)")
    return folders


def load_images(folder, load_image):
    """(n, ...) tensor of the image files in `folder` (load_image: path -> array), and the files; none is an
    error."""
    files = image_files(folder)
    if not files:
        raise UserError(f"{folder}: no image files (.png, .jpg, ... that Pillow reads)")
    return torch.from_numpy(np.stack([load_image(p) for p in files])), files


def check_distinct(items, where):
    """Refuse items (N, ...) that are all one picture as the model reads them: nothing tells them apart, so
    every prediction or cluster would be meaningless."""
    if len(items) > 1 and (items == items[:1]).all():
        raise UserError(f"{where}: all {len(items)} images are the same picture as the model reads them; nothing "
                        "tells them apart")


def near_copies_of(items):
    """copies.near_copies of items (N, ...), a CPU tensor, as the model reads them: (ids (N,), pairs (k, 2))."""
    rows = np.ascontiguousarray(items.reshape(len(items), -1).numpy(), dtype=np.float32)
    return near_copies(rows, drawing_size(items.shape[1:]))


def check_pictures_differ(folder, class_dirs, support, support_files, query, query_files, labelled):
    """Refuse an episode whose support classes (class_dirs; support: one (n, ...) tensor per class, their
    files support_files) share a picture as the model reads it, or copies of one (copies.near_copies: noise
    added, re-encoded, a drawing moved or resized): the same picture under two labels; or with a query (query (Nq, ...),
    its files query_files) that is a support picture or a copy of one (its prediction would be read off its
    copy); or, when the queries are labelled, with two queries that are one picture (under two labels one
    of them is wrong whatever the prediction; under one it is scored twice)."""
    ids, near = near_copies_of(torch.cat([*support, query]))
    owners = [(class_dir, file) for class_dir, files in zip(class_dirs, support_files) for file in files]
    support_ids = ids[:len(owners)]
    near_codes = np.concatenate([near[:, 0] * len(ids) + near[:, 1], near[:, 1] * len(ids) + near[:, 0]])
    copied = (ids[:, None] == support_ids) | np.isin(ids[:, None] * len(ids) + support_ids, near_codes)  # (N, S)
    classes = np.repeat(np.arange(len(support)), [len(images) for images in support])
    shared = np.argwhere(np.tril(copied[:len(owners)] & (classes[:, None] != classes[None]), -1))
    if len(shared):
        (class_dir, file), (other_dir, other_file) = owners[shared[0, 0]], owners[shared[0, 1]]
        raise UserError(f"{folder}: support classes {other_dir.name!r} and {class_dir.name!r} hold the same "
                        f"picture as the model reads it ({other_file.name} and {file.name}: {COPIES}); one "
                        "picture cannot belong to two classes")
    query_copies = np.argwhere(copied[len(owners):])
    if len(query_copies):
        query_index, original = query_copies[0]
        raise UserError(f"{folder}: query {query_files[query_index]} is the support picture "
                        f"{owners[original][1].relative_to(folder)} as the model reads it ({COPIES}); a query must "
                        "not be a copy of a support image")
    repeated = copy_pairs(ids[len(owners):], near) if labelled else []
    if len(repeated):
        first, second = repeated[0]
        raise UserError(f"{folder}: queries {query_files[first]} and {query_files[second]} are one picture as the "
                        f"model reads it ({COPIES}); each labelled query must be a picture of its own (under two "
                        "labels one is wrong whatever the prediction, under one it is scored twice)")


def episode_pictures(support, query):
    """support (Ns, ...), query (Nq, ...) items as the model reads them -> the (Ns + Nq, ...) CPU tensor by
    which episodes are compared (check_episodes_differ): drawings as they are, photos (N, H, W, 3) as their
    4x4-pixel block means (a sixteenth of the values: a photo saved again stays near itself, as in the
    split checks of simclr/data.py)."""
    items = torch.cat([support, query])
    if drawing_size(items.shape[1:]) is not None:
        return items
    return torch.nn.functional.avg_pool2d(items.permute(0, 3, 1, 2).float(), 4).permute(0, 2, 3, 1)


def copy_groups(items):
    """(N,) int64: for each of items (N, ...), a CPU tensor, the index of the first item it is a copy of
    (copies.near_copies), directly or through copies of copies; its own index if none."""
    pairs = copy_pairs(*near_copies_of(items))
    names = np.arange(len(items))
    while True:
        joined = names.copy()
        np.minimum.at(joined, pairs[:, 1], joined[pairs[:, 0]])
        np.minimum.at(joined, pairs[:, 0], joined[pairs[:, 1]])
        if np.array_equal(joined, names):
            return names
        names = joined


def check_items_not_trained_on(items, checkpoint, load_split, where):
    """Refuse items (N, ...), a CPU tensor of what the model reads (drawings, features) from `where` ("--images
    x"), more than half of which are copies of items of the splits `checkpoint` trained on or was selected on
    (training.trained_splits; load_split: (folder, split) -> (C, I, ...) as training read it): a score on
    them would measure memory, not few-shot learning."""
    seen = trained_splits(checkpoint, load_split)
    if not seen:
        return
    names = copy_groups(torch.cat([items, *(split.flatten(0, 1) for split in seen.values())]))
    known = np.zeros(len(names), bool)
    np.logical_or.at(known, names, np.arange(len(names)) >= len(items))  # groups holding a trained item
    copied = int(known[names[:len(items)]].sum())
    if 2 * copied > len(items):
        raise UserError(f"{where}: {copied} of its {len(items)} images are, as the model reads them, items of "
                        f"{' or '.join(seen)}, or copies of them ({COPIES}): a score on them would measure memory, "
                        "not few-shot learning")


def check_episodes_not_trained_on(episodes, checkpoint, load_split, where):
    """check_items_not_trained_on of the items of all `episodes`."""
    check_items_not_trained_on(torch.cat([torch.cat([episode.support, episode.query]) for episode in episodes]),
                         checkpoint, load_split, where)


def check_episodes_differ(episodes):
    """Refuse two labelled episodes, or two unlabelled ones, of which one holds only pictures of the other, or
    copies of them (copies.near_copies: equal, saved again, noise added, drawings moved or with lighter ink):
    its support among the other's support and its queries among the other's queries, whatever the names of
    their files and class folders (a copied episode folder, or one with a few images left out).  The 95% CI of
    the mean counts the episodes as independent, so such a repeat would narrow it; an unlabelled episode
    repeated would be predicted twice as two.  A labelled and an unlabelled episode of the same pictures may
    stand side by side (the one is scored, the other predicted), and so may episodes that share some pictures.
    The pictures of all episodes are compared at once (episode_pictures); each is then named by the first
    picture it is a copy of, directly or through copies of copies (copy_groups)."""
    names, start, parts = copy_groups(torch.cat([episode.pictures for episode in episodes])), 0, []
    for episode in episodes:  # (support names, query names) of each episode, sorted
        own = names[start:start + len(episode.pictures)]
        start += len(episode.pictures)
        parts.append((np.unique(own[:len(episode.y_support)]), np.unique(own[len(episode.y_support):])))
    holders = {}  # (labelled, support name) -> the episodes holding it
    for index, (episode, (support, _)) in enumerate(zip(episodes, parts)):
        for name in support:
            holders.setdefault((episode.y_query is not None, name), []).append(index)
    for index, (episode, (support, query)) in enumerate(zip(episodes, parts)):
        for other in holders[episode.y_query is not None, support[0]]:
            held = np.isin(support, parts[other][0]).all() and np.isin(query, parts[other][1]).all()
            if other == index or not held:
                continue
            same = len(support) == len(parts[other][0]) and len(query) == len(parts[other][1])
            first, second = (episodes[min(index, other)], episodes[max(index, other)]) if same else (episode,
                                                                                                      episodes[other])
            why = ("the mean accuracy's 95% CI counts episodes as independent, so a repeat would narrow it"
                   if episode.y_query is not None else "its predictions would be listed twice, as two episodes")
            what = (f"episodes {first.name!r} and {second.name!r} are one episode: the same pictures" if same else
                    f"every picture of episode {first.name!r} is one of episode {second.name!r}")
            raise UserError(f"--episodes: {what} in support and in query as the model reads them, or copies of them "
                            f"({COPIES}; whatever the file and class-folder names); {why}: keep one of them")


def copy_pairs(ids, near):
    """Pairs (k, 2) of indices i < j of items (ids (N,) from near_copies, near its pairs of ids, which may name
    ids of other items) that are one picture or near-copies, first pair first; O(N): items of one id pair up
    where they sit side by side in id order, near-copy ids through the first item holding each, so every
    group of copies yields a pair, not every pair of it."""
    order = np.argsort(ids, kind="stable")
    equal = np.stack([order[:-1], order[1:]], 1)[ids[order[:-1]] == ids[order[1:]]]
    held, holder = np.unique(ids, return_index=True)
    near = near[np.isin(near, held).all(1)]
    pairs = np.sort(np.concatenate([equal, holder[np.searchsorted(held, near)]]), 1)
    return pairs[np.lexsort(pairs.T[::-1])]


def load_episode(folder, load_image):
    """An Episode from <folder>/support/<class>/* and <folder>/query/[<class>/]*, each image through
    load_image(path) -> array."""
    support_dir, query_dir = folder / "support", folder / "query"
    for part in (support_dir, query_dir):
        if not part.is_dir():
            other = [d.name for d in class_folders(folder) if d.name.lower() == part.name]
            raise UserError(f"{folder}: episode without a {part.name}/ folder"
                            + (f" ({other[0]}/ is there: the names are lowercase)" if other else ""))
    for entry in class_folders(folder):
        if entry not in (support_dir, query_dir):
            raise UserError(f"{entry}: a folder beside support/ and query/; the layout is <episode>/support/<class>/"
                            "<image> and <episode>/query/[<class>/]<image> (docs/own-data.md)")
    class_dirs = class_folders(support_dir)
    if not class_dirs:
        raise UserError(f"{support_dir}: no class folders")
    if len(class_dirs) < MIN_WAY:
        raise UserError(f"{support_dir}: {len(class_dirs)} class folder ({class_dirs[0].name}); an episode needs at "
                        f"least {MIN_WAY} classes (with one, every prediction is right)")
    classes = [d.name for d in class_dirs]
    support, support_files, y_support = [], [], []
    for k, d in enumerate(class_dirs):
        images, files = load_images(d, load_image)
        support.append(images)
        support_files.append(files)
        y_support += [k] * len(images)
    query_classes, query_images = subfolders(query_dir)
    if query_classes and query_images:
        raise UserError(f"{query_dir}: holds both class folders and images; use one or the other")
    if query_classes:
        query, y_query, files = [], [], []
        for d in query_classes:
            if d.name not in classes:
                alike = [c for c in classes if unicodedata.normalize("NFC", c) == unicodedata.normalize("NFC", d.name)]
                raise UserError(f"{d}: class {d.name!r} is not among the support classes of {folder}" + (
                    f" (support/{alike[0]} looks the same but is written with other Unicode code points, NFC "
                    "against NFD: rename one of the two)" if alike else ""))
            images, paths = load_images(d, load_image)
            query.append(images)
            y_query += [classes.index(d.name)] * len(images)
            files += [p.relative_to(query_dir).as_posix() for p in paths]
        query, y_query = torch.cat(query), torch.tensor(y_query)
    else:
        query, paths = load_images(query_dir, load_image)
        y_query, files = None, [p.name for p in paths]
    check_pictures_differ(folder, class_dirs, support, support_files, query=query, query_files=files,
                          labelled=y_query is not None)
    support = torch.cat(support)
    check_distinct(torch.cat([support, query]), folder)
    return Episode(folder.name, classes, support, torch.tensor(y_support), query, y_query, files,
                   episode_pictures(support, query))


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
    check_finite_result(probs, "class probabilities")
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
    if len(accuracies) >= MIN_EPISODES:
        for name, scores in {"mean accuracy": accuracies, **baseline_scores}.items():
            mean, ci95 = mean_confidence_interval(scores)
            print(f"{name}: {100 * mean:.2f} +- {100 * ci95:.2f} % over {len(scores)} episodes")
    elif accuracies:
        print(f"one labelled episode: no mean +- 95% confidence interval (it needs at least {MIN_EPISODES} episodes)")
    return rows


def remove_earlier_result(folder, written):
    """Delete from the opened output folder every file of an earlier result that its record lists with its
    present content, but those of this result (`written`, names), so that the folder holds one result (a
    file of the user's, or one changed since it was written, stays); returns the names deleted."""
    return [name for name in sorted(set(folder.record["files"]) - set(written)) if folder.remove(name)]


def write_csv(folder, name, columns, rows):
    """CSV file `name` of an opened OutputFolder: a header (columns) and rows."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(columns)
    writer.writerows(rows)
    folder.write_text(name, buffer.getvalue())


def check_samples_fit(num_items, mc_samples, latent_size, flag):
    """Refuse `flag` (the MC sample count mc_samples) when the latent samples of num_items items encoded as
    one set (num_items x mc_samples x latent_size float32) alone exceed this machine's memory."""
    check_fits_in_memory(FLOAT_BYTES * num_items * mc_samples * latent_size,
                         f"{flag} {mc_samples}: the latent samples of {num_items} images ({num_items} x {mc_samples} "
                         f"samples x {latent_size} floats)")


def check_one_way(episodes):
    """Refuse labelled episodes of different ways: their mean accuracy would mix chance levels (1/2, 1/5)."""
    names_of_way = {}  # way -> the names of its labelled episodes
    for episode in episodes:
        if episode.y_query is not None:
            names_of_way.setdefault(len(episode.classes), []).append(episode.name)
    if len(names_of_way) > 1:
        found = ", ".join(f"{len(names)} {way}-way ({', '.join(names[:3])}{', ...' if len(names) > 3 else ''})"
                          for way, names in sorted(names_of_way.items()))
        raise UserError(f"--episodes: labelled episodes of different ways: {found}; their mean accuracy would mix "
                        "chance levels: evaluate the episodes of each way as their own --episodes folder")


def predict_and_report(model, episodes, mc_samples, em_iters, seed, device, out, baselines=None):
    """What both evaluate.py do once the episodes hold the model's items: refuse labelled episodes of different
    ways and episodes that are one episode (check_episodes_differ), check that the MC samples of the largest
    episode fit in memory, seed the MC draws, evaluate (see evaluate) and write the unlabelled episodes'
    predictions, if any, to <out>/predictions.csv (None: see check_episodes_args)."""
    if out is None and any(episode.y_query is None for episode in episodes):
        raise UserError("--out not given, and its default, a folder beside --episodes named after it with "
                        "-predictions, has a name too long for the file system: give --out for the predictions of "
                        "the unlabelled queries")
    check_one_way(episodes)
    check_episodes_differ(episodes)
    check_samples_fit(max(len(e.support) + len(e.query) for e in episodes), mc_samples, model.config["latent_size"],
                      "--mc-samples")
    seed_everything(seed)
    rows = evaluate(model, episodes, mc_samples, em_iters, device, baselines)
    if rows:
        with OutputFolder(out, PREDICTIONS_KIND, "--out") as folder:
            write_csv(folder, PREDICTIONS, PREDICTIONS_COLUMNS, rows)
        print(f"wrote {len(rows)} predictions to {out / PREDICTIONS}")
    elif out is not None and out.is_dir():  # no unlabelled queries: an earlier predictions.csv is not theirs
        with OutputFolder(out, PREDICTIONS_KIND, "--out") as folder:
            if remove_earlier_result(folder, []):
                print(f"removed the earlier {out / PREDICTIONS}: these episodes have no unlabelled queries")


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
    parser.add_argument("--out", type=Path, default=None,
                        help="folder for predictions.csv, written for episodes with unlabelled queries (None: "
                             "<episodes>-predictions beside --episodes)")
    return parser


def output_folder(args, input_flag, suffix):
    """--out, or <input>-<suffix> beside the input folder (args.images, args.episodes); the input is never
    written into."""
    source = Path(os.path.abspath(getattr(args, input_flag.lstrip("-"))))  # "." has no name; a link is not followed
    return args.out or source.parent / f"{source.name}-{suffix}"


def check_output(args, input_flag, suffix, kind, names):
    """Refuse, before any work, an --out that lies in the input folder or where `names` may not be written;
    returns the output folder."""
    out = output_folder(args, input_flag, suffix)
    flag = "--out" if args.out else f"--out (not given: its default, beside {input_flag})"
    check_outside_inputs(out, flag, [(input_flag, getattr(args, input_flag.lstrip("-")))])
    OutputFolder(out, kind, flag).check(names)
    return out


def check_episodes_args(args, counts=()):
    """Refuse non-positive --mc-samples, --em-iters and other `counts` (attribute names), a bad --seed and an
    --out where predictions.csv may not be written; returns (the torch device of --device, the output
    folder, or None where --out is not given and its default beside --episodes has a name too long for the
    file system: predict_and_report refuses it only for unlabelled queries, the only ones it serves)."""
    check_positive(args, ["mc_samples", "em_iters", *counts])
    check_seed(args.seed)
    try:
        out = check_output(args, "--episodes", "predictions", PREDICTIONS_KIND, [PREDICTIONS])
    except OSError as e:
        if args.out is not None or e.errno != errno.ENAMETOOLONG:
            raise
        out = None
    return resolve_device(args.device), out


# ---- grouping an unlabeled folder

def grouping_parser(doc):
    """A parser with the flags both cluster commands share; `doc` is the command's module docstring."""
    parser = argparse.ArgumentParser(description=doc.split("\n")[0], formatter_class=HelpFormatter)
    parser.add_argument("--images", type=Path, required=True,
                        help="folder of images (any nesting); when every image lies in a folder below it (two "
                             "or more folders), the clusters are scored against those folders")
    parser.add_argument("--clusters", type=int, required=True, help="clusters K (at least 2)")
    parser.add_argument("--restarts", type=int, default=10, help="random starts of the EM and of k-means")
    parser.add_argument("--out", type=Path, default=None,
                        help="folder for clusters.csv and the PNGs (None: <images>-clusters beside --images)")
    parser.add_argument("--mc-sample-size", type=int, default=32, help="MC samples S per image")
    parser.add_argument("--em-iters", type=int, default=10, help="iterations of each EM run")
    parser.add_argument("--max-images", type=int, default=MAX_IMAGES,
                        help="refuse folders with more images: the set posterior attends over all N images at once "
                             "(4 heads x N^2 scores) and the EM holds restarts x N x S latent samples, about 0.4 GB "
                             "each at N = 5000, S = 32, D = 64, 10 restarts; the per-item encoder runs in chunks of "
                             f"{ENCODER_CHUNK}")
    parser.add_argument("--seed", type=int, default=0, help="seeds the MC samples, the EM and k-means starts")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="auto = cuda when available")
    return parser


def start_grouping(args):
    """Check the shared flags and --out, and list the images; returns (device, image files).  The --restarts
    EM runs (and k-means runs) go at once, each with its own random stream and the MC samples of every image:
    more than this machine's memory holds is refused (a lower bound: one float per latent sample)."""
    check_positive(args, ["restarts", "mc_sample_size", "em_iters", "max_images"])
    if args.clusters < 2:
        raise UserError(f"--clusters must be at least 2 (got {args.clusters})")
    check_seed(args.seed)
    check_output(args, "--images", "clusters", CLUSTERS_KIND, [CLUSTERS, *cluster_pictures(args.clusters)])
    files = list_images(args)
    check_fits_in_memory(args.restarts * (STREAM_BYTES + FLOAT_BYTES * len(files) * args.mc_sample_size),
                         f"--restarts {args.restarts}: the random streams and latent samples of the EM runs "
                         f"({args.restarts} restarts x {len(files)} images x {args.mc_sample_size} samples)")
    return resolve_device(args.device), files


def find_images(root):
    """Image files below `root` at any depth (no symbolic link to a folder followed), sorted by path; hidden
    files and folders and files whose suffix is not an image format Pillow opens are skipped, other files
    that are not regular refused (is_image_file), names refused as visible_entries refuses them."""
    if not root.is_dir():
        raise UserError(f"--images {root}: {'a file, not a folder' if root.exists() else 'no such folder'}")
    files, folders = [], [root]
    while folders:
        for entry in visible_entries(folders.pop()):
            if entry.is_dir() and not entry.is_symlink():
                folders.append(entry)
            elif is_named_as_image(entry) and is_image_file(entry):
                files.append(entry)
    return sorted(files)


def list_images(args):
    """The image files of --images; none, more than --max-images, no more than --clusters, or class folders of
    one image each (nothing to score against) is an error."""
    files = find_images(args.images)
    if not files:
        raise UserError(f"--images {args.images}: no image files (.png, .jpg, ... that Pillow reads)")
    if len(files) > args.max_images:
        raise UserError(f"--images {args.images}: {len(files)} images, more than --max-images {args.max_images}")
    if len(files) <= args.clusters:
        raise UserError(f"--images {args.images}: {len(files)} images, fewer than --clusters {args.clusters} + 1 (a "
                        "cluster per image groups nothing)")
    classes = folder_classes(args.images, files)
    if classes is not None and int(torch.bincount(classes).max()) < 2:
        raise UserError(f"--images {args.images}: each of its {len(files)} class folders holds one image, so no two "
                        "images share a class and scores against the folders would mean nothing (the adjusted Rand "
                        "index is 0 for any grouping): put the images of a class in one folder, or all images in "
                        "one folder to group them unscored")
    return files


def folder_classes(root, files):
    """Class index (N,) of every file by its parent folder below root, or None when an image lies directly
    in root or there is only one folder."""
    parents = [f.parent.relative_to(root).as_posix() for f in files]
    if "." in parents or len(set(parents)) < 2:
        return None
    names = sorted(set(parents))
    return torch.tensor([names.index(p) for p in parents])


def check_folders_share_no_picture(root, files, items, classes):
    """Refuse class folders (classes (N,) of items (N, ...) read from files below root) that hold one picture
    as the model reads it, or copies of one, under two names: scored against such folders, a grouping is
    marked wrong for the picture whichever cluster it takes; and a folder more than half of whose images are
    copies of others in it: copies fall in one cluster whatever the model, and the scores would count that
    as agreement.  O(N) (copy_pairs; a group of copies held in two classes yields a pair across them)."""
    pairs = copy_pairs(*near_copies_of(items.cpu()))
    classes = classes.numpy()
    across = classes[pairs[:, 0]] != classes[pairs[:, 1]]
    shared = pairs[across]
    if len(shared):
        first, second = (files[i].relative_to(root) for i in shared[0])
        raise UserError(f"--images {root}: the class folders {first.parent.as_posix()!r} and "
                        f"{second.parent.as_posix()!r} hold the same picture as the model reads it ({first.name} and "
                        f"{second.name}: {COPIES}); the scores against the folders would mean nothing: give each "
                        "picture one class folder, or put the images in one folder to group them unscored")
    copies = np.bincount(classes[np.unique(pairs[~across, 1])], minlength=classes.max() + 1)  # per folder
    sizes = np.bincount(classes)
    mostly = np.flatnonzero(2 * copies > sizes)
    if len(mostly):
        folder = files[int(np.flatnonzero(classes == mostly[0])[0])].relative_to(root).parent.as_posix()
        raise UserError(f"--images {root}: {copies[mostly[0]]} of the {sizes[mostly[0]]} images of the class folder "
                        f"{folder!r} are copies of others in it ({COPIES}); copies fall in one cluster whatever the "
                        "model, so the scores against the folders would count them as agreement: keep one of each")


def partition_scores(classes, partitions):
    """{name: {"ari", "nmi"}}: the ARI and NMI of each {name: labels (N,)} against the class folders (N,)."""
    return {name: {"ari": adjusted_rand_index(classes, labels), "nmi": normalized_mutual_info(classes, labels)}
            for name, labels in partitions.items()}


def print_grouping(args, files, cluster, scores):
    """Print the cluster sizes of `cluster` (N,) and, with class folders, the scores (see partition_scores)."""
    sizes = torch.bincount(cluster, minlength=args.clusters).tolist()
    print(f"{len(cluster)} images -> {args.clusters} clusters of sizes {sizes}")
    if scores is not None:
        print(f"against the {int(folder_classes(args.images, files).max()) + 1} class folders:")
        for name, score in scores.items():
            print(f"  {name}: adjusted Rand index {score['ari']:.3f}, "
                  f"normalised mutual information {score['nmi']:.3f}")


def cluster_pictures(num_clusters):
    """cluster_<k>.png for k < num_clusters, k padded to the same width."""
    digits = len(str(num_clusters - 1))
    return [f"cluster_{k:0{digits}d}.png" for k in range(num_clusters)]


def write_clusters(folder, root, files, cluster, confidence, num_clusters, draw_cluster):
    """clusters.csv and cluster_<k>.png per non-empty cluster k in the opened OutputFolder, drawn by
    draw_cluster(k, members (n,), place in the folder); the files of an earlier grouping there are removed
    (remove_earlier_result).  Returns the names removed."""
    write_csv(folder, CLUSTERS, ["file", "cluster", "confidence"],
              [[f.relative_to(root).as_posix(), k, f"{c:.6f}"]
               for f, k, c in zip(files, cluster.tolist(), confidence.tolist())])
    pictures, found = cluster_pictures(num_clusters), cluster.unique().tolist()
    for k in found:
        draw_cluster(k, torch.nonzero(cluster == k).flatten(), folder / pictures[k])
    return remove_earlier_result(folder, [CLUSTERS, *(pictures[k] for k in found)])


def group_folder(args, files, items, model, *, baseline_features, baseline_name, load_split):
    """Cluster `items` (N, ...) read from `files` with the model and, with class folders, score the clusters
    beside k-means on baseline_features (N, F), unless the items are mostly those the checkpoint trained on
    (check_items_not_trained_on; load_split reads its data's splits); prints nothing (finish_grouping does, once every
    check passed).

    Returns (cluster (N,), confidence (N,), log_pi (K,), mu (K, D), scores or None).
    """
    check_distinct(items, f"--images {args.images}")
    seed_everything(args.seed)
    rng = restart_streams(args.seed, GROUPING_EM, args.restarts)
    noise = EpisodeRandom([(args.seed, GROUPING_NOISE, 0)])
    cluster, confidence, log_pi, mu = cluster_set(model, items, args.clusters, args.mc_sample_size, args.em_iters,
                                                  rng, noise, ENCODER_CHUNK)
    check_finite_result(torch.cat([confidence, mu.flatten()]), "cluster responsibilities and means")
    cluster, confidence = cluster.cpu(), confidence.cpu()
    classes = folder_classes(args.images, files)
    scores = None
    if classes is not None:
        check_folders_share_no_picture(args.images, files, items, classes)
        check_items_not_trained_on(items.cpu(), args.checkpoint, load_split, f"--images {args.images}")
        baseline, _, _ = kmeans(baseline_features, args.clusters, restart_streams(args.seed, GROUPING_KMEANS,
                                                                                 args.restarts))
        scores = partition_scores(classes, {f"Meta-GMVAE (EM, {args.restarts} restarts)": cluster,
                                        f"{baseline_name} (k-means++, {args.restarts} restarts)": baseline.cpu()})
    return cluster, confidence, log_pi, mu, scores


def finish_grouping(args, files, cluster, confidence, scores, draw_cluster):
    """Print the cluster sizes and scores (print_grouping) and write the outputs into --out (see
    write_clusters); returns main's result."""
    print_grouping(args, files, cluster, scores)
    out = output_folder(args, "--images", "clusters")
    with OutputFolder(out, CLUSTERS_KIND, "--out") as folder:
        removed = write_clusters(folder, args.images, files, cluster, confidence, args.clusters, draw_cluster)
    print(f"wrote {out / CLUSTERS} and {len(cluster.unique())} cluster PNGs"
          + (f"; removed those of the earlier grouping there: {', '.join(removed)}" if removed else ""))
    return {"cluster": cluster, "confidence": confidence, "scores": scores}
