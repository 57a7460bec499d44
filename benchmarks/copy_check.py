"""Seconds the data check of every start takes (metagmvae.runfiles.check_distinct_classes: a class in two
places, copies and near-copies of items, metagmvae/copies.py) at the sizes of the paper's data, best of
--repeats, on this machine (docs/reproducibility.md quotes a run).

    python benchmarks/copy_check.py                    # procedural full-size Omniglot, Mini-ImageNet-sized
                                                       # features and images
    python benchmarks/copy_check.py --omniglot DIR     # also the train/val/test.npy of a built Omniglot folder
"""
import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data.synthetic_omniglot import build_synthetic_omniglot  # noqa: E402
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
