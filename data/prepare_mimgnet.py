"""Build the Mini-ImageNet arrays <split>_images.npy from the images and the Ravi & Larochelle split CSVs.

Each image is converted to RGB and resized to 84x84 with Pillow's Image.BILINEAR (Pillow widens the
bilinear filter when it shrinks, i.e. it antialiases; the aspect ratio is not kept). Every split is
written as uint8 (classes, per_class, 84, 84, 3): classes in the order they first appear in the CSV,
images in CSV order within a class. manifest.json lists the class names (synsets), the per-class count,
the source CSVs and any skipped image (docs/method.md). Images are opened upright in 8 bits
(metagmvae/imagefolders.py open_image). A class or an image file listed in two splits, and a class whose files
are those of another class under other names, are refused before anything is decoded; a class whose images are
another's as the arrays hold them (saved again as other bytes: copies or near-copies of their 4x4-pixel block
means, metagmvae/copies.py) once every split is decoded, before any file is written.

    python data/prepare_mimgnet.py      # reads data/imgnet/{images/,train.csv,...}, writes data/imgnet/arrays
    python data/prepare_mimgnet.py --images DIR --splits DIR --out data/imgnet/arrays --skip-bad
"""
import argparse
import csv
import hashlib
import sys
from contextlib import ExitStack
from pathlib import Path

if __name__ == "__main__":  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from metagmvae.startup import quiet_ctrl_c  # noqa: E402  (torch-free: first)
quiet_ctrl_c(__name__)  # a Ctrl-C from here on: one line, exit code 130

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402
from tqdm import tqdm  # noqa: E402

from metagmvae.cli import HelpFormatter  # noqa: E402
from metagmvae.folders import OutputFolder, canonical_json, check_outside_inputs  # noqa: E402
from metagmvae.imagefolders import open_image  # noqa: E402
from metagmvae.runfiles import UserError, check_regular_file, exit_on_user_error  # noqa: E402
from simclr.data import check_distinct_image_classes, thumbnails  # noqa: E402

DEFAULT_SOURCE = Path(__file__).resolve().parent / "imgnet"  # images/ and the split CSVs
DEFAULT_OUT = DEFAULT_SOURCE / "arrays"
BUILD_KIND = "Mini-ImageNet arrays"  # the kind of folder --out is, in its record (metagmvae/folders.py)
SPLITS = ("train", "val", "test")
IMAGE_SIZE = 84
HEADER = ["filename", "label"]
PREPROCESSING = ("Pillow: Image.open -> upright (EXIF orientation), 8 bits per channel, transparency over white -> "
                 "convert('RGB') -> "
                 f"resize(({IMAGE_SIZE}, {IMAGE_SIZE}), Image.BILINEAR) (antialiased when shrinking; aspect ratio not "
                 "kept) -> uint8 (H, W, RGB)")


def read_split_csv(path):
    """Parse a split CSV (header `filename,label`) into {label: [filename, ...]}.

    Labels keep the order of their first row and file names their row order; malformed rows raise
    UserError naming the file and line.
    """
    path = Path(path)
    check_regular_file(path)
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            rows = list(csv.reader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise UserError(f"{path}: cannot read the split CSV ({e})") from None
    if not rows or [c.strip() for c in rows[0]] != HEADER:
        found = ",".join(rows[0]) if rows else "an empty file"
        raise UserError(f"{path}:1: expected the header {','.join(HEADER)}, found {found!r}")
    classes, seen = {}, {}
    for line, row in enumerate(rows[1:], start=2):
        if not row:
            continue  # blank line
        if len(row) != len(HEADER) or not all(c.strip() for c in row):
            raise UserError(f"{path}:{line}: expected 2 non-empty columns filename,label, found {row}")
        filename, label = (c.strip() for c in row)
        if Path(filename).is_absolute() or ".." in Path(filename).parts:
            raise UserError(f"{path}:{line}: {filename} is not a file name inside --images (absolute, or with '..')")
        filename = Path(filename).as_posix()  # "./a.jpg" and "a//a.jpg" name "a.jpg", "a/a.jpg"
        if filename in seen:
            raise UserError(f"{path}:{line}: {filename} is listed twice (first on line {seen[filename]})")
        seen[filename] = line
        classes.setdefault(label, []).append(filename)
    if not classes:
        raise UserError(f"{path}: no images listed")
    return classes


def images_per_class(classes, path):
    """The common number of images of every class; unequal counts raise UserError naming a class."""
    counts = {label: len(files) for label, files in classes.items()}
    first, expected = next(iter(counts.items()))
    for label, count in counts.items():
        if count != expected:
            raise UserError(f"{path}: class {label} has {count} images but {first} has {expected}; "
                            "every class of a split needs the same number")
    return expected


def check_disjoint_splits(csvs):
    """Refuse a class or an image file listed in two splits ({split: {label: [files]}}): a test split that
    shares them with training measures nothing."""
    first_split = {}  # ("class" or "image", name) -> the first split listing it
    for split, classes in csvs.items():
        names = [("class", label) for label in classes] + [("image", f) for files in classes.values() for f in files]
        for what, name in names:
            other = first_split.setdefault((what, name), split)
            if other != split:
                raise UserError(f"{what} {name} is listed in both {other}.csv and {split}.csv; "
                                "the splits must not share classes or images")


def check_distinct_contents(images_dir, csvs):
    """Refuse two classes ({split: {label: [files]}}) whose files hold the same images byte for byte, in any
    order and under any names: a test class copied from a training or validation class measures nothing,
    and two equal classes of an episode cannot be told apart.  (ImageNet holds some single images under
    two labels; those are kept, as in the dataset.)  Missing or not regular files are left to the loading."""
    first_seen = {}  # sorted SHA-256s of a class's files -> (split, label)
    for split, classes in csvs.items():
        for label, files in classes.items():
            paths = [images_dir / name for name in files]
            try:
                contents = tuple(sorted(hashlib.sha256(p.read_bytes()).digest() for p in paths if p.is_file()))
            except OSError as e:
                raise UserError(f"{images_dir}: cannot read an image of class {label} ({e.strerror})") from None
            other_split, other_label = first_seen.setdefault(contents, (split, label))
            if (other_split, other_label) != (split, label):
                raise UserError(f"class {label} of {split}.csv holds the images of class {other_label} of "
                                f"{other_split}.csv (the same {len(contents)} files, byte for byte, under other "
                                "names); every class must be a different one")


def load_image(path):
    """One image file -> (84, 84, 3) uint8, opened upright in 8 bits (metagmvae.imagefolders.open_image); a
    missing, undecodable or not regular file (a FIFO, a device, a broken link) raises UserError."""
    check_regular_file(path)
    im = open_image(path, path, "RGB").resize((IMAGE_SIZE, IMAGE_SIZE), Image.BILINEAR)
    return np.asarray(im, dtype=np.uint8)


def _replacement(bad, good):
    """Index of the first readable image after `bad` in CSV order, wrapping to the first one."""
    return next((g for g in good if g > bad), good[0])


def load_class(images_dir, label, files, skip_bad, progress):
    """The images of one class -> ((I, 84, 84, 3) uint8, skipped records).

    With skip_bad an unreadable image is replaced by the class's next readable one (see _replacement).
    """
    array = np.empty((len(files), IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    bad = {}
    for i, name in enumerate(files):
        try:
            array[i] = load_image(images_dir / name)
        except UserError as e:
            if not skip_bad:
                raise
            bad[i] = str(e)
            progress.write(f"skipped {e}")
        progress.update()
    good = [i for i in range(len(files)) if i not in bad]
    if bad and not good:
        raise UserError(f"class {label}: none of its {len(files)} images is readable")
    skipped = []
    for i, reason in bad.items():
        j = _replacement(i, good)
        array[i] = array[j]
        skipped.append({"file": files[i], "class": label, "reason": reason, "replaced_by": files[j]})
    return array, skipped


def load_split(images_dir, split, classes, skip_bad=False):
    """{label: [files]} -> ((classes, per_class, 84, 84, 3) uint8, skipped records)."""
    per_class = len(next(iter(classes.values())))
    array = np.empty((len(classes), per_class, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    skipped = []
    with tqdm(total=array.shape[0] * per_class, desc=split, unit="img", disable=None) as progress:
        for c, (label, files) in enumerate(classes.items()):
            array[c], bad = load_class(images_dir, label, files, skip_bad, progress)
            skipped += bad
    return array, skipped


def check_files_exist(images_dir, csvs):
    """Fail fast, before the slow decoding, on the first image file that is missing."""
    for split, classes in csvs.items():
        for files in classes.values():
            for name in files:
                check_regular_file(images_dir / name)
                if not (images_dir / name).is_file():
                    found = "a folder, not an image" if (images_dir / name).is_dir() else "image not found"
                    raise UserError(f"{images_dir / name}: {found} (listed in {split}.csv); "
                                    "pass --skip-bad to replace unreadable images")


def prepare_mimgnet(images_dir, splits_dir, out, skip_bad=False):
    """Write <split>_images.npy for train/val/test and manifest.json into `out`; return the manifest.

    All CSVs are checked first; each split is then decoded into a temporary file, and the files are
    renamed into place only once every split succeeded, so a failure leaves no partial output.
    """
    images_dir, splits_dir, out = Path(images_dir), Path(splits_dir), Path(out)
    if not images_dir.is_dir():
        raise UserError(f"--images {images_dir}: {'a file, not a folder' if images_dir.exists() else 'no such folder'}")
    # --splits may hold --out: the default layout is data/imgnet/{train,val,test}.csv beside data/imgnet/arrays;
    # its CSV files are only read
    check_outside_inputs(out, "--out", [("--images", images_dir)])
    OutputFolder(out, BUILD_KIND, "--out").check(["manifest.json", *(f"{split}_images.npy" for split in SPLITS)])
    csv_paths = {split: splits_dir / f"{split}.csv" for split in SPLITS}
    csvs = {split: read_split_csv(path) for split, path in csv_paths.items()}
    counts = {split: images_per_class(classes, csv_paths[split]) for split, classes in csvs.items()}
    check_disjoint_splits(csvs)
    if not skip_bad:
        check_files_exist(images_dir, csvs)
    check_distinct_contents(images_dir, csvs)
    manifest = {"images": str(images_dir.resolve()), "preprocessing": PREPROCESSING, "image_size": IMAGE_SIZE,
                "splits": {}}
    thumbnails_of = {}  # {file name: (C, I, 21, 21, 3) block means}, compared once every split is read
    with OutputFolder(out, BUILD_KIND, "--out") as folder, ExitStack() as stack:
        # the files are renamed into place on exit, in reverse order: the manifest last
        manifest_file = stack.enter_context(folder.writing("manifest.json"))
        for split, classes in csvs.items():
            array, skipped = load_split(images_dir, split, classes, skip_bad)
            np.save(stack.enter_context(folder.writing(f"{split}_images.npy")), array)
            thumbnails_of[f"{split}_images.npy"] = thumbnails(array)
            manifest["splits"][split] = {
                "file": f"{split}_images.npy", "csv": str(csv_paths[split].resolve()), "shape": list(array.shape),
                "classes": list(classes), "per_class": counts[split], "skipped": skipped,
            }
            del array  # keep one split in memory at a time
        check_distinct_image_classes(thumbnails_of, f"the build for {out}")
        manifest_file.write(canonical_json(manifest))
    return manifest


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=HelpFormatter)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help="output folder for <split>_images.npy and manifest.json")
    parser.add_argument("--images", type=Path, default=DEFAULT_SOURCE / "images", help="folder holding the image files")
    parser.add_argument("--splits", type=Path, default=DEFAULT_SOURCE,
                        help="folder holding train.csv, val.csv, test.csv")
    parser.add_argument("--skip-bad", action="store_true",
                        help="replace a missing or unreadable image by another image of its class (listed in the "
                             "manifest) instead of stopping")
    args = parser.parse_args(argv)
    with exit_on_user_error(parser.prog):
        manifest = prepare_mimgnet(args.images, args.splits, args.out, args.skip_bad)
    for split, info in manifest["splits"].items():
        print(f"{split}: {len(info['classes'])} classes x {info['per_class']} images -> {info['shape']}, "
              f"{len(info['skipped'])} replaced")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
