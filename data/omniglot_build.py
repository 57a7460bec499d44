"""What the real Omniglot build (prepare_omniglot.py) and the procedural one (synthetic_omniglot.py) share:
the seeded character split, the four rotations as classes, and the atomic writing of the arrays."""
from contextlib import ExitStack

import numpy as np

from metagmvae.folders import OutputFolder, canonical_json
from metagmvae.runfiles import UserError, check_distinct_classes
from omniglot.dataset import check_drawings

REFERENCE_SPLIT = (1200, 100, 323)  # train / val / test characters of the full set
SPLITS = ("train", "val", "test")
ROTATIONS = 4  # 0, 90, 180, 270 degrees
IMAGE_SIZE = 28
BUILD_KIND = "Omniglot arrays"  # the kind of folder a build is, in its record (metagmvae/folders.py)
BUILD_FILES = ("manifest.json", *(f"{split}.npy" for split in SPLITS))


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


def build_folder(out, flag="--out"):
    """The OutputFolder of a build into `out`; `flag` names it in messages."""
    return OutputFolder(out, BUILD_KIND, flag)


def check_build_folder(out, flag="--out"):
    """Refuse, before the slow work, an `out` where a build may not write (folders.py)."""
    build_folder(out, flag).check(BUILD_FILES)


def write_build(out, arrays, manifest, flag="--out"):
    """write_arrays into the build folder `out` (a folder this creates is removed if the arrays are refused)."""
    with build_folder(out, flag) as folder:
        write_arrays(folder, arrays, manifest)


def write_arrays(folder, arrays, manifest):
    """Check the arrays {split: (classes, drawings, 28, 28, 1)} against what training reads (omniglot/dataset.py
    check_drawings: ink = 1 on a 0 background; no class twice), then write {split}.npy and manifest.json
    into the opened build folder; the files are renamed into place together once all are written."""
    for name, array in arrays.items():
        check_drawings(array, f"the converted drawings of {name}.npy")
    check_distinct_classes({f"{name}.npy": array for name, array in arrays.items()}, f"the build for {folder.path}")
    with ExitStack() as stack:  # renames on exit, in reverse order: the manifest last
        manifest_file = stack.enter_context(folder.writing("manifest.json"))
        for name, array in arrays.items():
            np.save(stack.enter_context(folder.writing(f"{name}.npy")), array)
        manifest_file.write(canonical_json(manifest))
