"""SimCLR features of Mini-ImageNet as simclr/main.py exports them: <split>_features.npy (N, F) float32,
class-major, with <split>_labels.npy (N,).  The authors' feature files (600 rows per class, no labels)
load too."""
import json
from pathlib import Path

import numpy as np
import torch

from metagmvae.runfiles import UserError, load_npy

SPLITS = ("train", "val", "test")
REFERENCE_PER_CLASS = 600  # rows per class in the authors' label-free feature files


def load_split(data_dir, split):
    """One split as a float32 tensor (C, I, F); malformed files raise UserError."""
    path = Path(data_dir) / f"{split}_features.npy"
    if not path.is_file():
        raise UserError(f"{path} not found; export it with `python simclr/main.py --feature-save-dir {data_dir} ...`")
    features = load_npy(path)
    if features.ndim != 2 or 0 in features.shape or not np.issubdtype(features.dtype, np.floating):
        raise UserError(f"{path} has shape {features.shape} and dtype {features.dtype}; expected (N, F) floats")
    if not np.isfinite(features).all():
        raise UserError(f"{path} contains NaN or Inf")
    labels_path = path.with_name(f"{split}_labels.npy")
    if labels_path.is_file():
        labels = load_npy(labels_path)
        if labels.shape != (len(features),):
            raise UserError(f"{labels_path} has shape {labels.shape}; expected ({len(features)},) for {path.name}")
        classes, counts = np.unique(labels, return_counts=True)
        if (counts != counts[0]).any():
            raise UserError(f"{labels_path}: classes have different numbers of rows ({counts.min()} to {counts.max()})")
        if (np.diff(labels) < 0).any():
            raise UserError(f"{labels_path}: rows are not class-major (labels must not decrease)")
        per_class = counts[0]
    else:
        if len(features) % REFERENCE_PER_CLASS:
            raise UserError(f"{path} has {len(features)} rows, not a multiple of {REFERENCE_PER_CLASS}, and there is "
                            f"no {labels_path.name} giving each row's class")
        per_class = REFERENCE_PER_CLASS
    array = np.ascontiguousarray(features, dtype=np.float32).reshape(-1, per_class, features.shape[1])
    return torch.from_numpy(array)


def check_manifest(data_dir, data):
    """With simclr/main.py's manifest.json beside the features, each split must have the rows and the
    feature size it lists (the images of the split CSVs)."""
    path = Path(data_dir) / "manifest.json"
    if not path.is_file():
        return
    try:
        manifest = json.loads(path.read_text())
        expected = {split: (manifest["splits"][split]["count"], manifest["feature_size"]) for split in data}
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UserError(f"{path}: not a features manifest of simclr/main.py ({e})") from None
    for split, array in data.items():
        found = (array.shape[0] * array.shape[1], array.shape[2])
        if found != expected[split]:
            raise UserError(f"{split}_features.npy holds {found[0]} rows x {found[1]} features but {path} lists "
                            f"{expected[split][0]} x {expected[split][1]}")


def load_features(data_dir, splits=SPLITS):
    """{split: (C, I, F) tensor}; every split must have the same feature size F."""
    data = {split: load_split(data_dir, split) for split in splits}
    sizes = {split: array.shape[-1] for split, array in data.items()}
    if len(set(sizes.values())) > 1:
        raise UserError(f"feature sizes differ between splits in {data_dir}: {sizes}")
    check_manifest(data_dir, data)
    return data
