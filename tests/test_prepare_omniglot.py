"""data/prepare_omniglot.py on the real Omniglot sample zips (images_background_small1/2.zip of the official
Omniglot repository; found through METAGMVAE_SHARED_DATA, these tests skip without them).

Every output goes under pytest's tmp_path; the download tests use a local HTTP server only.
"""
import functools
import http.server
import io
import json
import os
import shutil
import subprocess
import sys
import threading
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, strategies as st
from PIL import Image

from data.omniglot_build import BUILD_KIND, REFERENCE_SPLIT, split_characters, split_counts
from data.prepare_omniglot import Drawing, build_omniglot, collect_characters, download_archives, load_character
from metagmvae.folders import RECORD, OutputFolder
from metagmvae.runfiles import UserError
from omniglot.dataset import load_omniglot

REPO_ROOT = Path(__file__).resolve().parents[1]
SCRIPT = REPO_ROOT / "data" / "prepare_omniglot.py"
SAMPLE_SHA256 = {  # of the official images_background_small zips
    "images_background_small1.zip": "f38eb80f801274ac2b4dff5b24289016bfaba4a7d5bb50deebf27104ad6cb8a4",
    "images_background_small2.zip": "3ccaa407515a8778e5d0861875af38b17e418f301ad5bb3b5a6b65d901a41c7f",
}
SAMPLE_CHARACTERS = {"images_background_small1.zip": 136, "images_background_small2.zip": 156}
ENV = {**os.environ, "NO_PROXY": "127.0.0.1", "no_proxy": "127.0.0.1"}


def load(out):
    return {name: np.load(out / f"{name}.npy") for name in ("train", "val", "test")}


def run_cli(*args, cwd=REPO_ROOT):
    """Run the script as a user would: `python data/prepare_omniglot.py ...` from the repo root by default."""
    script = "data/prepare_omniglot.py" if cwd == REPO_ROOT else SCRIPT
    return subprocess.run([sys.executable, script, *map(str, args)], cwd=cwd, env=ENV,
                          capture_output=True, text=True, timeout=60)


@pytest.fixture(scope="module")
def sample_build(omniglot_zips, tmp_path_factory):
    """Both sample zips, seed 0: (out folder, manifest)."""
    out = tmp_path_factory.mktemp("build") / "omniglot"
    return out, build_omniglot(omniglot_zips, out, seed=0)


@pytest.fixture(scope="module")
def greek(omniglot_zips, tmp_path_factory):
    """The Greek alphabet of the first sample zip, extracted: <root>/images_background_small1/Greek/..."""
    root = tmp_path_factory.mktemp("extracted")
    with zipfile.ZipFile(omniglot_zips[0]) as zf:
        zf.extractall(root, [n for n in zf.namelist() if n.startswith("images_background_small1/Greek/")])
    return root / "images_background_small1"


@pytest.fixture(scope="module")
def server(omniglot_zips, tmp_path_factory):
    """HTTP server on 127.0.0.1 serving the sample zips under their own names and, under official/,
    renamed as the official archives. Yields (base url, list of requested paths)."""
    root = tmp_path_factory.mktemp("served")
    (root / "official").mkdir()
    for z, official in zip(omniglot_zips, ("images_background.zip", "images_evaluation.zip")):
        shutil.copy(z, root / z.name)
        shutil.copy(z, root / "official" / official)
    requests = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            requests.append(self.path)

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=root))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/", requests
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(scope="module")
def downloaded(server, tmp_path_factory):
    """Download both sample zips (in reverse order) from the local server and build from them."""
    url, requests = server
    dest = tmp_path_factory.mktemp("downloads")
    archives = dict(reversed(SAMPLE_CHARACTERS.items()))
    with pytest.MonkeyPatch.context() as mp:  # never send 127.0.0.1 to a proxy
        mp.setenv("no_proxy", "127.0.0.1")
        paths = download_archives(url, dest, archives)
        first_requests = list(requests)
        again = download_archives(url, dest, archives)
    out = dest.parent / "omniglot"
    return paths, again, first_requests, list(requests), out, build_omniglot(paths, out, seed=0)


def test_sample_zips_give_242_characters(omniglot_zips):
    characters = collect_characters(omniglot_zips)
    assert len(characters) == 242  # Greek and Latin appear in both zips: counted once
    assert sum(SAMPLE_CHARACTERS.values()) > 242
    assert all(len(d) == 20 for d in characters.values())
    assert list(characters) == sorted(characters)


def test_arrays_shapes_and_values(sample_build):
    out, manifest = sample_build
    arrays = load(out)
    assert sum(manifest["split_counts"].values()) == 242
    for name, a in arrays.items():
        assert a.dtype == np.float32
        assert a.shape == (4 * manifest["split_counts"][name], 20, 28, 28, 1)
        assert list(a.shape) == manifest["shapes"][name]
        assert 0.0 <= a.min() and a.max() <= 1.0
        # Ink = 1.0 on a background of 0.0: mostly zeros, dark strokes near 1.
        assert a.mean() < 0.2 and (a == 0).mean() > 0.5 and (a > 0.95).any()


def test_rotations_are_classes(sample_build):
    out, _ = sample_build
    train = load(out)["train"][..., 0]  # (classes, 20, 28, 28)
    for c in (0, 7):
        upright = train[4 * c]
        for r in range(4):
            assert np.array_equal(train[4 * c + r], np.rot90(upright, r, axes=(1, 2)))
            for s in range(r):
                assert not np.array_equal(train[4 * c + r], train[4 * c + s])


def test_splits_are_disjoint_and_seeded(sample_build, omniglot_zips):
    _, manifest = sample_build
    names = ["/".join(k) for k in collect_characters(omniglot_zips)]
    splits = [set(manifest["characters"][s]) for s in ("train", "val", "test")]
    assert sum(map(len, splits)) == len(set().union(*splits)) == 242
    assert [sorted(s) for s in splits] == [[names[i] for i in idx] for idx in split_characters(242, seed=0)]
    other = split_characters(242, seed=1)
    assert [[names[i] for i in idx] for idx in other] != [sorted(s) for s in splits]
    assert [len(idx) for idx in other] == [len(s) for s in splits]


def test_split_proportions():
    assert split_counts(1623) == REFERENCE_SPLIT
    counts = split_counts(242)
    assert sum(counts) == 242 and min(counts) >= 1
    assert np.allclose(np.array(counts) / 242, np.array(REFERENCE_SPLIT) / 1623, atol=1 / 242)


@given(st.integers(3, 5000))
def test_split_counts_sum_and_proportions(n):
    counts = split_counts(n)
    assert sum(counts) == n and min(counts) >= 1
    assert all(abs(c - n * r / 1623) < 2 for c, r in zip(counts, REFERENCE_SPLIT))


@pytest.mark.parametrize("n, counts", [(4, (1, 1, 1)), (3, (0, 1, 2)), (3, (2, 1)), (5, (-1, 3, 3))])
def test_bad_split_counts(n, counts):
    with pytest.raises(UserError, match="--split"):
        split_characters(n, seed=0, counts=counts)
    with pytest.raises(UserError, match="2 characters"):
        split_counts(2)


def test_download_reuses_and_records_sha256(downloaded):
    paths, again, first_requests, requests, _, manifest = downloaded
    assert [p.name for p in paths] == list(reversed(SAMPLE_CHARACTERS))
    assert again == paths
    assert sorted(first_requests) == sorted(f"/{name}" for name in SAMPLE_CHARACTERS)
    assert requests == first_requests  # the second call found both archives and asked for nothing
    assert not list(paths[0].parent.glob("*.part"))
    assert {Path(s["path"]).name: s["sha256"] for s in manifest["sources"]} == SAMPLE_SHA256


def test_argument_order_and_reruns_give_the_same_build(downloaded, sample_build):
    """The downloaded copies, passed in the other order, rebuild exactly the same split and arrays."""
    *_, out, manifest = downloaded
    out0, manifest0 = sample_build
    strip = lambda m: {k: v for k, v in m.items() if k != "sources"}  # noqa: E731 (paths differ)
    assert strip(manifest) == strip(manifest0)
    assert json.loads((out / "manifest.json").read_text()) == manifest
    for name, a in load(out).items():
        assert np.array_equal(a, load(out0)[name])


def test_duplicate_characters_counted_once(greek, omniglot_zips):
    assert len(collect_characters([greek])) == 24  # the top folder itself ...
    assert collect_characters([greek.parent]).keys() == collect_characters([greek]).keys()  # or its parent
    assert len(collect_characters([greek, omniglot_zips[0]])) == 136


def test_conflicting_copies_of_a_character_are_refused(greek, tmp_path):
    copy = tmp_path / "top"
    shutil.copytree(greek, copy)
    first, second = sorted((copy / "Greek" / "character03").glob("*.png"))[:2]
    first.write_bytes(second.read_bytes())
    with pytest.raises(UserError, match="character03: differs from the same character in"):
        collect_characters([greek, copy])


def test_cli_split_from_anywhere(greek, omniglot_zips, tmp_path):
    out = tmp_path / "out"
    result = run_cli("--out", out, "--source", greek, omniglot_zips[0], "--split", "100", "10", "26",
                     "--seed", "3", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["split_counts"] == {"train": 100, "val": 10, "test": 26}
    assert manifest["seed"] == 3
    assert load(out)["val"].shape == (40, 20, 28, 28, 1)


def test_load_character_shape(greek):
    drawings = collect_characters([greek])[("Greek", "character01")]
    images = load_character(drawings)
    assert images.shape == (20, 28, 28) and images.dtype == np.float32


def png_drawing(pixels, index):
    """A Drawing of the (105, 105) array `pixels` saved as a PNG (16-bit grayscale for uint16)."""
    data = io.BytesIO()
    Image.fromarray(pixels).save(data, format="PNG")
    return Drawing(f"{index:02d}.png", f"top/Alpha/character01/{index:02d}.png", data.getvalue())


def test_16_bit_drawings_give_the_arrays_of_their_8_bit_copies():
    rng = np.random.default_rng(0)
    pixels = np.full((20, 105, 105), 255, np.uint8)  # dark grey strokes (77) on white
    for i, drawing in enumerate(pixels):
        row, column = rng.integers(10, 60, size=2)
        drawing[row:row + 40, column:column + 6] = 77
        drawing[row + 30:row + 36, column:column + 40] = 77
    eight = load_character([png_drawing(d, i) for i, d in enumerate(pixels)])
    sixteen = load_character([png_drawing(257 * d.astype(np.uint16), i) for i, d in enumerate(pixels)])
    assert eight.max() > 0.6 and np.array_equal(sixteen, eight)


@pytest.fixture(scope="module")
def bad_inputs(omniglot_zips, greek, tmp_path_factory):
    """{case: (source, text the error must contain)} for broken local sources."""
    root = tmp_path_factory.mktemp("bad")
    truncated = root / "truncated.zip"
    data = omniglot_zips[0].read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    no_layout = root / "no_layout"
    (no_layout / "Greek").mkdir(parents=True)
    shutil.copy(next(greek.glob("Greek/character01/*.png")), no_layout / "Greek" / "0394_01.png")
    nineteen = root / "nineteen" / "top"
    shutil.copytree(greek, nineteen)
    sorted((nineteen / "Greek" / "character05").glob("*.png"))[-1].unlink()
    unreadable = root / "unreadable" / "top"
    shutil.copytree(greek, unreadable)
    broken_png = sorted((unreadable / "Greek" / "character02").glob("*.png"))[3]
    broken_png.write_bytes(b"not a png")
    return {
        "truncated zip": (truncated, str(truncated)),
        "no layout": (no_layout, str(no_layout)),
        "19 drawings": (nineteen, str(nineteen / "Greek" / "character05") + ": 19 drawings"),
        "unreadable png": (unreadable, str(broken_png)),
        "missing source": (root / "nowhere.zip", str(root / "nowhere.zip")),
    }


CASES = ["truncated zip", "no layout", "19 drawings", "unreadable png", "missing source"]


@pytest.mark.parametrize("case", CASES)
def test_library_errors_name_the_file(bad_inputs, case, tmp_path):
    source, text = bad_inputs[case]
    with pytest.raises(UserError) as e:
        build_omniglot([source], tmp_path / "out")
    assert text in str(e.value)
    assert not (tmp_path / "out").exists()


def assert_cli_fails(result, text, out, previous):
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("prepare_omniglot.py: error: ")
    assert "Traceback" not in result.stderr and text in result.stderr
    assert {f.name: f.read_bytes() for f in out.iterdir()} == previous  # the previous build is intact


@pytest.fixture
def previous_build(tmp_path):
    """An --out folder holding a (fake) previous build; returns (folder, its files)."""
    out = tmp_path / "out"
    with OutputFolder(out, BUILD_KIND, "--out") as folder:
        for name in ("train.npy", "val.npy", "test.npy", "manifest.json"):
            folder.write_bytes(name, b"previous " + name.encode())
    return out, {f.name: f.read_bytes() for f in out.iterdir()}


@pytest.mark.parametrize("case", CASES)
def test_cli_errors_exit_2_without_traceback(bad_inputs, case, previous_build):
    source, text = bad_inputs[case]
    out, previous = previous_build
    assert_cli_fails(run_cli("--out", out, "--source", source), text, out, previous)


def test_cli_bad_split(greek, previous_build):
    out, previous = previous_build
    result = run_cli("--out", out, "--source", greek, "--split", "20", "2", "1")
    assert_cli_fails(result, "--split 20 2 1", out, previous)


def test_cli_download_404(server, previous_build, tmp_path):
    url, _ = server
    out, previous = previous_build
    result = run_cli("--out", out, "--download-dir", tmp_path / "dl", "--url-base", url + "missing/")
    assert_cli_fails(result, "404", out, previous)
    assert "--source" in result.stderr and not (tmp_path / "dl").exists()  # the folder it created: removed


def test_cli_download_refuses_wrong_archive(server, previous_build, tmp_path):
    """The sample zips served as the official ones hold too few characters."""
    url, _ = server
    out, previous = previous_build
    result = run_cli("--out", out, "--download-dir", tmp_path / "dl", "--url-base", url + "official")
    assert_cli_fails(result, "136 characters, expected 964", out, previous)
    assert not (tmp_path / "dl").exists()  # checked before it went there: the folder it created is removed


def assert_refused_leaving_nothing(result, text, folder):
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and text in result.stderr, result.stderr
    assert not folder.exists()


def test_a_refused_download_leaves_no_folder_it_created(server, tmp_path):
    """--out and --download-dir refused, a failed download and a wrong archive (into the default
    <out>/downloads): neither --out nor the downloads folder is left behind."""
    url, _ = server
    out = tmp_path / "out"
    assert_refused_leaving_nothing(run_cli("--out", out, "--download-dir", out), f"is --download-dir {out}", out)
    assert_refused_leaving_nothing(run_cli("--out", out, "--download-dir", tmp_path), "lies inside --download-dir",
                                   out)
    assert_refused_leaving_nothing(run_cli("--out", out, "--sample", "--url-base", url + "missing/"), "404", out)
    assert_refused_leaving_nothing(run_cli("--out", out, "--url-base", url + "official"),
                                   "136 characters, expected 964", out)


def test_downloads_kept_in_out_after_a_failed_build_serve_the_rerun(server, tmp_path):
    url, requests = server
    out = tmp_path / "out"
    result = run_cli("--out", out, "--sample", "--url-base", url, "--split", "1", "1", "1")
    assert result.returncode == 2 and "--split 1 1 1" in result.stderr, result.stderr
    assert sorted(p.name for p in (out / "downloads").iterdir()) == sorted([RECORD, *SAMPLE_CHARACTERS])
    served = len(requests)
    result = run_cli("--out", out, "--sample", "--url-base", url)
    assert result.returncode == 0, result.stderr
    assert len(requests) == served  # the downloads were reused
    assert load(out)["train"].shape[1:] == (20, 28, 28, 1)


def test_a_build_killed_between_its_renames_is_refused_until_built_again(tmp_path):
    """Killed after renaming test.npy of a rebuild with another seed (val.npy, train.npy and the manifest still
    of the earlier build): the record lists writes that never ended, and the arrays are refused as data until
    the build is run again."""
    script = ("import os, runpy, sys\n"
              "real = os.replace\n"
              "def replace(src, dst, **kwargs):\n"
              "    if dst == 'val.npy': os._exit(9)\n"
              "    real(src, dst, **kwargs)\n"
              "os.replace = replace\n"
              "sys.argv = ['data/prepare_omniglot.py', *sys.argv[1:]]\n"
              "runpy.run_path('data/prepare_omniglot.py', run_name='__main__')\n")
    out = tmp_path / "omniglot"
    build = [sys.executable, "data/prepare_omniglot.py", "--synthetic", "--characters", "24", "--out", str(out)]
    subprocess.run(build, cwd=REPO_ROOT, check=True, capture_output=True)
    before = (out / "train.npy").read_bytes()
    killed = subprocess.run([sys.executable, "-c", script, *build[2:], "--seed", "1"], cwd=REPO_ROOT,
                            capture_output=True)
    assert killed.returncode == 9 and (out / "train.npy").read_bytes() == before
    with pytest.raises(UserError, match=rf"--data-dir {out}: the command that wrote it has not finished \(its "
                                        rf"record {RECORD} lists writes that never ended: manifest.json, train.npy, "
                                        r"val.npy\)"):
        load_omniglot(out)
    subprocess.run([*build, "--seed", "1"], cwd=REPO_ROOT, check=True, capture_output=True)
    assert set(load_omniglot(out)) == {"train", "val", "test"}


def test_a_source_folder_that_cannot_be_listed_is_refused(tmp_path, monkeypatch):
    """A character or alphabet folder without read permission: glob skipped it, and the build held fewer
    characters and another split without a word. (Listing is refused through os.walk's error: tests may run
    as root, whom chmod does not stop.)"""
    source = tmp_path / "images_background" / "Greek" / "character01"
    source.mkdir(parents=True)
    walk = os.walk

    def unlistable(top, onerror=None, **kwargs):
        onerror(PermissionError(13, "Permission denied", str(source)))
        return walk(top, onerror=onerror, **kwargs)
    monkeypatch.setattr(os, "walk", unlistable)
    with pytest.raises(UserError, match=rf"--source {tmp_path / 'images_background'}: cannot list {source} "
                                        r"\(Permission denied\); its characters would be left out of the build"):
        collect_characters([tmp_path / "images_background"])
