"""A procedural Omniglot-like data set, written in the exact layout of data/prepare_omniglot.py.

An alphabet is a stroke style: a few stroke templates (polylines with corners, arcs, waves), how many
strokes its characters have, how often a stroke starts on an earlier one, and a pen width. A character
is a few of its alphabet's templates, each perturbed, scaled, rotated and placed in the box [-1, 1]^2.
Each of its drawings is one drawer's attempt: noise on every control point and stroke, a pen width of its
own and a small affine change (rotation, scale, shear, translation). Drawings are rendered white-on-black
at 105x105 (Omniglot's size), resized to 28x28 with Lanczos filtering and scaled to [0, 1], ink = 1, as
the real images are. The split, the four rotations as classes and the files come from omniglot_build.py.

    python data/synthetic_omniglot.py --out data/synthetic_omniglot --characters 300
"""
import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

if __name__ == "__main__":  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from metagmvae.startup import quiet_ctrl_c  # noqa: E402  (torch-free: first)
quiet_ctrl_c(__name__)  # a Ctrl-C from here on: one line, exit code 130

import numpy as np  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402

from data.omniglot_build import (IMAGE_SIZE, SPLITS, check_build_folder, split_characters, with_rotations,  # noqa: E402
                                 write_build)
from metagmvae.cli import check_seed  # noqa: E402
from metagmvae.runfiles import UserError, check_fits_in_memory, exit_on_user_error  # noqa: E402

RENDER_SIZE = 105  # Omniglot's drawings are 105x105
HALF_EXTENT = 0.36  # the character box [-1, 1]^2 spans 2 * 0.36 of the canvas side
CHARACTERS_PER_ALPHABET = 32  # Omniglot: 1623 characters in 50 alphabets
TEMPLATES_PER_ALPHABET = 6
SAMPLES_PER_SEGMENT = 8  # points of a smooth stroke between two control points
# Drawer variation, in units of the half box: control-point and whole-stroke noise, then the affine.
POINT_JITTER, STROKE_JITTER = 0.05, 0.04
ROTATION_STD, SCALE_STD, SHEAR_STD, SHIFT_STD, WIDTH_STD = 0.08, 0.08, 0.08, 0.08, 0.15


@dataclass
class Alphabet:
    """A stroke style shared by the characters of one alphabet."""
    templates: list        # [(control points (P, 2), smooth)]
    strokes: tuple         # (fewest, most) strokes per character
    connect: float         # probability that a stroke starts on an earlier one
    right_angles: bool     # templates placed at multiples of 90 degrees (else any angle)
    width: float           # pen width in pixels at RENDER_SIZE


def catmull_rom(ctrl):
    """Smooth curve through the control points.  (..., P, 2) -> (..., (P - 1) * SAMPLES_PER_SEGMENT + 1, 2)."""
    padded = np.concatenate([ctrl[..., :1, :], ctrl, ctrl[..., -1:, :]], axis=-2)  # end points doubled
    t = np.linspace(0, 1, SAMPLES_PER_SEGMENT, endpoint=False)
    # Uniform Catmull-Rom basis for the four points p0..p3 around each segment p1 -> p2.
    basis = 0.5 * np.stack([-t ** 3 + 2 * t ** 2 - t, 3 * t ** 3 - 5 * t ** 2 + 2,
                            -3 * t ** 3 + 4 * t ** 2 + t, t ** 3 - t ** 2])  # (4, T)
    P = ctrl.shape[-2]
    windows = np.stack([padded[..., i:i + P - 1, :] for i in range(4)])  # (4, ..., P - 1, 2)
    segments = np.einsum("jt,j...sd->...std", basis, windows)  # (..., P - 1, T, 2)
    curve = segments.reshape(*ctrl.shape[:-2], -1, 2)
    return np.concatenate([curve, ctrl[..., -1:, :]], axis=-2)


def random_template(rng, curved, max_corners):
    """One stroke shape centred on 0: an arc or a wave (smooth), or a polyline with 1 to max_corners - 1 turns."""
    if curved and rng.random() < 0.5:
        start, sweep = rng.uniform(0, 2 * np.pi), rng.uniform(0.6, 1.6) * np.pi
        angle = start + np.linspace(0, sweep, 5)
        ctrl = 0.5 * np.stack([np.cos(angle), np.sin(angle)], axis=1)
    elif curved:
        x = np.linspace(-0.6, 0.6, 5)
        ctrl = np.stack([x, rng.uniform(0.15, 0.35) * np.sin(rng.uniform(1, 2.5) * np.pi * x)], axis=1)
    else:
        turns = rng.uniform(0, 2 * np.pi, rng.integers(2, max_corners + 1))
        turns = np.round(turns / (np.pi / 4)) * (np.pi / 4)  # pen directions at multiples of 45 degrees
        steps = rng.uniform(0.5, 1.0, (len(turns), 1)) * np.stack([np.cos(turns), np.sin(turns)], axis=1)
        ctrl = np.concatenate([np.zeros((1, 2)), np.cumsum(steps, axis=0)])
    return ctrl - ctrl.mean(0), bool(curved)


def make_alphabet(rng):
    """A random stroke style (see Alphabet)."""
    curve_share, max_corners = rng.uniform(0.15, 0.85), int(rng.integers(2, 5))
    templates = [random_template(rng, rng.random() < curve_share, max_corners) for _ in range(TEMPLATES_PER_ALPHABET)]
    fewest = int(rng.integers(1, 3))
    return Alphabet(templates, (fewest, fewest + int(rng.integers(1, 3))), rng.uniform(0.3, 0.8),
                    bool(rng.random() < 0.5), rng.uniform(3.0, 4.5))


def rotation(angle):
    """(..., 2, 2) rotation matrices for angles (...)."""
    c, s = np.cos(angle), np.sin(angle)
    return np.stack([np.stack([c, -s], -1), np.stack([s, c], -1)], -2)


def make_character(rng, alphabet):
    """A character: [(control points (P, 2), smooth)] of its strokes, fitted into the box [-1, 1]^2."""
    strokes = []
    for _ in range(rng.integers(alphabet.strokes[0], alphabet.strokes[1] + 1)):
        ctrl, smooth = alphabet.templates[rng.integers(len(alphabet.templates))]
        angle = rng.integers(4) * np.pi / 2 if alphabet.right_angles else rng.uniform(0, 2 * np.pi)
        ctrl = (ctrl + rng.normal(0, 0.08, ctrl.shape)) @ rotation(angle).T * rng.uniform(0.6, 1.2)
        if strokes and rng.random() < alphabet.connect:  # start on a point of an earlier stroke
            earlier = strokes[rng.integers(len(strokes))][0]
            ctrl = ctrl - ctrl[0] + earlier[rng.integers(len(earlier))]
        else:
            ctrl = ctrl + rng.uniform(-0.6, 0.6, 2)
        strokes.append((ctrl, smooth))
    points = np.concatenate([c for c, _ in strokes])
    low, high = points.min(0), points.max(0)
    scale = rng.uniform(1.5, 2.0) / max((high - low).max(), 1e-6)  # largest side 1.5 to 2 of the box's 2
    return [((c - (low + high) / 2) * scale, smooth) for c, smooth in strokes]


def drawer_affines(rng, n):
    """(n, 2, 2) small random linear maps (rotation, per-axis scale, shear) and (n, 2) shifts."""
    scale = np.exp(rng.normal(0, SCALE_STD, (n, 2)))
    shear = np.eye(2) + rng.normal(0, SHEAR_STD, n)[:, None, None] * np.array([[0, 1], [0, 0]])
    linear = rotation(rng.normal(0, ROTATION_STD, n)) @ shear * scale[:, None, :]
    return linear, rng.normal(0, SHIFT_STD, (n, 2))


def draw_character(rng, strokes, width, drawings):
    """`drawings` jittered renderings of one character: (drawings, 28, 28) float32 in [0, 1], ink = 1."""
    linear, shift = drawer_affines(rng, drawings)
    widths = width * np.exp(rng.normal(0, WIDTH_STD, drawings))
    paths = []  # per stroke: (drawings, points, 2) in pixels
    for ctrl, smooth in strokes:
        noisy = (ctrl + rng.normal(0, POINT_JITTER, (drawings, *ctrl.shape))
                 + rng.normal(0, STROKE_JITTER, (drawings, 1, 2)))
        line = catmull_rom(noisy) if smooth else noisy
        line = line @ linear.transpose(0, 2, 1) + shift[:, None]
        paths.append((0.5 + HALF_EXTENT * line * np.array([1, -1])) * RENDER_SIZE)  # y axis points down
    images = np.empty((drawings, IMAGE_SIZE, IMAGE_SIZE), dtype=np.float32)
    for i in range(drawings):
        canvas = Image.new("L", (RENDER_SIZE, RENDER_SIZE), 0)
        pen = ImageDraw.Draw(canvas)
        radius = widths[i] / 2
        for path in paths:
            points = [tuple(p) for p in path[i]]
            pen.line(points, fill=255, width=max(1, round(widths[i])), joint="curve")
            for x, y in (points[0], points[-1]):  # round pen tips
                pen.ellipse((x - radius, y - radius, x + radius, y + radius), fill=255)
        small = canvas.resize((IMAGE_SIZE, IMAGE_SIZE), Image.LANCZOS)
        images[i] = np.asarray(small, dtype=np.float32) / 255.0
    return images


def default_alphabets(num_characters):
    return max(1, round(num_characters / CHARACTERS_PER_ALPHABET))


def generate_characters(num_characters, drawings=20, seed=0, num_alphabets=None):
    """(num_characters, drawings, 28, 28) float32 in [0, 1], ink = 1; the same for the same arguments.

    Characters are spread over `num_alphabets` (default: one per 32 characters, as Omniglot) in
    contiguous blocks; alphabet a and character c draw from generators seeded by (seed, a) and (seed, c).
    """
    num_alphabets = default_alphabets(num_characters) if num_alphabets is None else num_alphabets
    if min(num_characters, drawings, num_alphabets) < 1:
        raise UserError("characters, drawings and alphabets must be positive")
    alphabets = [make_alphabet(np.random.default_rng([seed, 0, a])) for a in range(num_alphabets)]
    images = np.empty((num_characters, drawings, IMAGE_SIZE, IMAGE_SIZE), dtype=np.float32)
    for c in range(num_characters):
        rng = np.random.default_rng([seed, 1, c])
        alphabet = alphabets[c * num_alphabets // num_characters]
        images[c] = draw_character(rng, make_character(rng, alphabet), alphabet.width, drawings)
    return images


def build_synthetic_omniglot(out, num_characters, drawings=20, seed=0, split=None, num_alphabets=None,
                             flag="--out"):
    """Write train/val/test.npy ((4 * characters, drawings, 28, 28, 1) float32) and manifest.json.

    The character split (default: Omniglot's proportions, or `split` = three counts) is seeded by `seed`
    too; `flag` names `out` in messages. Returns the manifest.
    """
    num_alphabets = default_alphabets(num_characters) if num_alphabets is None else num_alphabets
    # at least the drawings (C, D, 28, 28) float32 and the four rotations of each: 5 x their bytes
    check_fits_in_memory(5 * 4 * num_characters * drawings * IMAGE_SIZE * IMAGE_SIZE,
                         f"--characters {num_characters} --drawings {drawings}: the drawings and their rotations")
    parts = split_characters(num_characters, seed, split)  # checks `split` and `out` before generating
    check_build_folder(out, flag)
    images = generate_characters(num_characters, drawings, seed, num_alphabets)
    arrays = {name: with_rotations(images[idx]) for name, idx in zip(SPLITS, parts)}
    names = [f"alphabet{c * num_alphabets // num_characters + 1:02d}/character{c + 1:04d}"
             for c in range(num_characters)]
    manifest = {
        "synthetic": True,
        "generator": {"script": "data/synthetic_omniglot.py", "characters": num_characters, "drawings": drawings,
                      "seed": seed, "alphabets": num_alphabets, "render_size": RENDER_SIZE,
                      "point_jitter": POINT_JITTER, "stroke_jitter": STROKE_JITTER,
                      "rotation_std": ROTATION_STD, "scale_std": SCALE_STD, "shear_std": SHEAR_STD,
                      "shift_std": SHIFT_STD, "width_std": WIDTH_STD},
        "seed": seed,
        "split_counts": {name: len(idx) for name, idx in zip(SPLITS, parts)},
        "characters": {name: [names[i] for i in idx] for name, idx in zip(SPLITS, parts)},
        "shapes": {name: list(a.shape) for name, a in arrays.items()},
        "preprocessing": (f"rendered white on black at {RENDER_SIZE}x{RENDER_SIZE} -> {IMAGE_SIZE}x{IMAGE_SIZE} "
                          "with Pillow LANCZOS -> float32 pixel/255 (ink = 1.0); class 4*i + r of a split is its "
                          "character i rotated by 90*r degrees counter-clockwise (np.rot90)"),
    }
    write_build(out, arrays, manifest, flag)
    return manifest


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--out", type=Path, required=True,
                        help="output folder for train/val/test.npy and manifest.json")
    parser.add_argument("--characters", type=int, default=300, help="characters to generate (each gives 4 classes)")
    parser.add_argument("--drawings", type=int, default=20, help="drawings per character")
    parser.add_argument("--alphabets", type=int, default=None,
                        help=f"alphabets (stroke styles); None = one per {CHARACTERS_PER_ALPHABET} characters")
    parser.add_argument("--seed", type=int, default=0, help="seeds the characters, the drawings and the split")
    parser.add_argument("--split", type=int, nargs=3, metavar=("NTR", "NVA", "NTE"),
                        help="train/val/test character counts (None = proportions 1200:100:323)")
    args = parser.parse_args(argv)
    with exit_on_user_error(parser.prog):
        check_seed(args.seed)
        manifest = build_synthetic_omniglot(args.out, args.characters, args.drawings, args.seed, args.split,
                                            args.alphabets)
    summary = [f"{k} {n} characters -> {manifest['shapes'][k]}" for k, n in manifest["split_counts"].items()]
    print(f"wrote {args.out}: {', '.join(summary)}")


if __name__ == "__main__":
    main()
