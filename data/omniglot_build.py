"""What the real Omniglot build (prepare_omniglot.py) and the procedural one (synthetic_omniglot.py) share:
the seeded character split, the four rotations as classes, and the atomic writing of the arrays."""
from contextlib import ExitStack
from pathlib import Path

import numpy as np

from metagmvae.runfiles import UserError, atomic_path, write_json
from omniglot.dataset import check_drawings

REFERENCE_SPLIT = (1200, 100, 323)  # train / val / test characters of the full set
SPLITS = ("train", "val", "test")
ROTATIONS = 4  # 0, 90, 180, 270 degrees
IMAGE_SIZE = 28


def split_counts(n):
    """(train, val, test) character counts in the reference proportions 1200:100:323, each >= 1."""
    if n < len(SPLITS):
        raise UserError(f"{n} characters cannot fill {len(SPLITS)} splits")
    total = sum(REFERENCE_SPLIT)
    val, test = (max(1, round(n * c / total)) for c in REFERENCE_SPLIT[1:])
    return n - val - test, val, test


def split_characters(n, seed, counts=None):
    """Seeded split of characters 0..n-1: three sorted index arrays (train, val, test).

    `counts` gives the three sizes (default: split_counts(n)); they must sum to n, each >= 1.
    """
    counts = tuple(counts) if counts is not None else split_counts(n)
    if len(counts) != len(SPLITS) or sum(counts) != n or min(counts) < 1:
        given = " ".join(map(str, counts))
        raise UserError(f"--split {given}: need {len(SPLITS)} counts >= 1 summing to {n}")
    perm = np.random.default_rng(seed).permutation(n)
    bounds = np.cumsum(counts)[:-1]
    return tuple(np.sort(part) for part in np.split(perm, bounds))


def with_rotations(images):
    """(C, 20, 28, 28) characters -> (4C, 20, 28, 28, 1) classes; class 4c + r is rotated by 90r degrees."""
    rotated = [np.rot90(images, r, axes=(-2, -1)) for r in range(ROTATIONS)]
    rotated = np.stack(rotated, axis=1)  # (C, 4, 20, 28, 28)
    return np.ascontiguousarray(rotated.reshape(-1, *images.shape[1:], 1))


def write_build(out, arrays, manifest):
    """Check the arrays {split: (classes, drawings, 28, 28, 1)} against the convention that training reads
    (omniglot/dataset.py check_drawings: ink = 1 on a 0 background), then write {split}.npy and
    manifest.json atomically; the files are renamed into place together."""
    out = Path(out)
    for name, array in arrays.items():
        check_drawings(array, f"the converted drawings of {name}.npy")
    try:
        with ExitStack() as stack:  # renames happen on exit, in reverse order: the manifest last
            write_json(stack.enter_context(atomic_path(out / "manifest.json")), manifest)
            for name, array in arrays.items():
                with open(stack.enter_context(atomic_path(out / f"{name}.npy")), "wb") as f:
                    np.save(f, array)
    except OSError as e:
        raise UserError(f"{out}: cannot write the outputs ({e})") from None
