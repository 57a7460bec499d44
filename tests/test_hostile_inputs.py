"""Hostile and mistaken inputs to every command: each ends in exit code 2 with one line on stderr naming
what is wrong, no traceback, and no file that existed before changed (nor any written)."""
import json
import os
import struct
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import torch
from numpy.lib import format as npy_format
from PIL import Image, ImageDraw

from data import prepare_mimgnet
from data.prepare_omniglot import main as prepare_omniglot_main
from data.synthetic_mimgnet import main as synthetic_mimgnet_main
from metagmvae.folders import OutputFolder
from metagmvae.runfiles import MAX_NAMES_SHOWN, UserError, build_model, load_npy
from mimgnet import main as mimgnet_main
from mimgnet.model import REFERENCE_PREFIXES as MIMGNET_PREFIXES
from mimgnet.model import FeatureGMVAE
from omniglot import draw_figures, evaluate
from omniglot.cluster import main as cluster_main
from omniglot import main as omniglot_main
from omniglot.model import REFERENCE_PREFIXES as OMNIGLOT_PREFIXES
from omniglot.model import OmniglotGMVAE
from simclr import main as simclr_main
from simclr.model import SimCLR

from .conftest import REPO_ROOT, to_reference_state_dict

OMNIGLOT_FLAGS = ["--hidden-size", "8", "--latent-size", "4", "--way", "5", "--sample-size", "10", "--eval-way", "5",
                  "--query", "2", "--eval-episodes", "2", "--test-mc-sample-size", "2", "--train-mc-sample-size", "2",
                  "--device", "cpu"]
MIMGNET_FLAGS = ["--latent-size", "4", "--eval-shots", "1", "--eval-episodes", "2", "--test-mc-sample-size", "2",
                 "--device", "cpu"]


def snapshot(*roots):
    """{path: bytes} of every file under the roots."""
    return {p: p.read_bytes() for root in roots for p in sorted(root.rglob("*")) if p.is_file()}


def check_refusal(returncode, stderr, text, argparse_error):
    """Exit code 2 and one line on stderr holding `text` (argparse's own errors print usage lines first)."""
    lines = stderr.splitlines()
    assert returncode == 2, stderr[-3000:]
    assert "Traceback" not in stderr
    assert lines[0].startswith("usage:") if argparse_error else len(lines) == 1, stderr
    assert text in lines[-1], stderr
    return lines[-1]


def assert_refused(script, *args, text, roots, argparse_error=False):
    """Run `python script args` from the repository root as a user would: refused (check_refusal), the files
    under `roots` unchanged and none added.  Returns the error line."""
    before = snapshot(*roots)
    result = subprocess.run([sys.executable, script, *map(str, args)], cwd=REPO_ROOT, capture_output=True,
                            text=True, timeout=120)
    line = check_refusal(result.returncode, result.stderr, text, argparse_error)
    assert snapshot(*roots) == before
    return line


def assert_refused_in_process(main, *args, text, roots, capsys, argparse_error=False):
    """The same through the command's main(argv) in this process: faster, for variants of a subprocess case."""
    before = snapshot(*roots)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main(list(map(str, args)))
    line = check_refusal(exit_info.value.code, capsys.readouterr().err, text, argparse_error)
    assert snapshot(*roots) == before
    return line


@pytest.fixture(scope="module")
def mimgnet_data(tmp_path_factory):
    """Tiny valid test features: 6 classes of 30 rows of 8 features."""
    folder = tmp_path_factory.mktemp("features")
    np.save(folder / "test_features.npy", np.random.default_rng(0).random((180, 8), dtype=np.float32))
    np.save(folder / "test_labels.npy", np.repeat(np.arange(6), 30))
    return folder


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """A folder of files given as checkpoints: ours and the authors'-style of both models, and broken ones."""
    folder = tmp_path_factory.mktemp("checkpoints")
    omniglot, mimgnet = OmniglotGMVAE(8, 4), FeatureGMVAE(8, 4)
    torch.save({"model": omniglot.state_dict(), "model_config": omniglot.config}, folder / "omniglot.pt")
    torch.save({"model": mimgnet.state_dict(), "model_config": mimgnet.config}, folder / "mimgnet.pt")
    authors_omniglot = to_reference_state_dict(omniglot, OMNIGLOT_PREFIXES)
    torch.save({"state_dict": authors_omniglot, "accuracy": np.float64(0.9)}, folder / "authors_omniglot.pth")
    torch.save({"state_dict": to_reference_state_dict(mimgnet, MIMGNET_PREFIXES)}, folder / "authors_mimgnet.pth")
    torch.save({"state_dict": {**authors_omniglot, "extra.weight": torch.zeros(1)}}, folder / "authors_extra_key.pth")
    del authors_omniglot["proj.2.weight"]
    torch.save({"state_dict": authors_omniglot, "accuracy": np.float64(0.9)}, folder / "authors_missing_key.pth")
    torch.save({"model": omniglot.state_dict()}, folder / "no_config.pt")
    torch.save({"state_dict": torch.zeros(3)}, folder / "state_dict_tensor.pth")
    torch.save(torch.nn.Linear(2, 2), folder / "whole_module.pt")  # a pickled object, not a dict of tensors
    (folder / "notes.txt").write_text("not a checkpoint\n")
    (folder / "empty.pt").write_bytes(b"")
    (folder / "a_folder.pt").mkdir()
    return folder


@pytest.mark.parametrize("name, text", [
    ("notes.txt", "notes.txt is not a readable checkpoint (not a file written by torch.save"),
    ("empty.pt", "empty.pt is not a readable checkpoint (an empty file)"),
    ("a_folder.pt", "a_folder.pt is a directory"),
    ("mimgnet.pt", "mimgnet.pt holds this project's Mini-ImageNet model; expected a checkpoint of the Omniglot model"),
    ("authors_missing_key.pth", "weights do not fit the Omniglot model (missing: latent_to_feature.2.weight"),
])
def test_omniglot_eval_only_refuses_bad_checkpoints(omniglot_data, checkpoints, name, text):
    line = assert_refused("omniglot/main.py", "--data-dir", omniglot_data, "--eval-only", "--checkpoint",
                          checkpoints / name, *OMNIGLOT_FLAGS, text=text, roots=[omniglot_data, checkpoints])
    assert "weights_only" not in line


@pytest.mark.parametrize("name, text", [
    ("whole_module.pt", "holds Python objects besides tensors, numbers and containers"),
    ("authors_mimgnet.pth", "holds the authors' Mini-ImageNet model; expected a checkpoint of the Omniglot model"),
    ("no_config.pt", "no 'model_config' beside 'model'"),
    ("state_dict_tensor.pth", "'state_dict' is not a dict of named tensors (found Tensor)"),
    ("authors_extra_key.pth", "not the authors' Omniglot model (unexpected parameter 'extra.weight')"),
])
def test_omniglot_eval_only_refuses_malformed_checkpoints(omniglot_data, checkpoints, capsys, name, text):
    line = assert_refused_in_process(omniglot_main.main, "--data-dir", omniglot_data, "--eval-only", "--checkpoint",
                                     checkpoints / name, *OMNIGLOT_FLAGS, text=text,
                                     roots=[omniglot_data, checkpoints], capsys=capsys)
    assert "weights_only" not in line


def test_mimgnet_eval_only_refuses_omniglot_checkpoints(mimgnet_data, checkpoints, capsys):
    common = ["--data-dir", mimgnet_data, "--eval-only", *MIMGNET_FLAGS, "--checkpoint"]
    assert_refused("mimgnet/main.py", *common, checkpoints / "omniglot.pt",
                   text="holds this project's Omniglot model; expected a checkpoint of the Mini-ImageNet model",
                   roots=[mimgnet_data, checkpoints])
    assert_refused_in_process(mimgnet_main.main, *common, checkpoints / "authors_omniglot.pth",
                              text="holds the authors' Omniglot model; expected a checkpoint of the Mini-ImageNet",
                              roots=[mimgnet_data, checkpoints], capsys=capsys)


def test_resume_from_a_file_that_is_not_a_run_checkpoint_is_refused(omniglot_data, checkpoints, tmp_path, capsys):
    run = tmp_path / "run"
    with OutputFolder(run, "Omniglot run", "--save-dir") as folder:  # a run folder of ours whose last.pt was replaced
        folder.write_text("config.json", "{}\n")
    (run / "last.pt").write_bytes((checkpoints / "authors_omniglot.pth").read_bytes())
    common = ["--data-dir", omniglot_data, "--save-dir", run, "--resume", *OMNIGLOT_FLAGS]
    assert_refused("omniglot/main.py", *common,
                   text="last.pt holds the authors' Omniglot model; --resume expects a last.pt written by training",
                   roots=[omniglot_data, run])
    (run / "last.pt").write_bytes((checkpoints / "omniglot.pt").read_bytes())  # weights only
    assert_refused_in_process(omniglot_main.main, *common, text="last.pt: not a run checkpoint (no 'optimizer'",
                              roots=[omniglot_data, run], capsys=capsys)


@pytest.mark.parametrize("flags, text", [
    (["--lr", "nan"], "--lr must be a finite number > 0 (got nan)"),
    (["--lr", "inf"], "--lr must be a finite number > 0 (got inf)"),
    (["--unsupervised-em-iters", "0"], "--unsupervised-em-iters must be positive (got 0)"),
])
def test_impossible_numbers_are_refused(omniglot_data, tmp_path, flags, text):
    assert_refused("omniglot/main.py", "--data-dir", omniglot_data, "--save-dir", tmp_path / "run",
                   *OMNIGLOT_FLAGS, *flags, text=text, roots=[omniglot_data])
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("flags, text", [
    (["--weight-decay=-inf"], "--weight-decay must be a finite number >= 0"),
    (["--grad-clip", "nan"], "--grad-clip must be a finite number >= 0"),
    (["--semisupervised-em-iters", "0"], "--semisupervised-em-iters must be positive (got 0)"),
    (["--train-mc-sample-size", "-3"], "--train-mc-sample-size must be positive (got -3)"),
    (["--seed", "-1"], "--seed must be in [0, 2**32)"),
    (["--seed", str(2 ** 32)], "--seed must be in [0, 2**32)"),
    (["--test-mc-sample-size", str(10 ** 12)], "--test-mc-sample-size 1000000000000: the latent samples of one batch "
                                               "(4 episodes x 35 items x 1000000000000 samples x 4 floats) would take"),
])
def test_more_impossible_numbers_are_refused(omniglot_data, tmp_path, capsys, flags, text):
    line = assert_refused_in_process(omniglot_main.main, "--data-dir", omniglot_data, "--save-dir", tmp_path / "run",
                                     *OMNIGLOT_FLAGS, *flags, text=text, roots=[omniglot_data], capsys=capsys)
    assert not (tmp_path / "run").exists()
    if "--test-mc-sample-size" in flags:
        assert "of memory of this machine" in line


def test_a_non_integer_sample_count_is_an_argparse_error(omniglot_data, capsys):
    assert_refused_in_process(omniglot_main.main, "--data-dir", omniglot_data, "--eval-only", "--checkpoint", "x.pt",
                              "--test-mc-sample-size", "1e8", text="invalid int value: '1e8'", roots=[omniglot_data],
                              capsys=capsys, argparse_error=True)


def test_a_state_dict_mismatch_names_the_tensors_and_caps_the_list(checkpoints):
    model = OmniglotGMVAE(8, 4)
    weights = {name: tensor for name, tensor in model.state_dict().items() if not name.startswith("decoder.")}
    weights["encoder.0.weight"] = torch.zeros(3)
    weights["head.weight"] = torch.zeros(3)
    with pytest.raises(UserError) as error:
        build_model({"model": weights, "model_config": model.config}, "x.pt", OmniglotGMVAE, "Omniglot")
    decoder = sorted(name for name in model.state_dict() if name.startswith("decoder."))
    message = str(error.value)
    assert f"missing: {', '.join(decoder[:MAX_NAMES_SHOWN])} and {len(decoder) - MAX_NAMES_SHOWN} more" in message
    assert "unexpected: head.weight" in message and "other shapes: encoder.0.weight" in message


def test_npy_header_promising_a_petabyte_is_refused_unread(tmp_path):
    with open(tmp_path / "test.npy", "wb") as f:
        npy_format.write_array_header_1_0(f, {"descr": "<f4", "fortran_order": False,
                                              "shape": (2 ** 48, 20, 28, 28, 1)})
        f.write(bytes(64))
    line = assert_refused("omniglot/main.py", "--data-dir", tmp_path, "--eval-only", "--checkpoint", "x.pt",
                          *OMNIGLOT_FLAGS, text="test.npy (a float32 array of shape (281474976710656, 20, 28, 28, 1))",
                          roots=[tmp_path])
    assert "of memory of this machine" in line
    with pytest.raises(UserError, match="is truncated: its header promises"):
        load_npy(tmp_path / "test.npy", mmap_mode="r")  # mapped, the size is no problem but the file is short


def test_npy_with_pickled_objects_is_refused_without_numpys_hint(tmp_path):
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    with pytest.raises(UserError, match="holds Python objects") as error:
        load_npy(tmp_path / "objects.npy")
    assert "allow_pickle" not in str(error.value)


def test_simclr_refuses_impossible_numbers(simclr_data, tmp_path, capsys):
    common = ["--data-dir", simclr_data, "--save-dir", tmp_path / "run", "--feature-save-dir", tmp_path / "features"]
    assert_refused("simclr/main.py", *common, "--temperature", "0",
                   text="--temperature must be a finite number > 0 (got 0.0)", roots=[simclr_data])
    for flags, text in [(["--temperature", "nan"], "--temperature must be a finite number > 0 (got nan)"),
                        (["--temperature", "-1"], "--temperature must be a finite number > 0 (got -1.0)"),
                        (["--temperature", "1e300"], "--temperature 1e+300 is above 1000: cosine similarities "
                                                     "divided by it differ by at most 2 / T, so NT-Xent is flat"),
                        (["--temperature", "1e-320"], "--temperature 1e-320 is below 0.001"),
                        (["--lr", "inf"], "--lr must be a finite number > 0 (got inf)"),
                        (["--seed", "-5"], "--seed must be in [0, 2**32)")]:
        assert_refused_in_process(simclr_main.main, *common, *flags, text=text, roots=[simclr_data], capsys=capsys)
    assert not (tmp_path / "run").exists() and not (tmp_path / "features").exists()


def test_simclr_export_only_and_draw_figures_refuse_bad_checkpoints(simclr_data, omniglot_data, checkpoints,
                                                                     tmp_path, capsys):
    export = ["--data-dir", simclr_data, "--feature-save-dir", tmp_path / "features", "--export-only", "--device",
              "cpu", "--checkpoint"]
    assert_refused("simclr/main.py", *export, checkpoints / "notes.txt", text="notes.txt is not a readable checkpoint",
                   roots=[simclr_data, checkpoints])
    assert_refused_in_process(simclr_main.main, *export, checkpoints / "omniglot.pt",
                              text="holds this project's Omniglot model; expected a checkpoint of the SimCLR model",
                              roots=[simclr_data, checkpoints], capsys=capsys)
    assert not (tmp_path / "features").exists()
    assert_refused_in_process(draw_figures.main, "--checkpoint", checkpoints / "a_folder.pt", "--data-dir",
                              omniglot_data, "--out", tmp_path / "figures", "--device", "cpu",
                              text="a_folder.pt is a directory", roots=[omniglot_data, checkpoints], capsys=capsys)
    assert not (tmp_path / "figures").exists()


def drawing_zip(path, png_size=None):
    """A zip with one drawing member, omniglot/Alphabet/character01/0001_01.png: a blank PNG, or png_size zero
    bytes (which deflate compresses about a thousandfold)."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        if png_size is None:
            with zf.open("omniglot/Alphabet/character01/0001_01.png", "w") as f:
                Image.new("L", (105, 105), 255).save(f, format="PNG")
        else:
            zf.writestr("omniglot/Alphabet/character01/0001_01.png", bytes(png_size))
    return path


def set_encrypted_flag(path):
    """Set bit 0 (encrypted) of the general purpose flags in every local and central header of a zip."""
    data = bytearray(path.read_bytes())
    for signature, offset in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
        start = data.find(signature)
        while start != -1:
            flags, = struct.unpack_from("<H", data, start + offset)
            struct.pack_into("<H", data, start + offset, flags | 0x1)
            start = data.find(signature, start + 4)
    path.write_bytes(bytes(data))


def test_prepare_omniglot_refuses_a_zip_bomb_member_before_unpacking(tmp_path):
    (tmp_path / "in").mkdir()
    bomb = drawing_zip(tmp_path / "in" / "bomb.zip", png_size=11 * 2 ** 20)
    assert bomb.stat().st_size < 2 ** 20
    assert_refused("data/prepare_omniglot.py", "--source", bomb, "--out", tmp_path / "out",
                   text="0001_01.png: 11 MiB unpacked, more than the 10 MiB a drawing may take",
                   roots=[tmp_path / "in"])
    assert not (tmp_path / "out").exists()


def test_prepare_omniglot_refuses_an_encrypted_zip(tmp_path):
    (tmp_path / "in").mkdir()
    archive = drawing_zip(tmp_path / "in" / "locked.zip")
    set_encrypted_flag(archive)
    with zipfile.ZipFile(archive) as zf:
        assert zf.infolist()[0].flag_bits & 0x1  # what zipfile itself will see
    assert_refused("data/prepare_omniglot.py", "--source", archive, "--out", tmp_path / "out",
                   text="locked.zip:omniglot/Alphabet/character01/0001_01.png is encrypted", roots=[tmp_path / "in"])
    assert not (tmp_path / "out").exists()


def test_prepare_mimgnet_refuses_csv_names_outside_images(tmp_path, capsys):
    (tmp_path / "images").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "outside.jpg")
    flags = ["--images", tmp_path / "images", "--splits", tmp_path, "--out", tmp_path / "out"]
    for filename in ["../outside.jpg", str(tmp_path / "outside.jpg"), "n01/../../outside.jpg"]:
        for split in ("train", "val", "test"):
            (tmp_path / f"{split}.csv").write_text(f"filename,label\n{filename},n01\n")
        text = f"train.csv:2: {filename} is not a file name inside --images"
        if filename == "../outside.jpg":
            assert_refused("data/prepare_mimgnet.py", *flags, text=text, roots=[tmp_path])
        else:
            assert_refused_in_process(prepare_mimgnet.main, *flags, text=text, roots=[tmp_path], capsys=capsys)
    assert not (tmp_path / "out").exists()


@pytest.fixture
def episode(tmp_path):
    """An episodes folder with one 2-way episode of one support and one query image per class."""
    root = tmp_path / "episodes"
    for query, part in enumerate(("support", "query")):  # the query's line shorter: not a support copy
        for k, name in enumerate(("a", "b")):
            (root / "e1" / part / name).mkdir(parents=True)
            image = Image.new("L", (28, 28), 255)
            ImageDraw.Draw(image).line((4 + 10 * k, 4 + 4 * query, 24 - 10 * k, 24 - 4 * query), fill=0, width=3)
            image.save(root / "e1" / part / name / "1.png")
    return root


def test_evaluate_refuses_a_class_folder_without_images(episode, checkpoints):
    folder = episode / "e1" / "support" / "a"
    (folder / "1.png").unlink()
    (folder / "Thumbs.db").write_bytes(b"\x00" * 64)
    (folder / "notes.txt").write_text("drawn by hand\n")
    assert_refused("omniglot/evaluate.py", "--checkpoint", checkpoints / "omniglot.pt", "--episodes", episode,
                   "--device", "cpu", text=f"{folder}: no image files", roots=[episode, checkpoints])


def test_evaluate_refuses_an_empty_image_file_naming_it(episode, checkpoints, capsys):
    (episode / "e1" / "query" / "b" / "2.png").write_bytes(b"")
    assert_refused_in_process(evaluate.main, "--checkpoint", checkpoints / "omniglot.pt", "--episodes", episode,
                              "--device", "cpu", text="2.png: unreadable image", roots=[episode, checkpoints],
                              capsys=capsys)


def test_evaluate_skips_hidden_and_non_image_files(episode):
    support = episode / "e1" / "support"
    (support / "a" / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (support / "b" / "Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0")
    (episode / "e1" / "query" / "desktop.ini").write_text("[.ShellClassInfo]\n")  # beside the class folders
    loaded = evaluate.load_episode(episode / "e1")
    assert loaded.classes == ["a", "b"] and loaded.support.shape == (2, 1, 28, 28)
    assert loaded.query_files == ["a/1.png", "b/1.png"]


def test_a_file_where_a_folder_is_expected_is_named(tmp_path, capsys):
    """--images a file, an --out below a file, a listed image that is a folder: each named as what it is."""
    (tmp_path / "picture.png").write_bytes(b"x")
    assert_refused_in_process(cluster_main, "--checkpoint", "x.pt", "--images", tmp_path / "picture.png",
                              "--clusters", "2", text=f"--images {tmp_path / 'picture.png'}: a file, not a folder",
                              roots=[tmp_path], capsys=capsys)
    assert_refused_in_process(synthetic_mimgnet_main, "--out", tmp_path / "picture.png" / "sub" / "deeper",
                              text=f"cannot write to --out {tmp_path / 'picture.png' / 'sub' / 'deeper'}: "
                                   f"{tmp_path / 'picture.png'} is not a folder", roots=[tmp_path], capsys=capsys)
    (tmp_path / "images" / "n1.jpg").mkdir(parents=True)
    with pytest.raises(UserError, match=r"n1.jpg: a folder, not an image \(listed in train.csv\)"):
        prepare_mimgnet.check_files_exist(tmp_path / "images", {"train": {"n1": ["n1.jpg"]}})


def test_eval_and_export_only_take_the_sizes_of_the_checkpoint(omniglot_data, simclr_data, tmp_path, capsys):
    """A size flag that contradicts the checkpoint would be ignored: refused; left out, the checkpoint's size is
    the one recorded in eval_results.json."""
    model = OmniglotGMVAE(8, 4)
    torch.save({"model": model.state_dict(), "model_config": model.config}, tmp_path / "omniglot.pt")
    flags = ["--data-dir", omniglot_data, "--eval-only", "--checkpoint", tmp_path / "omniglot.pt", *OMNIGLOT_FLAGS[4:]]
    for given, text in ((["--hidden-size", "16"], "--hidden-size 16: "), (["--latent-size", "8"], "--latent-size 8: ")):
        assert_refused_in_process(omniglot_main.main, *flags, *given, roots=[omniglot_data], capsys=capsys,
                                  text=f"{text}{tmp_path / 'omniglot.pt'} holds a model of {given[0][2:].replace('-', '_')}")
    omniglot_main.main(list(map(str, [*flags, "--hidden-size", "8", "--save-dir", tmp_path / "same"])))
    omniglot_main.main(list(map(str, [*flags, "--save-dir", tmp_path / "left-out"])))
    for run in ("same", "left-out"):
        config = json.loads((tmp_path / run / "eval_results.json").read_text())["config"]
        assert (config["hidden_size"], config["latent_size"]) == (8, 4)
        # training flags are not this command's (their defaults here were used by no one): the checkpoint's run's
        assert "train_iters" not in config and "sample_size" not in config and config["trained"] is None
    torch.save({"model": SimCLR(hidden_size=4).state_dict(), "model_config": {"hidden_size": 4, "image_size": 84}},
               tmp_path / "simclr.pt")
    assert_refused_in_process(simclr_main.main, "--data-dir", simclr_data, "--export-only", "--checkpoint",
                              tmp_path / "simclr.pt", "--feature-save-dir", tmp_path / "features", "--hidden-size",
                              "16", text=f"--hidden-size 16: {tmp_path / 'simclr.pt'} holds a model of hidden_size 4",
                              roots=[simclr_data], capsys=capsys)
    assert not (tmp_path / "features").exists()



def test_builders_refuse_sizes_beyond_memory_at_start(tmp_path, capsys):
    """The procedural builders render everything in memory: sizes beyond it are refused before the work (the
    system killed them after minutes, without a word), naming their own flags."""
    assert_refused_in_process(synthetic_mimgnet_main, "--out", tmp_path / "images", "--size", "100000",
                              "--per-class", "2", text="--per-class 2 --size 100000 100000: the images of one class "
                                                       "as rendered would take", roots=[tmp_path], capsys=capsys)
    assert_refused_in_process(prepare_omniglot_main, "--synthetic", "--characters", "1000000000", "--out",
                              tmp_path / "omniglot", text="--characters 1000000000 --drawings 20: the drawings and "
                                                          "their rotations would take", roots=[tmp_path], capsys=capsys)
    assert os.listdir(tmp_path) == []
