"""Omniglot arrays as data/prepare_omniglot.py (or the reference's preprocessing) writes them:
train.npy, val.npy, test.npy shaped (classes, drawings, 28, 28, 1), float in [0, 1], ink = 1."""
from pathlib import Path

import numpy as np
import torch

from metagmvae.runfiles import UserError, load_npy

SPLITS = ("train", "val", "test")
IMAGE_SHAPE = (28, 28, 1)


def load_split(data_dir, split):
    """One split as a float32 tensor (C, I, 1, 28, 28); malformed files raise UserError."""
    path = Path(data_dir) / f"{split}.npy"
    if not path.is_file():
        raise UserError(f"{path} not found; build it with `python data/prepare_omniglot.py --out {data_dir}`")
    array = load_npy(path)
    if array.ndim != 5 or array.shape[2:] != IMAGE_SHAPE or 0 in array.shape[:2]:
        raise UserError(f"{path} has shape {array.shape}; expected (classes, drawings, 28, 28, 1)")
    if not np.issubdtype(array.dtype, np.floating):
        raise UserError(f"{path} has dtype {array.dtype}; expected float values in [0, 1]")
    if not np.isfinite(array).all():
        raise UserError(f"{path} contains NaN or Inf")
    if array.min() < 0 or array.max() > 1:
        raise UserError(f"{path} has values in [{array.min():.3g}, {array.max():.3g}]; expected [0, 1] with ink = 1")
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32)).permute(0, 1, 4, 2, 3).contiguous()


def load_omniglot(data_dir, splits=SPLITS):
    """{split: (C, I, 1, 28, 28) tensor}."""
    return {split: load_split(data_dir, split) for split in splits}
