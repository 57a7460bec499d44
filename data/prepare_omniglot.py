"""Build the Omniglot arrays train.npy / val.npy / test.npy from the official zips.

Each character's 20 drawings (105x105, black ink on white) are resized to 28x28 with Lanczos
filtering and inverted so ink = 1.0. Characters are split 1200 / 100 / 323 (docs/method.md) by
a seeded permutation, and each rotation by 0, 90, 180, 270 degrees is a class of its
own: every split file is shaped (4 * characters, 20, 28, 28, 1) float32.

    python data/prepare_omniglot.py --out data/omniglot                 # downloads the two zips
    python data/prepare_omniglot.py --out data/omniglot --source a.zip b/
    python data/prepare_omniglot.py --out data/omniglot-synthetic --synthetic --characters 300 --seed 0
"""
import argparse
import hashlib
import http.client
import io
import os
import shutil
import sys
import tempfile
import urllib.request
import zipfile
import zlib
from pathlib import Path
from typing import NamedTuple

if __name__ == "__main__":  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from metagmvae.startup import quiet_ctrl_c  # noqa: E402  (torch-free: first)
quiet_ctrl_c(__name__)  # a Ctrl-C from here on: one line, exit code 130

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402
from tqdm import tqdm  # noqa: E402

from data.omniglot_build import (IMAGE_SIZE, SPLITS, build_folder, check_build_folder, split_characters,  # noqa: E402
                                 with_rotations, write_arrays, write_build)
from data.synthetic_omniglot import build_synthetic_omniglot  # noqa: E402
from metagmvae.cli import HelpFormatter, check_seed  # noqa: E402
from metagmvae.folders import OutputFolder, check_outside_inputs  # noqa: E402
from metagmvae.imagefolders import open_image  # noqa: E402
from metagmvae.runfiles import UserError, check_regular_file, exit_on_user_error, format_bytes  # noqa: E402

DOWNLOADS_KIND = "Omniglot downloads"  # the kind of folder --download-dir is, in its record
URL_BASE = "https://github.com/brendenlake/omniglot/raw/master/python/"
# Official archive -> number of characters it holds (30 + 20 alphabets, 1623 characters in all).
OFFICIAL_ARCHIVES = {"images_background.zip": 964, "images_evaluation.zip": 659}
# The official small sample (8 alphabets, 242 distinct characters: Greek and Latin are in both).
SAMPLE_ARCHIVES = {"images_background_small1.zip": 136, "images_background_small2.zip": 156}
DRAWINGS_PER_CHARACTER = 20
# Bounds on what an archive or folder may unpack to: an official drawing is about 1 KB and the largest
# official zip unpacks to about 20 MB, so only a damaged or hostile file (a zip bomb) reaches them.
MAX_MEMBER_BYTES = 10 * 2 ** 20
MAX_ARCHIVE_BYTES = 2 ** 30
LAYOUT = "<Alphabet>/<characterNN>/<drawing>.png (e.g. images_background/Greek/character01/0394_01.png)"
PREPROCESSING = (
    "PNG, upright (EXIF orientation) in 8 bits (16-bit / 257) -> grayscale -> 28x28 with Pillow LANCZOS -> "
    "float32 1 - pixel/255 (ink = 1.0, background = 0.0); "
    "class 4*i + r of a split is its character i (in the order listed) rotated by 90*r degrees "
    "counter-clockwise (np.rot90)"
)


class Drawing(NamedTuple):
    """One drawing of a character, as read from a zip or a folder."""

    name: str  # file name, e.g. 0394_01.png
    origin: str  # where it was read, for error messages
    data: bytes  # the PNG file


def _is_drawing(parts):
    """A PNG that is not hidden and not macOS zip metadata."""
    return parts[-1].lower().endswith(".png") and not any(p.startswith((".", "__MACOSX")) for p in parts)


def _layout(source, paths):
    """Keep the drawing paths (tuples of parts) at the layout's depth below `source`.

    `source` is either a top folder (<Alphabet>/<character>/<png>, depth 3) or holds top folders
    (<top>/<Alphabet>/<character>/<png>, depth 4) like the official zips.
    """
    for depth in (3, 4):
        found = [p for p in paths if len(p) == depth]
        if found:
            return found
    raise UserError(f"{source}: no drawings found in the layout {LAYOUT}")


def _check_size(origin, size):
    if size > MAX_MEMBER_BYTES:
        raise UserError(f"{origin}: {format_bytes(size)} unpacked, more than the {format_bytes(MAX_MEMBER_BYTES)} "
                        "a drawing may take (a damaged or hostile file?)")


def _check_members(path, members):
    """Refuse, before anything is unpacked, an encrypted member or one unpacking to more than
    MAX_MEMBER_BYTES, and an archive unpacking to more than MAX_ARCHIVE_BYTES."""
    for info in members:
        if info.flag_bits & 0x1:
            raise UserError(f"{path}:{info.filename} is encrypted; expected an unencrypted zip (unpack it "
                            "with its password and pass the folder with --source)")
        _check_size(f"{path}:{info.filename}", info.file_size)
    total = sum(info.file_size for info in members)
    if total > MAX_ARCHIVE_BYTES:
        raise UserError(f"{path}: {format_bytes(total)} unpacked, more than the {format_bytes(MAX_ARCHIVE_BYTES)} "
                        "an Omniglot archive may take (a damaged or hostile file?)")


def _read_zip(source, path):
    """{character folder parts: [Drawing]} of the zip archive `source` (its path, or a binary file that `path`
    names in messages), after checking the members' sizes, that none is encrypted, and every member's CRC."""
    try:
        with zipfile.ZipFile(source) as zf:
            _check_members(path, zf.infolist())
            bad = zf.testzip()
            if bad is not None:
                raise UserError(f"{path}: corrupt zip archive (bad CRC in {bad})")
            paths = [tuple(n.split("/")) for n in zf.namelist()]
            folders = {}
            for parts in _layout(path, [p for p in paths if _is_drawing(p)]):
                name = "/".join(parts)
                folders.setdefault(parts[:-1], []).append(Drawing(parts[-1], f"{path}:{name}", zf.read(name)))
    except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, OSError) as e:
        raise UserError(f"{path}: not a readable zip archive, truncated or corrupt ({e})") from None
    return folders


def _read_folder(path):
    """{character folder parts: [Drawing]} of an extracted folder; a subfolder that cannot be listed (no
    permission) is refused, as glob would skip it and its characters without a word."""
    def unlisted(error):
        raise UserError(f"--source {path}: cannot list {error.filename} ({error.strerror}); its characters "
                        "would be left out of the build")
    for _ in os.walk(path, onerror=unlisted):
        pass
    files = [f for pattern in ("*/*/*", "*/*/*/*") for f in path.glob(pattern) if not f.is_dir()]
    paths = [f.relative_to(path).parts for f in files]
    folders = {}
    for parts in _layout(path, [p for p in paths if _is_drawing(p)]):
        file = path.joinpath(*parts)
        check_regular_file(file)  # a FIFO would block, a device never end
        try:
            _check_size(file, file.stat().st_size)
            data = file.read_bytes()
        except OSError as e:
            raise UserError(f"{file}: cannot read ({e.strerror})") from None
        folders.setdefault(parts[:-1], []).append(Drawing(parts[-1], str(file), data))
    return folders


def _content(drawings):
    return [(d.name, d.data) for d in drawings]


def _read_source(source):
    """{character folder parts: [Drawing]} of a zip archive or an extracted folder."""
    check_regular_file(source)  # reading /dev/zero never ends, a FIFO blocks
    if not source.exists():
        raise UserError(f"{source}: no such file or folder")
    return _read_folder(source) if source.is_dir() else _read_zip(source, source)


def collect_characters(sources):
    """Gather the drawings of every character in `sources` (zips or extracted folders).

    Returns {(alphabet, character): [20 Drawing sorted by file name]}, sorted by key. A character
    found in several sources counts once; its copies must hold the same drawings.
    """
    return _characters(_read_source(source) for source in map(Path, sources))


def _characters(sources):
    """collect_characters of the sources read: each {character folder parts: [Drawing]}."""
    characters, seen_in = {}, {}
    for folders in sources:
        for folder, drawings in sorted(folders.items()):
            drawings.sort(key=lambda d: d.name)
            origin = drawings[0].origin.rsplit("/", 1)[0]
            if len(drawings) != DRAWINGS_PER_CHARACTER:
                raise UserError(f"{origin}: {len(drawings)} drawings, expected {DRAWINGS_PER_CHARACTER}")
            key = folder[-2:]
            if key in characters and _content(characters[key]) != _content(drawings):
                raise UserError(f"{origin}: differs from the same character in {seen_in[key]}")
            characters.setdefault(key, drawings)
            seen_in.setdefault(key, origin)
    return dict(sorted(characters.items()))


def load_character(drawings):
    """Decode a character's drawings into a (20, 28, 28) float32 array in [0, 1], ink = 1.0."""
    images = []
    for d in drawings:
        im = open_image(io.BytesIO(d.data), d.origin, "L").resize((IMAGE_SIZE, IMAGE_SIZE), Image.LANCZOS)
        images.append(1.0 - np.asarray(im, dtype=np.float32) / 255.0)
    return np.stack(images)


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def build_omniglot(sources, out, seed=0, split=None):
    """Write train.npy, val.npy, test.npy (each (classes, 20, 28, 28, 1) float32) and manifest.json.

    Every input is read and checked before anything is written; the four files are then renamed
    into `out` together, so a failure leaves a previous build intact. Returns the manifest.
    """
    check_outside_inputs(out, "--out", [("--source", s) for s in sources if Path(s).is_dir()])
    check_build_folder(out)
    arrays, manifest = convert_omniglot(sources, seed, split)
    write_build(out, arrays, manifest)
    return manifest


def convert_omniglot(sources, seed, split):
    """The arrays {split: (4 * characters, 20, 28, 28, 1) float32} of the characters in `sources` and their
    manifest (see build_omniglot)."""
    characters = collect_characters(sources)
    keys = list(characters)
    parts = split_characters(len(keys), seed, split)  # checks --split before the slow decoding
    images = np.stack([load_character(characters[k]) for k in tqdm(keys, desc="characters", disable=None)])
    arrays = {name: with_rotations(images[idx]) for name, idx in zip(SPLITS, parts)}
    manifest = {
        "sources": [
            {"path": str(p), **({"sha256": sha256(p)} if p.is_file() else {})}
            for p in sorted({Path(s).resolve() for s in sources})
        ],
        "seed": seed,
        "split_counts": {name: len(idx) for name, idx in zip(SPLITS, parts)},
        "characters": {name: ["/".join(keys[i]) for i in idx] for name, idx in zip(SPLITS, parts)},
        "shapes": {name: list(a.shape) for name, a in arrays.items()},
        "preprocessing": PREPROCESSING,
    }
    return arrays, manifest


def _fetch(url, file):
    """Stream `url` into the binary `file` with a progress bar."""
    try:
        with urllib.request.urlopen(url, timeout=60) as response:
            size = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=size, unit="B", unit_scale=True, desc=Path(url).stem, disable=None) as bar:
                for block in iter(lambda: response.read(1 << 20), b""):
                    file.write(block)
                    bar.update(len(block))
    except (OSError, http.client.HTTPException) as e:  # URLError and HTTPError are OSErrors
        hint = "download it manually and pass it with --source"
        raise UserError(f"cannot download {url} ({e}); {hint}") from None


def _check_archive(read, path, expected, context):
    """The archive at `path`, read by read() -> {character folder parts: [Drawing]}, must be a valid zip
    holding `expected` characters of 20 drawings each."""
    try:
        found = len(_characters([read()]))
    except UserError as e:
        raise UserError(f"{e} ({context})") from None
    if found != expected:
        raise UserError(f"{path}: {found} characters, expected {expected} ({context})")


def download_archives(url_base, dest, archives=OFFICIAL_ARCHIVES):
    """Download each archive {file name: expected characters} from `url_base` into the folder `dest`
    (--download-dir, an output folder of its own).

    An archive already in `dest` is checked and reused. A download goes to an anonymous temporary file (in
    the system's temporary folder) and is checked there; only an archive that passes is written into `dest`,
    so a failed or broken download leaves nothing there, nor a folder this created.  Returns the paths.
    """
    dest = Path(dest)
    with OutputFolder(dest, DOWNLOADS_KIND, "--download-dir") as folder:
        for name, expected in archives.items():
            path = dest / name
            if path.exists():
                _check_archive(lambda: _read_source(path), path, expected, "delete it to download it again")
                continue
            url = f"{url_base.rstrip('/')}/{name}"
            with tempfile.TemporaryFile() as download:
                _fetch(url, download)
                _check_archive(lambda: _read_zip(download, path), path, expected, f"downloaded from {url}")
                download.seek(0)
                with folder.writing(name) as file:
                    shutil.copyfileobj(download, file)
    return [dest / name for name in archives]


def download_and_build(args, archives):
    """Download the archives into --download-dir (default <out>/downloads) and build --out from them;
    returns the manifest.  Both folders are checked first; --out is then held, its record unwritten, while
    the downloads go into it, so that a failed download leaves no folder this command created.  Once the
    downloads are in --out, its record is written: they stay there for a rerun, which must accept --out."""
    download_dir = args.download_dir or args.out / "downloads"
    out, downloads = args.out.resolve(), download_dir.resolve()
    if out == downloads or downloads in out.parents:  # the downloads may lie in --out, not the other way round
        raise UserError(f"--out {out} {'is' if out == downloads else 'lies inside'} --download-dir {downloads}; "
                        "the build goes to a folder of its own: choose another --out")
    check_build_folder(args.out)
    OutputFolder(download_dir, DOWNLOADS_KIND, "--download-dir").check()
    with build_folder(args.out) as folder:
        sources = download_archives(args.url_base, download_dir, archives)
        if folder.visible_entries():
            folder.claim()
        arrays, manifest = convert_omniglot(sources, args.seed, args.split)
        write_arrays(folder, arrays, manifest)
    return manifest


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=HelpFormatter)
    parser.add_argument("--out", type=Path, required=True,
                        help="output folder for train/val/test.npy and manifest.json")
    parser.add_argument("--sample", action="store_true",
                        help="download the official small sample (images_background_small1/2.zip) instead")
    parser.add_argument("--source", type=Path, nargs="+", action="extend", metavar="PATH",
                        help="local Omniglot zips or extracted folders (default: download the official zips)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the character split")
    parser.add_argument("--split", type=int, nargs=3, metavar=("NTR", "NVA", "NTE"),
                        help="train/val/test character counts (default: proportions 1200:100:323)")
    parser.add_argument("--download-dir", type=Path,
                        help="where to keep the downloaded zips (default: <out>/downloads)")
    parser.add_argument("--url-base", default=URL_BASE, help="where to download the official zips from")
    parser.add_argument("--synthetic", action="store_true",
                        help="generate a procedural Omniglot-like set instead (data/synthetic_omniglot.py)")
    parser.add_argument("--characters", type=int, default=300, help="with --synthetic: characters to generate")
    parser.add_argument("--drawings", type=int, default=DRAWINGS_PER_CHARACTER,
                        help="with --synthetic: drawings per character")
    args = parser.parse_args(argv)
    with exit_on_user_error(parser.prog):
        check_seed(args.seed)
        if args.synthetic and args.source:
            raise UserError("--synthetic generates its own drawings; drop --source")
        if args.synthetic:
            manifest = build_synthetic_omniglot(args.out, args.characters, args.drawings, args.seed, args.split)
        else:
            archives = SAMPLE_ARCHIVES if args.sample else OFFICIAL_ARCHIVES
            manifest = (build_omniglot(args.source, args.out, args.seed, args.split) if args.source
                        else download_and_build(args, archives))
    summary = [f"{k} {n} characters -> {manifest['shapes'][k]}" for k, n in manifest["split_counts"].items()]
    print(f"wrote {args.out}: {', '.join(summary)}")


if __name__ == "__main__":
    main()
