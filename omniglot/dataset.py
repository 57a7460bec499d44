"""Omniglot arrays as data/prepare_omniglot.py (or the reference's preprocessing) writes them:
train.npy, val.npy, test.npy shaped (classes, drawings, 28, 28, 1), float in [0, 1], ink = 1 on a 0
background.

`check_drawings` checks that convention where the arrays are loaded (load_split) and where they are built
(data/omniglot_build.py write_build).  Real Omniglot has a mean pixel of about 0.08 and its border pixels
(the 108 of the 28x28 perimeter) average under 0.003 per file, under 0.22 in any one drawing; inverted
(1 - x) drawings give about 0.92 and 1.0.  A drawing whose border pixels average above BORDER_LIMIT is
drawn dark on light, a file whose mean pixel is above MEAN_LIMIT, or a drawing whose mean pixel is above
DRAWING_MEAN_LIMIT (inverted behind a dark border), is mostly ink, a drawing whose pixels are all equal holds
no stroke, and a file whose drawings are all one image tells no class from another: each of these is
refused, as every accuracy computed from it would be meaningless.
"""
import os
from pathlib import Path

import numpy as np
import torch

from metagmvae.folders import check_as_written
from metagmvae.runfiles import UserError, check_distinct_classes, load_npy

SPLITS = ("train", "val", "test")
IMAGE_SHAPE = (28, 28, 1)
BORDER_LIMIT = 0.5  # mean of a drawing's border pixels: real Omniglot < 0.22, inverted about 1.0
MEAN_LIMIT = 0.3  # mean pixel of a file: real Omniglot about 0.08, inverted about 0.92
DRAWING_MEAN_LIMIT = 0.5  # mean pixel of one drawing: real Omniglot at most 0.2, inverted about 0.92
INK_LIMIT = 0.5  # largest value of a file: real Omniglot and ours 1.0; scaled by 1/255 twice 0.004
CONVENTION = "expected ink = 1 on a 0 background (Omniglot: mean pixel about 0.08)"


def border_means(images):
    """Mean of the border pixels of each drawing: images (..., 28, 28) -> (...)."""
    edges = [images[..., 0, :], images[..., -1, :], images[..., 1:-1, 0], images[..., 1:-1, -1]]
    return np.concatenate(edges, axis=-1).mean(-1, dtype=np.float64)


def check_drawings(array, where):
    """`array` (classes, drawings, 28, 28, 1), read from or written to `where` (a phrase naming the file), as
    float32; UserError unless it is float in [0, 1] with ink = 1 on a 0 background (see the module
    docstring), its values checked as float32, as the model reads them."""
    if array.ndim != 5 or array.shape[2:] != IMAGE_SHAPE or 0 in array.shape[:2]:
        raise UserError(f"{where} has shape {array.shape}; expected (classes, drawings, 28, 28, 1)")
    if not np.issubdtype(array.dtype, np.floating):
        raise UserError(f"{where} has dtype {array.dtype}; expected float values in [0, 1]")
    with np.errstate(over="ignore", under="ignore"):
        array = array.astype(np.float32, copy=False)  # checked as the model reads it
    if not np.isfinite(array).all():
        raise UserError(f"{where} contains NaN or Inf (or values beyond float32's range)")
    low, high = array.min(), array.max()
    if low < 0 or high > 1:
        raise UserError(f"{where} has values in [{low:.7g}, {high:.7g}]; expected [0, 1] with ink = 1")
    images = array[..., 0]  # (C, I, 28, 28)
    mean, borders = float(images.mean(dtype=np.float64)), border_means(images)  # borders: (C, I)
    found = f"mean pixel {mean:.3g}, border mean {borders.mean():.3g}"
    light = borders > BORDER_LIMIT
    if light.any():
        raise UserError(f"{where}: {light.sum()} of {light.size} drawings have a light background (border pixels "
                        f"above {BORDER_LIMIT} on average; {found}): inverted ink? {CONVENTION}")
    if mean > MEAN_LIMIT:
        raise UserError(f"{where}: mostly ink (mean pixel above {MEAN_LIMIT}; {found}); {CONVENTION}")
    inked = images.mean((-2, -1), dtype=np.float64) > DRAWING_MEAN_LIMIT  # (C, I)
    if inked.any():
        first = np.argwhere(inked)[0]
        raise UserError(f"{where}: {inked.sum()} of {inked.size} drawings are mostly ink (mean pixel above "
                        f"{DRAWING_MEAN_LIMIT}, the first class {first[0]} drawing {first[1]}; {found}): inverted "
                        f"ink? {CONVENTION}")
    blank = np.ptp(images.reshape(*images.shape[:2], -1), axis=-1) == 0  # (C, I)
    if blank.any():
        first = np.argwhere(blank)[0]
        raise UserError(f"{where}: {blank.sum()} of {blank.size} drawings are blank (all pixels equal, the first "
                        f"class {first[0]} drawing {first[1]}; {found}); {CONVENTION}")
    if high < INK_LIMIT:
        raise UserError(f"{where}: its strongest ink is {high:.3g}, below {INK_LIMIT}: values scaled down "
                        f"(divided by 255 twice?; {found}); {CONVENTION}")
    if array.shape[0] * array.shape[1] > 1 and (images == images[:1, :1]).all():
        raise UserError(f"{where}: all {blank.size} drawings are the same image; nothing tells them apart")
    return array


def load_split(data_dir, split):
    """One split as a float32 tensor (C, I, 1, 28, 28); malformed files raise UserError."""
    path = Path(data_dir) / f"{split}.npy"
    if not os.path.lexists(path):  # a FIFO or a broken link is named as such by load_npy
        raise UserError(f"{path} not found; build it with `python data/prepare_omniglot.py --out {data_dir}`")
    array = check_drawings(load_npy(path), path)
    return torch.from_numpy(np.ascontiguousarray(array)).permute(0, 1, 4, 2, 3).contiguous()


def load_omniglot(data_dir, splits=SPLITS):
    """{split: (C, I, 1, 28, 28) tensor}; a build that has not finished, or whose arrays changed since it
    wrote them (folders.check_as_written), is refused, and so is a class that appears twice
    (check_distinct_classes)."""
    check_as_written(data_dir, "--data-dir", [f"{split}.npy" for split in splits])
    data = {split: load_split(data_dir, split) for split in splits}
    check_distinct_classes({f"{split}.npy": array for split, array in data.items()}, data_dir)
    return data


def load_test_split(data_dir):
    """test.npy as (C, I, 1, 28, 28), checked against the other splits in data_dir as in training."""
    present = [split for split in SPLITS if split == "test" or os.path.lexists(Path(data_dir) / f"{split}.npy")]
    return load_omniglot(data_dir, present)["test"]
