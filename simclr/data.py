"""Mini-ImageNet images as data/prepare_mimgnet.py writes them: <split>_images.npy, uint8
(classes, per_class, 84, 84, 3), and manifest.json with the class names of every split."""
import json
import os
from pathlib import Path

import numpy as np
import torch

from metagmvae.runfiles import UserError, check_distinct_classes, check_regular_file, load_npy

SPLITS = ("train", "val", "test")
IMAGE_SHAPE = (84, 84, 3)
THUMBNAIL_BLOCK = 4  # images are compared as the means of 4 x 4 pixel blocks: 21 x 21 x 3 values
MIN_BRIGHTEST_BLOCK = 16  # of 255: a split whose brightest pixel block is darker holds scaled-down values


def _build_hint(data_dir):
    return f"build it with `python data/prepare_mimgnet.py --out {data_dir}`"


def load_class_names(data_dir, split):
    """The class names (synsets) of one split, in array order, from <data_dir>/manifest.json."""
    path = Path(data_dir) / "manifest.json"
    if not os.path.lexists(path):
        raise UserError(f"{path} not found; {_build_hint(data_dir)}")
    check_regular_file(path)
    try:
        names = json.loads(path.read_text())["splits"][split]["classes"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UserError(f"{path}: not a manifest of data/prepare_mimgnet.py (no class list for {split}: {e})") from None
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise UserError(f"{path}: the classes of {split} are not a list of names")
    return names


def load_image_array(data_dir, split, mmap_mode=None):
    """<split>_images.npy as a numpy uint8 array (C, I, 84, 84, 3); malformed files raise UserError.

    mmap_mode "r" maps the file instead of reading it (enough to check it).
    """
    path = Path(data_dir) / f"{split}_images.npy"
    if not os.path.lexists(path):  # a FIFO or a broken link is named as such by load_npy
        raise UserError(f"{path} not found; {_build_hint(data_dir)}")
    array = load_npy(path, mmap_mode)
    if array.ndim != 5 or array.shape[2:] != IMAGE_SHAPE or 0 in array.shape[:2]:
        raise UserError(f"{path} has shape {array.shape}; expected (classes, per_class, 84, 84, 3)")
    if array.dtype != np.uint8:
        raise UserError(f"{path} has dtype {array.dtype}; expected uint8")
    return array


def _check_names(data_dir, split, names, classes):
    if len(names) != classes:
        raise UserError(f"{Path(data_dir) / 'manifest.json'} names {len(names)} {split} classes but "
                        f"{split}_images.npy holds {classes}")


def check_split(data_dir, split):
    """Validate a split's array and class names without reading the images; returns (C, I)."""
    shape = load_image_array(data_dir, split, mmap_mode="r").shape[:2]
    _check_names(data_dir, split, load_class_names(data_dir, split), shape[0])
    return shape


def thumbnails(array):
    """(C, I, 84, 84, 3) uint8 images -> (C, I, 21, 21, 3) float32 means of THUMBNAIL_BLOCK-square pixel
    blocks, class by class (no float copy of all the images: 5 GB for Mini-ImageNet).  Exact: the block
    sums fit uint16; summed over rows, then over columns (contiguous slabs: 3.6x faster than one mean)."""
    side, block = IMAGE_SHAPE[0] // THUMBNAIL_BLOCK, THUMBNAIL_BLOCK

    def block_means(images):  # (I, 84, 84, 3) -> (I, 21, 21, 3)
        rows = images.reshape(len(images), side, block, -1).sum(2, dtype=np.uint16)  # (I, 21, 84 * 3)
        return rows.reshape(len(images), side, side, block, 3).sum(3, dtype=np.uint16) / np.float32(block ** 2)
    return np.stack([block_means(images) for images in array])


def check_full_range(thumbnails_of_split, path):
    """Refuse a split (its thumbnails (C, I, 21, 21, 3)) whose brightest pixel block averages below
    MIN_BRIGHTEST_BLOCK of 255: images of values 0-1 (or otherwise scaled down) stored as uint8, which every
    later step would read as nearly black."""
    brightest = float(thumbnails_of_split.max())
    if brightest < MIN_BRIGHTEST_BLOCK:
        raise UserError(f"{path}: its brightest {THUMBNAIL_BLOCK}x{THUMBNAIL_BLOCK}-pixel block averages "
                        f"{brightest:.3g} of 255: images of values 0-1, or scaled down, in uint8? Expected 8-bit "
                        "images in 0-255")


def check_distinct_image_classes(thumbnails_by_file, where):
    """check_distinct_classes on images compared as their thumbnails ({file name: (C, I, 21, 21, 3)}), which
    its messages say after `where`."""
    check_distinct_classes(thumbnails_by_file, f"{where} (images compared as {THUMBNAIL_BLOCK}x{THUMBNAIL_BLOCK}"
                                               "-pixel block means)")


def load_split(data_dir, split):
    """One split, flattened class-major.

    Returns images (N, 3, 84, 84) uint8 (a channels-first view of the file's (N, 84, 84, 3) array,
    not copied), labels (N,) int64 (row n shows class n // per_class) and the C class names.
    """
    array = load_image_array(data_dir, split)
    names = load_class_names(data_dir, split)
    classes, per_class = array.shape[:2]
    _check_names(data_dir, split, names, classes)
    images = torch.from_numpy(array).flatten(0, 1).permute(0, 3, 1, 2)  # (N, 84, 84, 3) -> (N, 3, 84, 84)
    labels = torch.arange(classes).repeat_interleave(per_class)
    return images, labels, names
