"""Seconds the data check of every start takes (metagmvae.runfiles.check_distinct_classes: a class in two
places, copies and near-copies of items, metagmvae/copies.py) at the sizes of the paper's data, best of
--repeats, on this machine (docs/reproducibility.md quotes a run).

    python benchmarks/copy_check.py                    # procedural full-size Omniglot, Mini-ImageNet-sized
                                                       # features and images
    python benchmarks/copy_check.py --omniglot DIR     # also the train/val/test.npy of a built Omniglot folder

With --omniglot it first prints how the drawing views (metagmvae.copies.drawing_views) sit on those real
drawings: the pairs of copies among them, and how far copies of 300 of them, resampled as an own image is
read back (enlarged, then Lanczos to 28 x 28), lie from their originals, as read and in the views.
"""
import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data.synthetic_omniglot import build_synthetic_omniglot  # noqa: E402
from metagmvae.copies import drawing_views, near_copies  # noqa: E402
from metagmvae.runfiles import check_distinct_classes  # noqa: E402
from simclr.data import thumbnails  # noqa: E402

OMNIGLOT_CHARACTERS = 1623  # x 4 rotations x 20 drawings = 129,840 drawings
MIMGNET_CLASSES = {"train": 64, "val": 16, "test": 20}  # of 600 images or feature rows each


def seconds(check, repeats):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        check()
        times.append(time.perf_counter() - start)
    return min(times)


RESAMPLED = {"nearest x10": (10, Image.NEAREST), "Lanczos x2": (2, Image.LANCZOS), "bicubic x4": (4, Image.BICUBIC),
             "bilinear x4": (4, Image.BILINEAR)}


def relative_distances(originals, copies, view):
    """Distance of each copy (n, H, W) from its original in `view` (the identity or drawing_views), as a fraction
    of the larger of their distances from the median view of the originals (at least the median one), as
    near_copies measures it."""
    a, b = (view(x).reshape(len(x), -1).astype(np.float64) for x in (originals, copies))
    centre = np.median(a, axis=0)
    lengths = np.linalg.norm(a - centre, axis=1)
    scale = np.maximum(np.maximum(lengths, np.linalg.norm(b - centre, axis=1)), np.median(lengths))
    return np.linalg.norm(a - b, axis=1) / scale


def drawing_views_on(splits):
    """Print the copies among real drawings ({file: (C, I, 28, 28, 1)}) as read and in the drawing views, and
    the distances of resampled copies of 300 of them."""
    drawings = np.concatenate([a[..., 0] for a in splits.values()])  # (C, I, 28, 28)
    classes = np.repeat(np.arange(len(drawings)), drawings.shape[1])
    rows = drawings.reshape(-1, 28 * 28).astype(np.float32)
    _, as_read = near_copies(rows)
    ids, pairs = near_copies(rows, (28, 28))
    holder = np.unique(ids, return_index=True)[1]
    first, second = classes[holder[pairs[:, 0]]], classes[holder[pairs[:, 1]]]
    within = first == second
    per_class = np.bincount(classes[np.unique(holder[pairs[within]])]) if within.any() else np.zeros(1, int)
    print(f"drawing views on {len(rows)} real drawings: {len(pairs)} pairs of copies ({len(as_read)} as read), "
          f"{within.sum()} within a class, at most {per_class.max()} drawings of a class in them")
    picked = drawings.reshape(-1, 28, 28)[np.random.default_rng(0).choice(len(rows), 300, replace=False)]
    for name, (up, resample) in RESAMPLED.items():
        copies = np.stack([np.asarray(Image.fromarray(d).resize((28 * up, 28 * up), resample)
                                      .resize((28, 28), Image.LANCZOS)) for d in picked]).clip(0, 1)
        read, viewed = (relative_distances(picked, copies, view) for view in (lambda x: x, drawing_views))
        print(f"  copies resampled {name}: median distance as read {np.median(read):.3f}, in the views "
              f"{np.median(viewed):.3f} (90th percentile {np.quantile(viewed, 0.9):.3f}; near-copies: below 0.1)")


def omniglot_splits(folder):
    return {f"{split}.npy": np.load(Path(folder) / f"{split}.npy") for split in ("train", "val", "test")}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--omniglot", help="a built Omniglot folder to time as well")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    cases = {}  # name: {file name: (C, I, ...) array}
    if args.omniglot:
        cases[f"Omniglot {args.omniglot}"] = omniglot_splits(args.omniglot)
        drawing_views_on(cases[f"Omniglot {args.omniglot}"])
    with tempfile.TemporaryDirectory() as folder:
        build_synthetic_omniglot(folder, OMNIGLOT_CHARACTERS)
        cases[f"procedural Omniglot, {OMNIGLOT_CHARACTERS} characters"] = omniglot_splits(folder)
    cases["Mini-ImageNet-sized features, 512 a row"] = {
        f"{split}_features.npy": np.maximum(rng.random((classes, 1, 512), dtype=np.float32)
                                            + 0.3 * rng.standard_normal((classes, 600, 512), dtype=np.float32), 0)
        for split, classes in MIMGNET_CLASSES.items()}
    for name, splits in cases.items():
        items = sum(a.shape[0] * a.shape[1] for a in splits.values())
        print(f"{name}: {items} items, {seconds(lambda: check_distinct_classes(splits, name), args.repeats):.2f} s")
    images = {f"{split}_images.npy": rng.integers(0, 256, (classes, 600, 84, 84, 3), np.uint8)
              for split, classes in MIMGNET_CLASSES.items()}
    took = seconds(lambda: check_distinct_classes({name: thumbnails(a) for name, a in images.items()}, "images"),
                   args.repeats)
    print(f"Mini-ImageNet-sized random 84 x 84 images, their thumbnails included: 60000 items, {took:.2f} s")


if __name__ == "__main__":
    main()
