"""A synthetic image set in the Mini-ImageNet layout, to run the whole pipeline without ImageNet.

Each class is one (shape, texture) pair, e.g. a ring filled with a checkerboard. Every image draws its own
position, size, rotation, texture period and phase, colours (two for the texture, one for the background)
and pixel noise, so colour says nothing about the class and raw pixels are a weak classifier; the class
lives in the outline and the texture, which SimCLR's augmentations (crops, flips, colour jitter, grayscale)
keep. No texture is the mirror image of another and every shape is left-right symmetric, so a horizontal
flip never turns one class into another; no two textures differ by frequency alone, which crops change.

Writes <out>/images/<synset><index>.jpg (n0000000100000001.jpg: fake synset n00000001, image 1) and
<out>/{train,val,test}.csv (header filename,label) as the Ravi & Larochelle split files; files of the
same names that this project wrote are replaced. A rebuild removes the split files first and writes them
after the last image: a build stopped midway (a kill, a Ctrl-C) leaves no split file, so no later stage reads
old and new images as one set. The class of every synset is printed.

    python data/synthetic_mimgnet.py --out data/synthetic && python data/prepare_mimgnet.py --out data/synthetic
"""
import argparse
import csv
import io
import itertools
import sys
from pathlib import Path

if __name__ == "__main__":  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from metagmvae.startup import quiet_ctrl_c  # noqa: E402  (torch-free: first)
quiet_ctrl_c(__name__)  # a Ctrl-C from here on: one line, exit code 130

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from metagmvae.cli import check_positive, check_seed  # noqa: E402
from metagmvae.folders import OutputFolder  # noqa: E402
from metagmvae.runfiles import UserError, check_fits_in_memory, exit_on_user_error  # noqa: E402

SPLITS = ("train", "val", "test")
NOISE_STD = 12.0  # per pixel and channel, in uint8 levels
JPEG_QUALITY = 90
DATASET_KIND = "synthetic Mini-ImageNet images"  # the kind of folder --out is, in its record

# Shapes as masks of (u, v): pixel coordinates relative to the centre, rotated and divided by the radius.
SHAPES = {
    "circle": lambda u, v: u ** 2 + v ** 2 <= 1,
    "ring": lambda u, v: (u ** 2 + v ** 2 <= 1) & (u ** 2 + v ** 2 >= 0.4),
    "square": lambda u, v: np.maximum(abs(u), abs(v)) <= 0.8,
    "diamond": lambda u, v: abs(u) + abs(v) <= 1,
    "cross": lambda u, v: (np.minimum(abs(u), abs(v)) <= 0.3) & (np.maximum(abs(u), abs(v)) <= 1),
    "triangle": lambda u, v: (v <= 0.6) & (abs(u) <= 0.6 * (v + 1)),  # apex up, base 1.9 radii wide
}


def _wave(t, phase):
    """Stripes of half a period each: (...) -> bool."""
    return np.sin(2 * np.pi * (t + phase)) > 0


def _cell(t, phase):
    """Position within a period, in [-0.5, 0.5)."""
    return (t + phase) % 1 - 0.5


# Textures as patterns of (x, y, phase): image-axis coordinates relative to the centre, in periods.
TEXTURES = {
    "vertical-stripes": lambda x, y, s: _wave(x, s),
    "horizontal-stripes": lambda x, y, s: _wave(y, s),
    "diagonal-stripes": lambda x, y, s: _wave((x + y) / np.sqrt(2), s),
    "checkerboard": lambda x, y, s: _wave(x, s) ^ _wave(y, s),
    "dots": lambda x, y, s: _cell(x, s) ** 2 + _cell(y, s) ** 2 < 0.08,
    "grid": lambda x, y, s: (abs(_cell(x, s)) > 0.35) | (abs(_cell(y, s)) > 0.35),
    "concentric": lambda x, y, s: _wave(np.hypot(x, y), s),
    "plain": lambda x, y, s: np.ones_like(x, dtype=bool),
}
MAX_CLASSES = len(SHAPES) * len(TEXTURES)


def class_specs(num_classes, seed):
    """The first num_classes (shape, texture) pairs of a seeded permutation of all pairs."""
    if num_classes > MAX_CLASSES:
        raise UserError(f"{num_classes} classes asked for, but there are only {MAX_CLASSES} (shape, texture) pairs")
    pairs = list(itertools.product(SHAPES, TEXTURES))
    return [pairs[i] for i in np.random.default_rng(seed).permutation(MAX_CLASSES)[:num_classes]]


def image_colours(rng, n):
    """(n, 3, 3) colours: texture-on, texture-off, background; the first is the one farther from the
    background in brightness (a plain shape is filled with it), the texture's two differ in every channel."""
    dark, light = rng.uniform(0, 110, (n, 3)), rng.uniform(145, 255, (n, 3))
    background = rng.uniform(0, 255, (n, 3))
    dark_first = abs(dark.mean(1) - background.mean(1)) > abs(light.mean(1) - background.mean(1))
    on = np.where(dark_first[:, None], dark, light)
    off = np.where(dark_first[:, None], light, dark)
    return np.stack([on, off, background], axis=1)


def render_class(shape, texture, n, size, rng):
    """n images of one class: (n, H, W, 3) uint8 for size (H, W); every random draw comes from `rng`."""
    height, width = size
    side = min(size)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)  # (H, W)

    def draw(low, high):
        return rng.uniform(low, high, (n, 1, 1))

    x, y = xx - draw(0.35, 0.65) * width, yy - draw(0.35, 0.65) * height  # (n, H, W), from the centre
    radius, angle = draw(0.22, 0.36) * side, draw(-0.2, 0.2)
    u = (x * np.cos(angle) + y * np.sin(angle)) / radius
    v = (y * np.cos(angle) - x * np.sin(angle)) / radius
    period = side / draw(7, 10)
    inside = SHAPES[shape](u, v)[..., None]  # (n, H, W, 1)
    on = TEXTURES[texture](x / period, y / period, draw(0, 1))[..., None]
    colours = image_colours(rng, n)[:, :, None, None, :]  # (n, 3, 1, 1, 3)
    pixels = np.where(inside, np.where(on, colours[:, 0], colours[:, 1]), colours[:, 2])  # (n, H, W, 3)
    pixels = pixels + rng.normal(0, NOISE_STD, pixels.shape)
    return np.clip(np.rint(pixels), 0, 255).astype(np.uint8)


def split_csv(rows):
    """A split CSV's text: the header, then (filename, label) rows."""
    buffer = io.StringIO()
    csv.writer(buffer).writerows([["filename", "label"], *rows])
    return buffer.getvalue()


def image_name(k, i):
    """The file name of image i (from 1) of class k (from 1): synset n0000000k, then i in 8 digits."""
    return f"n{k:08d}{i:08d}.jpg"


def write_dataset(out, num_classes, per_class, size, seed=0):
    """Write <out>/images/*.jpg and <out>/<split>.csv; num_classes: {split: classes}; size: (H, W).

    Classes are numbered across splits in SPLITS order (synsets n00000001, ...); class k's images come
    from a generator seeded by (seed, k). Returns {split: [(synset, shape, texture), ...]} in CSV order.
    """
    specs = iter(class_specs(sum(num_classes.values()), seed))
    layout, k = {}, 0
    with OutputFolder(out, DATASET_KIND, "--out") as folder:
        split_files = [f"{split}.csv" for split in SPLITS]
        for name in [*split_files, *(f"images/{image_name(k, i)}" for k in range(1, sum(num_classes.values()) + 1)
                                     for i in range(1, per_class + 1))]:
            folder.check_replaceable(name)  # a file of the user's among them is refused before anything is removed
        for name in split_files:  # an earlier build's go first: a rebuild stopped midway leaves no split file
            folder.remove(name)  # that lists its old and new images together
        rows = {split: [] for split in SPLITS}  # the split files' rows [name, synset]
        with folder.one_record_write():
            for split in SPLITS:
                layout[split] = []
                for _ in range(num_classes[split]):
                    k += 1
                    synset, (shape, texture) = f"n{k:08d}", next(specs)
                    images = render_class(shape, texture, per_class, size, np.random.default_rng([seed, k]))
                    for i, image in enumerate(images, start=1):
                        name = image_name(k, i)
                        with folder.writing(f"images/{name}") as f:
                            Image.fromarray(image).save(f, format="JPEG", quality=JPEG_QUALITY)
                        rows[split].append([name, synset])
                    layout[split].append((synset, shape, texture))
            for split in SPLITS:  # once every image is written
                folder.write_text(f"{split}.csv", split_csv(rows[split]))
    return layout


def check_args(args):
    check_positive(args, ["train_classes", "val_classes", "test_classes", "per_class"])
    check_seed(args.seed)
    if len(args.size) > 2 or min(args.size) < 8:
        raise UserError(f"--size takes one or two values of at least 8 pixels (got {args.size})")
    height, width = args.size[0], args.size[-1]
    check_fits_in_memory(8 * args.per_class * height * width * 3,  # render_class: (n, H, W, 3) float64
                         f"--per-class {args.per_class} --size {height} {width}: the images of one class as rendered")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "synthetic",
                   help="output folder for images/ and the split CSVs")
    p.add_argument("--train-classes", type=int, default=16, help="classes of the train split")
    p.add_argument("--val-classes", type=int, default=8, help="classes of the val split")
    p.add_argument("--test-classes", type=int, default=8, help="classes of the test split")
    p.add_argument("--per-class", type=int, default=60, help="images per class")
    p.add_argument("--size", type=int, nargs="+", default=[84], help="image height and width (one value: square)")
    p.add_argument("--seed", type=int, default=0, help="seeds the class choice and every image")
    args = p.parse_args(argv)
    with exit_on_user_error(p.prog):
        check_args(args)
        num_classes = {"train": args.train_classes, "val": args.val_classes, "test": args.test_classes}
        layout = write_dataset(args.out, num_classes, args.per_class, (args.size[0], args.size[-1]), args.seed)
    for split, classes in layout.items():
        print(f"{split}: " + ", ".join(f"{synset} {shape}/{texture}" for synset, shape, texture in classes))
    print(f"wrote {sum(map(len, layout.values()))} classes x {args.per_class} images to {args.out}")


if __name__ == "__main__":
    main()
