"""Input that would make a result meaningless, or that cannot be read, is refused before anything is computed or
written (issue 22): exit code 2, one line on stderr naming the file or flag, no traceback, no file written."""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from data import prepare_mimgnet
from metagmvae import report
from mimgnet import main as mimgnet_main
from mimgnet.dataset import load_features
from mimgnet.model import FeatureGMVAE
from omniglot import cluster as omniglot_cluster
from omniglot import draw_figures
from omniglot import evaluate as omniglot_evaluate
from omniglot import main as omniglot_main
from omniglot.model import OmniglotGMVAE

from .conftest import REPO_ROOT
from .test_hostile_inputs import MIMGNET_FLAGS, OMNIGLOT_FLAGS, assert_refused_in_process, check_refusal, snapshot


def assert_refused_by_process(script, *args, text, roots):
    """`python script args` refused (check_refusal) within a minute (a FIFO would block it, a device never end
    it), the files under `roots` unchanged."""
    before = snapshot(*roots)
    result = subprocess.run([sys.executable, script, *map(str, args)], cwd=REPO_ROOT, capture_output=True,
                            text=True, timeout=60)
    check_refusal(result.returncode, result.stderr, text, argparse_error=False)
    assert snapshot(*roots) == before


# ---- data/prepare_mimgnet.py: splits must not share classes or images

@pytest.fixture
def split_csvs(tmp_path):
    """Images of three classes, one per split, and their split CSVs (each class has two images)."""
    (tmp_path / "images").mkdir()
    for k, name in enumerate(("a1", "a2", "b1", "b2", "c1", "c2")):
        Image.new("RGB", (8, 8), (10 + 30 * k, 20, 30)).save(tmp_path / "images" / f"{name}.jpg")
    for split, label in (("train", "na"), ("val", "nb"), ("test", "nc")):
        letter = label[1]
        (tmp_path / f"{split}.csv").write_text(f"filename,label\n{letter}1.jpg,{label}\n{letter}2.jpg,{label}\n")
    return tmp_path


@pytest.mark.parametrize("test_csv, text", [
    ("filename,label\na1.jpg,na\na2.jpg,na\n", "class na is listed in both train.csv and test.csv"),  # a copy
    ("filename,label\nc1.jpg,nc\nc2.jpg,nc\nb1.jpg,nb\nb2.jpg,nb\n", "class nb is listed in both val.csv and test.csv"),
    ("filename,label\nc1.jpg,nc\n./a1.jpg,nc\n", "image a1.jpg is listed in both train.csv and test.csv"),
])
def test_prepare_mimgnet_refuses_splits_that_share_classes_or_images(split_csvs, capsys, test_csv, text):
    (split_csvs / "test.csv").write_text(test_csv)
    assert_refused_in_process(prepare_mimgnet.main, "--images", split_csvs / "images", "--splits", split_csvs,
                              "--out", split_csvs / "out", text=text, roots=[split_csvs], capsys=capsys)
    assert not (split_csvs / "out").exists()


def test_prepare_mimgnet_refuses_a_fifo_as_split_csv_or_image(split_csvs):
    os.mkfifo(split_csvs / "fifo.jpg")
    (split_csvs / "val.csv").rename(split_csvs / "val_copy.csv")
    os.mkfifo(split_csvs / "val.csv")
    args = ["--images", split_csvs / "images", "--splits", split_csvs, "--out", split_csvs / "out"]
    assert_refused_by_process("data/prepare_mimgnet.py", *args, text="val.csv is a FIFO (named pipe), not a regular "
                              "file", roots=[split_csvs])
    (split_csvs / "val.csv").unlink()
    (split_csvs / "val_copy.csv").rename(split_csvs / "val.csv")
    (split_csvs / "images" / "b2.jpg").unlink()
    (split_csvs / "images" / "b2.jpg").symlink_to(split_csvs / "fifo.jpg")
    assert_refused_by_process("data/prepare_mimgnet.py", *args, text="b2.jpg is a FIFO (named pipe)",
                              roots=[split_csvs])
    assert not (split_csvs / "out").exists()
    # --skip-bad replaces it as an unreadable image, instead of blocking on it (by the class's next image: a
    # third one, since a class of two would then hold one picture twice, which the build refuses)
    Image.new("RGB", (8, 8), (250, 20, 30)).save(split_csvs / "images" / "b3.jpg")
    with open(split_csvs / "val.csv", "a") as f:
        f.write("b3.jpg,nb\n")
    result = subprocess.run([sys.executable, "data/prepare_mimgnet.py", *map(str, args), "--skip-bad"], cwd=REPO_ROOT,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    [skipped] = json.loads((split_csvs / "out" / "manifest.json").read_text())["splits"]["val"]["skipped"]
    assert skipped["file"] == "b2.jpg" and "is a FIFO" in skipped["reason"] and skipped["replaced_by"] == "b3.jpg"


# ---- python -m metagmvae.report: values, not only types

GOOD_RESULTS = {"test": {"5way-1shot": {"mean": 0.5, "ci95": 0.01, "episodes": 100}}, "config": {"hidden_size": 8},
                "train_iters": 100, "wall_time_s": 60.0}


def with_entry(**fields):
    return {**GOOD_RESULTS, "test": {"5way-1shot": {**GOOD_RESULTS["test"]["5way-1shot"], **fields}}}


@pytest.mark.parametrize("text, results", [
    ("test/5way-1shot/mean (NaN), expected an accuracy, a finite number in [0, 1]", json.dumps(with_entry(mean=None))
     .replace("null", "NaN")),
    ("test/5way-1shot/mean (true)", with_entry(mean=True)),
    ("test/5way-1shot/mean (1.5)", with_entry(mean=1.5)),
    ("test/5way-1shot/episodes (-5), expected an integer >= 2", with_entry(episodes=-5)),
    ("test/5way-1shot/episodes (1), expected an integer >= 2", with_entry(episodes=1)),
    ("test/5way-1shot/episodes (2.5)", with_entry(episodes=2.5)),
    ("test/5way-1shot/ci95 (-0.01)", with_entry(ci95=-0.01)),
    ("\"wall_time_s\" (Infinity), expected a finite number of seconds >= 0",
     json.dumps(GOOD_RESULTS).replace("60.0", "Infinity")),
    ("\"wall_time_s\" (\"60\")", {**GOOD_RESULTS, "wall_time_s": "60"}),
    ("\"wall_time_s\" (1000000000", json.dumps(GOOD_RESULTS).replace("60.0", "1" + "0" * 400)),
    ("\"config\" ([1, 2]), expected a dict of the run's flags", {**GOOD_RESULTS, "config": [1, 2]}),
    ("\"config\" (\"omniglot\")", {**GOOD_RESULTS, "config": "omniglot"}),
    ("\"train_iters\" (-1)", {**GOOD_RESULTS, "train_iters": -1}),
    ("entry test/1way-1shot", {**GOOD_RESULTS, "test": {"1way-1shot": GOOD_RESULTS["test"]["5way-1shot"]}}),
    ("not a results file (JSON nested too deeply to read)", "[" * 10000 + "]" * 10000),
    # what no run writes: more digits than Python turns into an int, other digits, other ways, impossible CIs
    ("test/5way-1shot/episodes (9999999999", json.dumps(with_entry(episodes=2)).replace("2}", "9" * 5000 + "}")),
    ("entry test/" + "9" * 37 + "..., expected",
     {**GOOD_RESULTS, "test": {"9" * 5000 + "way-1shot": GOOD_RESULTS["test"]["5way-1shot"]}}),
    ("entry test/\u0665way-1shot", {**GOOD_RESULTS, "test": {"\u0665way-1shot": GOOD_RESULTS["test"]["5way-1shot"]}}),
    ("entry test/05way-1shot", {**GOOD_RESULTS, "test": {"05way-1shot": GOOD_RESULTS["test"]["5way-1shot"]}}),
    ("entry test/20way-1shot, expected the 5-way episodes at --eval-shots [1] that its \"config\" tested",
     {**GOOD_RESULTS, "config": {"eval_way": 5, "eval_shots": [1]},
      "test": {"20way-1shot": GOOD_RESULTS["test"]["5way-1shot"]}}),
    ("entry test/5way-5shot, expected the 5-way episodes at --eval-shots [1]",
     {**GOOD_RESULTS, "config": {"eval_way": 5, "eval_shots": [1]},
      "test": {"5way-5shot": GOOD_RESULTS["test"]["5way-1shot"]}}),
    ("test/5way-1shot/ci95 (0.9), expected at most 0.1379, the widest 95% CI of 2 accuracies in [0, 1] with mean 0.01",
     with_entry(mean=0.01, ci95=0.9, episodes=2)),
    ("test/5way-1shot/ci95 (0.01), expected at most 0", with_entry(mean=1.0, ci95=0.01)),
    ("test/5way-1shot/episodes (1000), expected the --eval-episodes 20 that its \"config\" tested",
     {**with_entry(episodes=1000), "config": {"eval_episodes": 20}}),
    ('malformed results, the key "5way-1shot" twice in one object',
     json.dumps(GOOD_RESULTS).replace('"test": {', '"test": {"5way-1shot": {"mean": 0.9, "ci95": 0.01, '
                                                  '"episodes": 1000}, ')),
])
def test_report_refuses_values_that_make_no_row(tmp_path, capsys, text, results):
    path = tmp_path / "results.json"
    path.write_text(results if isinstance(results, str) else json.dumps(results))
    line = assert_refused_in_process(report.main, tmp_path, text=text, roots=[tmp_path], capsys=capsys)
    assert f"{path}: malformed" in line or "nested" in line


def test_report_prints_a_valid_file_and_refuses_a_fifo(tmp_path, capsys):
    (tmp_path / "results.json").write_text(json.dumps(GOOD_RESULTS))
    report.main([str(tmp_path)])
    assert "| Omniglot | Meta-GMVAE | 5 | 1 | 50.00 +- 1.00 | 100 | 100 | 1.0 min |" in capsys.readouterr().out
    (tmp_path / "results.json").write_text(json.dumps({**with_entry(mean=0.5, ci95=0.49, episodes=4),
                                                       "wall_time_s": 1e308, "train_iters": 2 ** 63 - 1}))
    report.main([str(tmp_path)])  # the widest CI there is (two episodes right, two wrong), the largest numbers
    assert (f"| Meta-GMVAE | 5 | 1 | 50.00 +- 49.00 | 4 | {2 ** 63 - 1} | 2.778e+304 h |"
            in capsys.readouterr().out)
    os.mkfifo(tmp_path / "eval")
    assert_refused_in_process(report.main, tmp_path / "eval", text="eval is a FIFO (named pipe), not a regular file",
                              roots=[tmp_path], capsys=capsys)



ENTRY = GOOD_RESULTS["test"]["5way-1shot"]


def with_baselines(baselines, **fields):
    return {**GOOD_RESULTS, "baselines": baselines, **fields}


def with_config(**config):
    return {**GOOD_RESULTS, "config": {**GOOD_RESULTS["config"], **config}}


@pytest.mark.parametrize("text, results", [
    # a baseline named "test" checked in place of the model's entries, which were printed unchecked or crashed
    ("test/5way-1shot/mean (7.5)", with_baselines({"test": {"5way-1shot": ENTRY}}, test={"5way-1shot": {
        "mean": 7.5, "ci95": -3, "episodes": 100}})),
    ("entry test/garbage, expected", with_baselines({"test": {"5way-1shot": ENTRY}}, test={"garbage": 1})),
    # baseline names that read as the model's entries or rows (which they replaced in the table), or no run writes
    ("baseline name \"test\", expected a name as a run writes it", with_baselines({"test": {"5way-1shot": ENTRY}})),
    ("baseline name \"Meta-GMVAE\"", with_baselines({"Meta-GMVAE": {"5way-1shot": ENTRY}})),
    ("baseline name \"meta-gmvae \"", with_baselines({"meta-gmvae ": {"5way-1shot": ENTRY}})),
    ("baseline name \"\"", with_baselines({"": {"5way-1shot": ENTRY}})),
    ("baseline name \"a|b\"", with_baselines({"a|b": {"5way-1shot": ENTRY}})),
    # a baseline's entries are named by their path and scored on the model's episodes
    ("entry baselines/knn, expected a dict", with_baselines({"knn": 5})),
    ("baselines/knn/5way-1shot/mean (2)", with_baselines({"knn": {"5way-1shot": {**ENTRY, "mean": 2}}})),
    ("baselines/knn (5way-5shot), expected keys among those of \"test\" (5way-1shot)",
     with_baselines({"knn": {"5way-5shot": ENTRY}})),
    ("baselines/knn/5way-1shot/episodes (200), expected the 100 episodes of test/5way-1shot",
     with_baselines({"knn": {"5way-1shot": {**ENTRY, "episodes": 200}}})),
    # config fields the checks use, of a type no run writes (true is 1, 100.0 == 100, 5 is no list)
    ("config/eval_shots (5), expected a non-empty list of positive integers", with_config(eval_shots=5)),
    ("config/eval_shots (\"15\")", with_config(eval_shots="15")),
    ("config/eval_shots ([true])", with_config(eval_shots=[True])),
    ("config/eval_shots ([1.0])", with_config(eval_shots=[1.0])),
    ("config/eval_shots ([])", with_config(eval_shots=[])),
    ("config/eval_way (\"5\"), expected an integer >= 2", with_config(eval_way="5")),
    ("config/eval_way (1)", with_config(eval_way=1)),
    ("config/eval_episodes (100.0), expected an integer >= 2", with_config(eval_episodes=100.0)),
    ("config/train_iters (\"100\")", with_config(train_iters="100")),
    ("config/hidden_size (true)", with_config(hidden_size=True)),
    ("config/data_dir (5), expected a folder", with_config(data_dir=5)),
    ("\"config\" (both hidden_size and shot)", with_config(shot=1)),
    # what the table prints beside what the config ran
    ("\"train_iters\" (60000), expected the --train-iters 100 that its \"config\" ran",
     {**with_config(train_iters=100), "train_iters": 60000}),
    ("\"test\" (5way-1shot), expected an entry at each --eval-shots [1, 5] that its \"config\" tested (none at shot "
     "5)", with_config(eval_way=5, eval_shots=[1, 5])),
    ("\"test\" (5way-1shot, 20way-1shot), expected entries of one way",
     {**GOOD_RESULTS, "test": {"5way-1shot": ENTRY, "20way-1shot": ENTRY}}),
])
def test_report_refuses_fields_trusted_for_their_type_or_name(tmp_path, capsys, text, results):
    path = tmp_path / "results.json"
    path.write_text(json.dumps(results))
    line = assert_refused_in_process(report.main, tmp_path, text=text, roots=[tmp_path], capsys=capsys)
    assert f"{path}: malformed" in line


def test_report_prints_a_run_with_baselines(tmp_path, capsys):
    """A file as a run writes it: the model's rows with its training, then each baseline's on the same keys."""
    test = {"5way-5shot": {**ENTRY, "mean": 0.9}, "5way-1shot": ENTRY}
    config = {"hidden_size": 8, "data_dir": "data/omniglot", "eval_way": 5, "eval_shots": [1, 5],
              "eval_episodes": 100, "train_iters": 100}
    (tmp_path / "results.json").write_text(json.dumps({**GOOD_RESULTS, "test": test, "config": config, "baselines": {
        "pixel_nearest_class_mean": {"5way-1shot": {**ENTRY, "mean": 0.3}, "5way-5shot": {**ENTRY, "mean": 0.4}}}}))
    report.main([str(tmp_path)])
    rows = [line.split(" | ")[2:8] for line in capsys.readouterr().out.splitlines()[2:]]
    assert rows == [["Meta-GMVAE", "5", "1", "50.00 +- 1.00", "100", "100"],
                    ["Meta-GMVAE", "5", "5", "90.00 +- 1.00", "100", "100"],
                    ["pixel_nearest_class_mean", "5", "1", "30.00 +- 1.00", "100", "-"],
                    ["pixel_nearest_class_mean", "5", "5", "40.00 +- 1.00", "100", "-"]]

# ---- Mini-ImageNet features: the label-free layout, labels, feature size

def save_features(folder, rows, labels=None, splits=("train", "val", "test"), feature_size=8):
    folder.mkdir(exist_ok=True)
    for split in splits:
        np.save(folder / f"{split}_features.npy", np.random.default_rng(0).random((rows, feature_size), np.float32))
        if labels is not None:
            np.save(folder / f"{split}_labels.npy", labels)
    return folder


@pytest.mark.parametrize("rows", [50 * 60, 600, 64 * 600 + 600])
def test_label_free_features_must_have_the_authors_layout(tmp_path, capsys, rows):
    data = save_features(tmp_path / "features", rows)
    assert_refused_in_process(mimgnet_main.main, "--data-dir", data, "--save-dir", tmp_path / "run", *MIMGNET_FLAGS,
                              "--train-iters", "1", text=f"train_features.npy has {rows} rows and there is no train_labels.npy giving each "
                                   "row's class; label-free features must be the authors' train file, 64 classes x 600 "
                                   "rows = 38400 rows", roots=[tmp_path], capsys=capsys)
    assert not (tmp_path / "run").exists()


def test_the_authors_layout_is_said_when_assumed(tmp_path, capsys):
    folder = tmp_path / "features"
    folder.mkdir()
    for split, classes, first in (("val", 16, 0), ("test", 20, 16)):  # rows: (the class over both splits, row)
        np.save(folder / f"{split}_features.npy",
                np.stack([np.repeat(np.arange(first, first + classes, dtype=np.float32), 600),
                          np.tile(np.arange(600, dtype=np.float32), classes)], 1))
    np.save(folder / "val_labels.npy", np.repeat(np.arange(16), 600))
    data = load_features(folder, ("val", "test"))
    assert data["test"].shape == (20, 600, 2) and (data["test"][:, :, 0] == torch.arange(16.0, 36.0)[:, None]).all()
    assert capsys.readouterr().out == (f"no labels files in {folder}: the authors' layout is assumed, test 20 classes "
                                       "of 600 rows each, class-major\n")


@pytest.mark.parametrize("labels, text", [
    (np.repeat(np.array(["cat", "dog"]), 30), "test_labels.npy holds <U3 labels; expected integer class indices"),
    (np.repeat(np.array([0.0, 1.0]), 30), "test_labels.npy holds float64 labels"),
    (np.repeat(np.array([1, 0], np.uint8), 30), "test_labels.npy: rows are not class-major"),
])
def test_labels_must_be_class_major_integers(tmp_path, capsys, labels, text):
    data = save_features(tmp_path / "features", 60, labels, splits=("test",))
    checkpoint = tmp_path / "model.pt"
    model = FeatureGMVAE(8, 4)
    torch.save({"model": model.state_dict(), "model_config": model.config}, checkpoint)
    assert_refused_in_process(mimgnet_main.main, "--data-dir", data, "--eval-only", "--checkpoint", checkpoint,
                              "--save-dir", tmp_path / "run", *MIMGNET_FLAGS, text=text, roots=[tmp_path],
                              capsys=capsys)


def test_eval_only_refuses_features_of_another_size_than_the_checkpoints(tmp_path, capsys):
    data = save_features(tmp_path / "features", 60, np.repeat(np.arange(2), 30), splits=("test",), feature_size=16)
    model = FeatureGMVAE(8, 4)
    torch.save({"model": model.state_dict(), "model_config": model.config}, tmp_path / "model.pt")
    assert_refused_in_process(mimgnet_main.main, "--data-dir", data, "--eval-only", "--checkpoint",
                              tmp_path / "model.pt", "--eval-way", "2", "--save-dir", tmp_path / "run", *MIMGNET_FLAGS,
                              text=f"model.pt takes 8 features but --data-dir {data} gives 16; pass the features the "
                                   "model was trained on", roots=[tmp_path], capsys=capsys)


@pytest.mark.parametrize("experiment", ["omniglot", "mimgnet"])
def test_eval_only_refuses_a_test_split_of_the_classes_the_checkpoint_trained_on(omniglot_data, tmp_path, capsys,
                                                                               experiment, monkeypatch):
    """The checkpoint's run config names its training data folder (absolute, though given relative) and the
    sha256 of each split; while that folder holds its train and val splits, they are compared with the test
    split of --data-dir, whatever else changed there (its test split gone), from any working folder: five
    training classes, or the val classes that selected the checkpoint, as another folder's test split are
    refused; the build's own test split copied elsewhere is tested."""
    if experiment == "omniglot":
        main, flags, split = omniglot_main.main, [*OMNIGLOT_FLAGS, "--batch-size", "1"], "{}.npy"
        data = shutil.copytree(omniglot_data, tmp_path / "data")
    else:
        main, flags, split = mimgnet_main.main, [*MIMGNET_FLAGS, "--way", "5", "--query", "2"], "{}_features.npy"
        data = tmp_path / "data"
        data.mkdir()
        rng = np.random.default_rng(0)
        for name in ("train", "val", "test"):
            np.save(data / f"{name}_features.npy", rng.random((8 * 20, 8), dtype=np.float32))
            np.save(data / f"{name}_labels.npy", np.repeat(np.arange(8), 20))
    monkeypatch.chdir(tmp_path)
    main(list(map(str, ["--data-dir", "data", "--save-dir", tmp_path / "run", *flags, "--train-iters", "2",
                        "--freq-iters", "2"])))  # --data-dir relative to tmp_path
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    checkpoint = tmp_path / "run" / "last.pt"
    for source in ("train", "val", "test"):
        folder = tmp_path / source
        folder.mkdir()
        array = np.load(data / split.format(source))[:5 * 20]
        np.save(folder / split.format("test"), array)
        if experiment == "mimgnet":
            np.save(folder / "test_labels.npy", np.repeat(np.arange(5), 20))
    shutil.move(data / split.format("test"), tmp_path / "moved away")
    for source, role in (("train", "trained on"), ("val", "was selected on")):
        assert_refused_in_process(main, "--data-dir", tmp_path / source, "--eval-only", "--checkpoint", checkpoint,
                                  *flags, roots=[tmp_path], capsys=capsys,
                                  text=f"--eval-only: class 0 of the {source} split of {data}, which {checkpoint} "
                                       f"{role} is class 0 of the test split of --data-dir {tmp_path / source}")
    main(list(map(str, ["--data-dir", tmp_path / "test", "--eval-only", "--checkpoint", checkpoint, *flags])))


def test_draw_figures_refuses_what_is_not_the_checkpoints(omniglot_data, tmp_path, capsys):
    """Its test-episode figure shows predictions on the val split: drawn on training classes, it would show
    memory; its learning curves must be the checkpoint's run's (a metrics.csv with the row of its step)."""
    data = shutil.copytree(omniglot_data, tmp_path / "data")
    omniglot_main.main(list(map(str, ["--data-dir", data, "--save-dir", tmp_path / "run", *OMNIGLOT_FLAGS,
                                      "--batch-size", "1", "--train-iters", "2", "--freq-iters", "2"])))
    other = tmp_path / "other"
    other.mkdir()
    shutil.copyfile(data / "train.npy", other / "val.npy")
    shutil.copyfile(data / "test.npy", other / "train.npy")
    figures = ["--checkpoint", tmp_path / "run" / "last.pt", "--out", tmp_path / "figures", "--way", "5",
               "--eval-way", "5", "--sample-size", "10", "--query", "2", "--test-mc-sample-size", "2", "--device", "cpu"]
    assert_refused_in_process(draw_figures.main, "--data-dir", other, *figures, roots=[tmp_path], capsys=capsys,
                              text=f"draw_figures.py: class 0 of the train split of {data}, which "
                                   f"{tmp_path / 'run' / 'last.pt'} trained on is class 0 of the val split of "
                                   f"--data-dir {other}")
    draw_figures.main(list(map(str, ["--data-dir", data, *figures])))
    # the learning curves of another run (4 steps, validated at 4) beside this checkpoint (saved at step 2)
    omniglot_main.main(list(map(str, ["--data-dir", data, "--save-dir", tmp_path / "other-run", *OMNIGLOT_FLAGS,
                                      "--batch-size", "1", "--train-iters", "4", "--freq-iters", "4"])))
    assert_refused_in_process(draw_figures.main, "--data-dir", data, *figures, "--metrics",
                              tmp_path / "other-run" / "metrics.csv", roots=[tmp_path], capsys=capsys,
                              text=f"--metrics {tmp_path / 'other-run' / 'metrics.csv'} has no row for step 2, at which "
                                   f"--checkpoint {tmp_path / 'run' / 'last.pt'} was saved")
    draw_figures.main(list(map(str, ["--data-dir", data, *figures, "--metrics", tmp_path / "run" / "metrics.csv"])))


def test_a_fifo_as_features_file_is_refused(tmp_path):
    data = save_features(tmp_path / "features", 60, np.repeat(np.arange(2), 30), splits=("train", "val"))
    os.mkfifo(data / "test_features.npy")
    assert_refused_by_process("mimgnet/main.py", "--data-dir", data, "--save-dir", tmp_path / "run", *MIMGNET_FLAGS,
                              text="test_features.npy is a FIFO (named pipe), not a regular file", roots=[tmp_path])


@pytest.mark.parametrize("name", ["train.npy", "train_images.npy", "manifest.json"])
def test_a_fifo_among_omniglot_or_simclr_arrays_is_named_as_such(tmp_path, name):
    data = tmp_path / "data"
    data.mkdir()
    if name == "manifest.json":  # read after valid image arrays
        for split in ("train", "val", "test"):
            np.save(data / f"{split}_images.npy", np.zeros((1, 2, 84, 84, 3), np.uint8))
    os.mkfifo(data / name)
    script = "omniglot/main.py" if name == "train.npy" else "simclr/main.py"
    assert_refused_by_process(script, "--data-dir", data, "--save-dir", tmp_path / "run", "--device", "cpu",
                              *([] if name == "train.npy" else ["--feature-save-dir", tmp_path / "features"]),
                              text=f"{name} is a FIFO (named pipe), not a regular file", roots=[tmp_path])


# ---- omniglot/draw_figures.py: the metrics table and what the figures need

@pytest.fixture(scope="module")
def figure_inputs(tmp_path_factory):
    """Omniglot arrays of 6 classes of 20 drawings per split (sparse ink on a 0 background) and a checkpoint."""
    folder = tmp_path_factory.mktemp("figures")
    rng = np.random.default_rng(0)
    for split in ("train", "val", "test"):
        np.save(folder / f"{split}.npy", (rng.random((6, 20, 28, 28, 1)) < 0.1).astype(np.float32))
    model = OmniglotGMVAE(8, 4)
    torch.save({"model": model.state_dict(), "model_config": model.config}, folder / "model.pt")
    return folder


def figures_out(folder):
    """Where draw_figures_flags draws: beside the data, not in it."""
    return folder.parent / f"{folder.name}-out"


def draw_figures_flags(folder, *extra):
    return ["--checkpoint", folder / "model.pt", "--data-dir", folder, "--out", figures_out(folder), "--device", "cpu",
            "--test-mc-sample-size", "2", *extra]


@pytest.mark.parametrize("rows, text", [
    ("step,rec,kl\n10,100,3\n20,inf,2\n", "metrics.csv:3: column 'rec' holds 'inf', not a metric of a run"),
    ("step,rec,kl\n10,100,3\n20,nan,2\n", "column 'rec' holds 'nan'"),
    ("step,rec,kl\n10,100,3\n20,1e308,2\n", "column 'rec' holds '1e308', not a metric of a run ('1e308' is not a "
                                            "finite float32 number)"),
    ("step,rec,val_1shot\n10,100,0.4\n20,90,40\n", "column 'val_1shot' holds '40'"),
    ("step,rec,kl\n10,100,3\n10,90,2\n", "the 'step' column is not increasing positive integers"),
    ("step,rec,kl\n10,100,3\n20,90\n", "metrics.csv:3: not the 3 cells of the header"),
    ("step,rec,kl\n10,100,3\n20,90,2,1\n", "metrics.csv:3: not the 3 cells of the header"),
    ("step,rec,kl\n10,100,3\n20,ninety,2\n", "column 'rec' holds 'ninety'"),
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xfe", "metrics.csv: not a metrics.csv table"),
    (b"step,rec\n10,\x00\x01\n", "metrics.csv:2: column 'rec' holds '\\x00\\x01'"),
])
def test_draw_figures_refuses_a_metrics_table_it_cannot_draw(figure_inputs, tmp_path, capsys, rows, text):
    metrics = tmp_path / "metrics.csv"
    metrics.write_bytes(rows if isinstance(rows, bytes) else rows.encode())
    assert_refused_in_process(draw_figures.main, *draw_figures_flags(figure_inputs, "--metrics", metrics), text=text,
                              roots=[figure_inputs, tmp_path], capsys=capsys)
    assert not figures_out(figure_inputs).exists()


@pytest.mark.parametrize("flags, text", [
    (["--eval-way", "100"], "--eval-way 100 is larger than the 6 classes of the val split"),
    (["--way", "100"], "--way 100 is more than the 60 items of the mixture figure (--sample-size 60)"),
    (["--way", "12", "--sample-size", "10"],
     "--way 12 is more than the 10 items of the mixture figure (--sample-size 10)"),
    (["--metrics", "no-such-metrics.csv"], "--metrics no-such-metrics.csv: no such file"),
])
def test_draw_figures_refuses_figures_the_data_cannot_give(figure_inputs, capsys, flags, text):
    assert_refused_in_process(draw_figures.main, *draw_figures_flags(figure_inputs, *flags), text=text,
                              roots=[figure_inputs], capsys=capsys)
    assert not figures_out(figure_inputs).exists()


def test_draw_figures_draws_curves_of_a_valid_table(figure_inputs, tmp_path, capsys):
    metrics = tmp_path / "metrics.csv"
    metrics.write_text("step,rec,kl,val_1shot\n10,100,3,0.4\n20,90,2,\n")  # an empty cell: no validation there
    flags = draw_figures_flags(figure_inputs, "--metrics", metrics, "--out", tmp_path / "out")
    draw_figures.main(list(map(str, flags)))
    assert (tmp_path / "out" / "curves.png").is_file()


# ---- image folders: links that lead nowhere, FIFOs

def break_file(path, kind):
    """Replace the file `path` by a broken symbolic link, a link loop or a FIFO."""
    path.unlink()
    if kind == "broken link":
        path.symlink_to(path.parent / "missing.png")
    elif kind == "link loop":
        path.symlink_to(path)
    else:
        os.mkfifo(path)


KINDS = {"broken link": "is a broken symbolic link", "link loop": "is a symbolic link loop",
         "fifo": "is a FIFO (named pipe)"}


@pytest.fixture
def image_folders(tmp_path, figure_inputs):
    """An episode folder (2-way, one support and one query image per class) and a checkpoint."""
    root = tmp_path / "episodes"
    for part in ("support", "query"):
        for k, name in enumerate(("a", "b")):
            (root / "e1" / part / name).mkdir(parents=True)
            image = Image.new("L", (28, 28), 255)
            ImageDraw.Draw(image).line((4 + 10 * k, 4, 24 - 10 * k, 24), fill=0, width=3)  # a stroke per class
            image.save(root / "e1" / part / name / "1.png")
    return root, figure_inputs / "model.pt"


@pytest.mark.parametrize("kind", KINDS)
def test_evaluate_refuses_an_image_that_is_a_broken_link_a_loop_or_a_fifo(image_folders, capsys, kind):
    root, checkpoint = image_folders
    image = root / "e1" / "query" / "b" / "1.png"
    break_file(image, kind)
    assert_refused_in_process(omniglot_evaluate.main, "--checkpoint", checkpoint, "--episodes", root, "--device",
                              "cpu", text=f"{image} {KINDS[kind]}, not a regular file", roots=[root], capsys=capsys)


def test_evaluate_refuses_a_class_folder_that_is_a_broken_link(image_folders, capsys):
    root, checkpoint = image_folders
    (root / "e1" / "support" / "c").symlink_to(root / "moved" / "c")  # a 3-way episode must not become 2-way
    assert_refused_in_process(omniglot_evaluate.main, "--checkpoint", checkpoint, "--episodes", root, "--device",
                              "cpu", text=f"{root / 'e1' / 'support' / 'c'} is a broken symbolic link",
                              roots=[root], capsys=capsys)


@pytest.mark.parametrize("kind", KINDS)
def test_cluster_refuses_an_image_that_is_a_broken_link_a_loop_or_a_fifo(image_folders, capsys, kind):
    root, checkpoint = image_folders
    image = root / "e1" / "support" / "a" / "1.png"
    break_file(image, kind)
    out = root.parent / "clusters"
    assert_refused_in_process(omniglot_cluster.main, "--checkpoint", checkpoint, "--images", root, "--clusters", "2",
                              "--out", out, "--device", "cpu", text=f"{image} {KINDS[kind]}, not a regular file",
                              roots=[root], capsys=capsys)
    assert not out.exists()


# ---- data/prepare_omniglot.py --source: regular files only

@pytest.mark.parametrize("source", ["/dev/zero", "fifo"])
def test_prepare_omniglot_reads_only_regular_files(tmp_path, source):
    if source == "fifo":
        source = tmp_path / "images.zip"
        os.mkfifo(source)
    kind = "a device" if source == "/dev/zero" else "a FIFO (named pipe)"
    assert_refused_by_process("data/prepare_omniglot.py", "--source", source, "--out", tmp_path / "out",
                              text=f"{source} is {kind}, not a regular file", roots=[tmp_path])
    assert not (tmp_path / "out").exists()


def test_prepare_omniglot_refuses_a_fifo_drawing_in_a_source_folder(tmp_path):
    drawing = tmp_path / "src" / "Alphabet" / "character01" / "0001_01.png"
    drawing.parent.mkdir(parents=True)
    os.mkfifo(drawing)
    assert_refused_by_process("data/prepare_omniglot.py", "--source", tmp_path / "src", "--out", tmp_path / "out",
                              text="0001_01.png is a FIFO (named pipe), not a regular file", roots=[tmp_path])


def test_more_episodes_than_a_split_holds_distinct_ones_are_refused(tmp_path, capsys):
    """2 classes of 2 drawings give 4 distinct 2-way 1-shot episodes with 1 query: 1000 of them would be the
    same few episodes counted as independent (a CI 16x too narrow); 40 distinct for 7 are enough."""
    model = OmniglotGMVAE(8, 4)
    torch.save({"model": model.state_dict(), "model_config": model.config}, tmp_path / "model.pt")
    rng = np.random.default_rng(0)
    drawings = np.zeros((5, 2, 28, 28, 1), np.float32)
    drawings[:, :, 6:22, 10:18] = rng.random((5, 2, 16, 8, 1)) < 0.3
    for name, classes in (("tiny", 2), ("small", 5)):
        (tmp_path / name).mkdir()
        np.save(tmp_path / name / "test.npy", drawings[:classes])
    flags = ["--eval-only", "--checkpoint", tmp_path / "model.pt", "--eval-way", "2", "--eval-shots", "1", "--query",
             "1", "--test-mc-sample-size", "2", "--device", "cpu"]
    assert_refused_in_process(omniglot_main.main, "--data-dir", tmp_path / "tiny", *flags, "--eval-episodes", "1000",
                              roots=[tmp_path], capsys=capsys,
                              text="--eval-episodes 1000: the test split (2 classes of 2 items) holds only 4 distinct "
                                   "2-way 1-shot episodes with 1 queries per class, fewer than 5 x 1000")
    results = omniglot_main.main(list(map(str, ["--data-dir", tmp_path / "small", *flags, "--eval-episodes", "7"])))
    assert results["test"]["2way-1shot"]["episodes"] == 7  # C(5, 2) x (2 x 1)^2 = 40 distinct, 5 x 7 = 35


def test_report_refuses_one_results_file_named_twice(tmp_path, capsys):
    """A run folder and its results.json (or the folder twice): one run's rows twice, as two runs."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "results.json").write_text(json.dumps({"test": {"5way-1shot": {"mean": 0.5, "ci95": 0.05,
                                                                         "episodes": 100}}}))
    assert_refused_in_process(report.main, run, run / "results.json", roots=[tmp_path], capsys=capsys,
                              text=f"{run / 'results.json'} and {run} are one results file")
