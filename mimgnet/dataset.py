"""SimCLR features of Mini-ImageNet as simclr/main.py exports them: <split>_features.npy (N, F) float32,
class-major, with <split>_labels.npy (N,) integer class indices.  The authors' feature files (600 rows per
class, no labels) load too, when their rows are those of Mini-ImageNet's split: 64, 16 and 20 classes."""
import json
import os
from pathlib import Path

import numpy as np
import torch

from metagmvae import distributed
from metagmvae.folders import check_as_written
from metagmvae.runfiles import UserError, check_distinct_classes, check_regular_file, load_npy
from simclr.model import ENCODER_DIGEST

SPLITS = ("train", "val", "test")
# The authors' label-free feature files: Mini-ImageNet's classes per split (Ravi & Larochelle), 600 rows each.
REFERENCE_CLASSES = {"train": 64, "val": 16, "test": 20}
REFERENCE_PER_CLASS = 600
SCALE_LIMIT = 10  # largest ratio of two splits' median feature norms


def rows_per_class(labels, labels_path):
    """The common number of rows of every class of integer labels (N,) that are class-major."""
    if not np.issubdtype(labels.dtype, np.integer):
        raise UserError(f"{labels_path} holds {labels.dtype} labels; expected integer class indices, as "
                        "simclr/main.py writes them")
    classes, counts = np.unique(labels, return_counts=True)
    if (counts != counts[0]).any():
        raise UserError(f"{labels_path}: classes have different numbers of rows ({counts.min()} to {counts.max()})")
    if (np.diff(labels.astype(np.int64)) < 0).any():  # int64: a difference of unsigned labels wraps around
        raise UserError(f"{labels_path}: rows are not class-major (labels must not decrease)")
    return int(counts[0])


def reference_rows_per_class(path, split, num_rows, labels_path):
    """Without a labels file the rows are taken as the authors' files hold them, 600 rows per class of
    Mini-ImageNet's split; other rows are refused, as cutting them would mix classes."""
    classes = REFERENCE_CLASSES[split]
    if num_rows != classes * REFERENCE_PER_CLASS:
        raise UserError(f"{path} has {num_rows} rows and there is no {labels_path.name} giving each row's class; "
                        f"label-free features must be the authors' {split} file, {classes} classes x "
                        f"{REFERENCE_PER_CLASS} rows = {classes * REFERENCE_PER_CLASS} rows")
    return REFERENCE_PER_CLASS


def load_split(data_dir, split):
    """One split as (float32 tensor (C, I, F), whether it has labels); malformed files raise UserError."""
    path = Path(data_dir) / f"{split}_features.npy"
    if not path.exists() and not path.is_symlink():  # a broken link is named as such by load_npy
        raise UserError(f"{path} not found; export it with `python simclr/main.py --feature-save-dir {data_dir} ...`")
    features = load_npy(path)
    if features.ndim != 2 or 0 in features.shape or not np.issubdtype(features.dtype, np.floating):
        raise UserError(f"{path} has shape {features.shape} and dtype {features.dtype}; expected (N, F) floats")
    with np.errstate(over="ignore", under="ignore"):
        features = features.astype(np.float32, copy=False)  # checked as the model reads them
    if not np.isfinite(features).all():
        raise UserError(f"{path} contains NaN or Inf (or values beyond float32's range)")
    if len(features) > 1 and (features == features[:1]).all():
        raise UserError(f"{path}: all {len(features)} rows are the same feature vector; nothing tells the items "
                        "apart (an encoder whose output is constant?)")
    labels_path = path.with_name(f"{split}_labels.npy")
    labelled = labels_path.exists() or labels_path.is_symlink()
    if labelled:
        labels = load_npy(labels_path)
        if labels.shape != (len(features),):
            raise UserError(f"{labels_path} has shape {labels.shape}; expected ({len(features)},) for {path.name}")
        per_class = rows_per_class(labels, labels_path)
    else:
        per_class = reference_rows_per_class(path, split, len(features), labels_path)
    array = np.ascontiguousarray(features).reshape(-1, per_class, features.shape[1])
    return torch.from_numpy(array), labelled


def split_features(data_dir, split):
    """One split's features (C, I, F), as load_split reads them."""
    return load_split(data_dir, split)[0]


def check_manifest(data_dir, data):
    """With simclr/main.py's manifest.json beside the features, each split must have the rows and the
    feature size it lists (the images of the split CSVs)."""
    path = Path(data_dir) / "manifest.json"
    if not path.exists() and not path.is_symlink():
        return
    check_regular_file(path)
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


def features_encoder(data_dir):
    """The sha256 of the encoder that simclr/main.py's manifest.json beside the features names
    (simclr.model.ENCODER_DIGEST), or None: features of other code, or exported before it was recorded."""
    path = Path(data_dir) / "manifest.json"
    try:
        digest = json.loads(path.read_text()).get(ENCODER_DIGEST)
    except (OSError, ValueError, AttributeError):
        return None
    return digest if isinstance(digest, str) else None


def check_same_scale(data, data_dir):
    """Refuse splits ({split: (C, I, F) tensor}) whose median feature norms differ by more than SCALE_LIMIT
    times: one encoder gives every split features of one scale (SimCLR on Mini-ImageNet: within a few
    percent), so a split rescaled, or encoded by another network, would be read by a model trained on
    another scale and every accuracy on it would be meaningless."""
    norms = {split: float(np.median(np.linalg.norm(array.reshape(-1, array.shape[-1]).double().numpy(), axis=1)))
             for split, array in data.items()}
    low, high = min(norms, key=norms.get), max(norms, key=norms.get)
    if norms[high] > SCALE_LIMIT * norms[low]:
        shown = ", ".join(f"{split} {norm:.3g}" for split, norm in norms.items())
        raise UserError(f"{data_dir}: the features of {low} and {high} are on different scales (median row norms "
                        f"{shown}: more than {SCALE_LIMIT}x apart); every split must come from one encoder, "
                        "unscaled")


def load_features(data_dir, splits=SPLITS):
    """{split: (C, I, F) tensor}; every split must have the same feature size F and scale (check_same_scale),
    and no class may appear twice (check_distinct_classes).  Splits without a labels file are said (one line)
    to be read in the authors' layout.  An export that has not finished, or whose files changed since it wrote
    them (folders.check_as_written), is refused."""
    check_as_written(data_dir, "--data-dir", ["manifest.json", *(f"{split}_{kind}.npy" for split in splits
                                                                  for kind in ("features", "labels"))])
    loaded = {split: load_split(data_dir, split) for split in splits}
    data = {split: array for split, (array, _) in loaded.items()}
    sizes = {split: array.shape[-1] for split, array in data.items()}
    if len(set(sizes.values())) > 1:
        raise UserError(f"feature sizes differ between splits in {data_dir}: {sizes}")
    check_manifest(data_dir, data)
    check_same_scale(data, data_dir)
    check_distinct_classes({f"{split}_features.npy": array for split, array in data.items()}, data_dir)
    label_free = [split for split, (_, labelled) in loaded.items() if not labelled]
    if label_free and distributed.is_main():
        print(f"no labels files in {data_dir}: the authors' layout is assumed, " + ", ".join(
            f"{split} {REFERENCE_CLASSES[split]} classes" for split in label_free)
              + f" of {REFERENCE_PER_CLASS} rows each, class-major")
    return data


def load_test_split(data_dir):
    """test_features.npy as (C, I, F), checked against the other splits in data_dir as in training."""
    present = [split for split in SPLITS
               if split == "test" or os.path.lexists(Path(data_dir) / f"{split}_features.npy")]
    return load_features(data_dir, present)["test"]
