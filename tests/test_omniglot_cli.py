"""omniglot/main.py end to end on the real Omniglot sample, and its refusals of bad input."""
import csv
import json
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch

from metagmvae.folders import RECORD, OutputFolder
from metagmvae.runfiles import load_checkpoint

from .conftest import REPO_ROOT, kill_once_written

SMALL = ["--way", "5", "--sample-size", "20", "--batch-size", "2", "--train-mc-sample-size", "4",
         "--test-mc-sample-size", "4", "--hidden-size", "16", "--latent-size", "8", "--eval-episodes", "20",
         "--unsupervised-em-iters", "3", "--semisupervised-em-iters", "3"]


def run_main(*args, cwd=REPO_ROOT, script="omniglot/main.py"):
    return subprocess.run([sys.executable, script, *map(str, args)], cwd=cwd, capture_output=True, text=True,
                          timeout=300)


@pytest.fixture(scope="module")
def trained(omniglot_sample, tmp_path_factory):
    """A short run on the sample: 40 steps, validation every 20."""
    save = tmp_path_factory.mktemp("run") / "small"
    result = run_main("--data-dir", omniglot_sample, "--save-dir", save, *SMALL, "--train-iters", "40",
                      "--freq-iters", "20", "--seed", "3")
    assert result.returncode == 0, result.stderr[-2000:]
    return save, result


def test_run_writes_sane_files(trained):
    save, result = trained
    assert {p.name for p in save.iterdir()} >= {"config.json", "metrics.csv", "results.json", "last.pt",
                                                 "best_1shot.pt", "best_5shot.pt"}
    config = json.loads((save / "config.json").read_text())
    assert config["way"] == 5 and config["train_iters"] == 40
    rows = list(csv.DictReader((save / "metrics.csv").open()))
    assert [int(r["step"]) for r in rows] == [20, 40]
    assert float(rows[1]["loss"]) < float(rows[0]["loss"])  # rec + kl falls
    assert all(0 <= float(r["val_1shot"]) <= 1 and 0 <= float(r["val_5shot"]) <= 1 for r in rows)
    results = json.loads((save / "results.json").read_text())
    assert set(results["test"]) == {"5way-1shot", "5way-5shot"}
    for key, res in results["test"].items():
        assert 0 <= res["mean"] <= 1 and 0 < res["ci95"] < 0.2 and res["episodes"] == 20
        assert res["checkpoint"].endswith(f"best_{key[-5]}shot.pt")
    assert results["train_iters"] == 40 and results["wall_time_s"] > 0
    assert "5way-1shot:" in result.stdout
    state = load_checkpoint(save / "last.pt")
    assert state["step"] == 40 and state["model_config"] == {"hidden_size": 16, "latent_size": 8, "num_heads": 4}
    assert set(state) >= {"model", "optimizer", "rng", "config", "best"}


def test_same_seed_same_numbers_and_eval_only_reproduces(trained, omniglot_sample, tmp_path):
    save, _ = trained
    again = run_main("--data-dir", omniglot_sample, "--save-dir", tmp_path / "again", *SMALL, "--train-iters", "40",
                     "--freq-iters", "20", "--seed", "3", cwd=REPO_ROOT / "omniglot", script="main.py")
    assert again.returncode == 0, again.stderr[-2000:]
    first = json.loads((save / "results.json").read_text())["test"]
    second = json.loads((tmp_path / "again" / "results.json").read_text())["test"]
    assert {k: (v["mean"], v["ci95"]) for k, v in first.items()} == {k: (v["mean"], v["ci95"]) for k, v in second.items()}
    # the selected checkpoint, evaluated alone, scores exactly what the run reported
    alone = run_main("--data-dir", omniglot_sample, "--eval-only", "--checkpoint", save / "best_1shot.pt", *SMALL,
                     "--eval-shots", "1", "--seed", "3", "--save-dir", tmp_path / "eval")
    assert alone.returncode == 0, alone.stderr[-2000:]
    evaluated = json.loads((tmp_path / "eval" / "eval_results.json").read_text())["test"]["5way-1shot"]
    assert evaluated["mean"] == first["5way-1shot"]["mean"]


def test_eval_way_larger_than_training_way(trained, omniglot_sample, tmp_path):
    """A 5-way model tested on 20-way episodes (the model is barely trained: no accuracy is asserted)."""
    save, _ = trained
    result = run_main("--data-dir", omniglot_sample, "--eval-only", "--checkpoint", save / "best_5shot.pt", *SMALL,
                      "--eval-way", "20", "--eval-shots", "5", "--save-dir", tmp_path / "eval")
    assert result.returncode == 0, result.stderr[-2000:]
    results = json.loads((tmp_path / "eval" / "eval_results.json").read_text())
    assert set(results["test"]) == set(results["baselines"]["pixel_nearest_class_mean"]) == {"20way-5shot"}
    assert results["test"]["20way-5shot"]["episodes"] == 20
    # well-formed 20-way episodes: pixels alone score far above the 5% of chance
    assert results["baselines"]["pixel_nearest_class_mean"]["20way-5shot"]["mean"] > 0.3


def assert_refused(result, text):
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert text in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("flags, text", [
    (["--eval-way", "100"], "larger than the 60 classes of the val split"),
    (["--query", "19", "--eval-shots", "1", "5"], "larger than the 20 items per class"),
    (["--way", "30", "--eval-way", "5"], "--sample-size 20 is smaller than --way 30"),
    (["--train-iters", "0"], "--train-iters must be positive"),
    (["--eval-episodes", "-1"], "--eval-episodes must be positive"),
    (["--batch-size", "0"], "--batch-size must be positive"),
    (["--eval-shots", "0"], "--eval-shots must be positive"),
    (["--device", "cuda"] if not torch.cuda.is_available() else ["--gpu-id", "99", "--device", "cuda"],
     "--device cuda" if not torch.cuda.is_available() else "--gpu-id 99"),
])
def test_impossible_flags_are_refused(omniglot_sample, tmp_path, flags, text):
    result = run_main("--data-dir", omniglot_sample, "--save-dir", tmp_path / "run", *SMALL, *flags)
    assert_refused(result, text)
    assert not (tmp_path / "run").exists()


def test_missing_or_malformed_data(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    assert_refused(run_main("--data-dir", data, "--save-dir", tmp_path / "run", *SMALL), "train.npy not found")
    for name in ("train", "val", "test"):
        np.save(data / f"{name}.npy", np.full((6, 20, 28, 28, 1), 2.0, np.float32))
    assert_refused(run_main("--data-dir", data, "--save-dir", tmp_path / "run", *SMALL), "expected [0, 1]")
    np.save(data / "train.npy", np.zeros((6, 20, 28, 28), np.float32))
    assert_refused(run_main("--data-dir", data, "--save-dir", tmp_path / "run", *SMALL), "has shape (6, 20, 28, 28)")
    np.save(data / "train.npy", np.zeros((6, 20, 28, 28, 1), np.uint8))
    assert_refused(run_main("--data-dir", data, "--save-dir", tmp_path / "run", *SMALL), "has dtype uint8")
    np.save(data / "train.npy", np.full((6, 20, 28, 28, 1), np.nan, np.float32))
    assert_refused(run_main("--data-dir", data, "--save-dir", tmp_path / "run", *SMALL), "contains NaN")


def test_existing_run_is_not_overwritten_and_bad_checkpoint_is_refused(trained, omniglot_sample, tmp_path):
    save, _ = trained
    before = (save / "results.json").read_bytes()
    assert_refused(run_main("--data-dir", omniglot_sample, "--save-dir", save, *SMALL), "already holds a run")
    assert (save / "results.json").read_bytes() == before
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes((save / "last.pt").read_bytes()[:5000])
    assert_refused(run_main("--data-dir", omniglot_sample, "--eval-only", "--checkpoint", truncated, *SMALL),
                   "not a readable checkpoint")


def test_killed_run_resumes_to_the_same_numbers(trained, omniglot_sample, tmp_path):
    """SIGKILL once the step-20 checkpoint is written, then --resume: the uninterrupted run's numbers exactly."""
    save, _ = trained
    common = ["--data-dir", omniglot_sample, "--save-dir", tmp_path / "run", *SMALL, "--freq-iters", "20",
              "--seed", "3"]
    killed = kill_once_written([sys.executable, "omniglot/main.py", *common, "--train-iters", "1000"],
                               tmp_path / "run" / "last.pt")
    assert killed == -signal.SIGKILL and not (tmp_path / "run" / "results.json").exists()
    assert load_checkpoint(tmp_path / "run" / "last.pt")["step"] == 20
    common += ["--train-iters", "40"]
    assert_refused(run_main(*common, "--resume", "--lr", "1e-2"), "--lr 0.01 (saved 0.001)")
    # validation scores of another task would be compared with the saved ones to select best_*.pt
    assert_refused(run_main(*common, "--resume", "--eval-way", "3"), "--eval-way 3 (saved 5)")
    resumed = run_main(*common, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    straight = json.loads((save / "results.json").read_text())["test"]
    again = json.loads((tmp_path / "run" / "results.json").read_text())["test"]
    assert {k: v["mean"] for k, v in again.items()} == {k: v["mean"] for k, v in straight.items()}
    columns = ["step", "loss", "val_1shot", "val_5shot"]
    rows = [{c: r[c] for c in columns} for r in csv.DictReader((tmp_path / "run" / "metrics.csv").open())]
    assert rows == [{c: r[c] for c in columns} for r in csv.DictReader((save / "metrics.csv").open())]
    assert torch.equal(load_checkpoint(tmp_path / "run" / "last.pt")["model"]["decoder.0.weight"],
                       load_checkpoint(save / "last.pt")["model"]["decoder.0.weight"])


def test_demo_flags_pick_the_cpu_configuration_and_synthetic_data(tmp_path):
    from omniglot import main as omniglot_main

    args = omniglot_main.parse_args(["--demo"])
    assert (args.way, args.sample_size, args.batch_size, args.train_mc_sample_size) == (5, 100, 1, 8)
    assert args.data_dir == str(omniglot_main.DEMO_DATA_DIR) and args.save_dir == str(omniglot_main.DEMO_SAVE_DIR)
    assert not args.overwrite and not args.resume  # a demo replaces only an earlier demo run (main decides)
    mine = omniglot_main.parse_args(["--demo", "--data-dir", str(tmp_path), "--save-dir", str(tmp_path / "run")])
    assert mine.data_dir == str(tmp_path) and mine.save_dir == str(tmp_path / "run")


@pytest.mark.parametrize("script, flags, text", [
    ("omniglot", ["--debug", "--train-iters", "-5", "--freq-iters", "0"],
     "--debug sets --train-iters 20, --freq-iters 10, --eval-episodes 20: leave out --train-iters -5, --freq-iters 0"),
    ("mimgnet", ["--debug", "--eval-episodes", "7"], "leave out --eval-episodes 7"),
    ("omniglot", ["--demo", "--debug"], "--demo and --debug exclude each other"),
    ("simclr", ["--debug", "--train-epochs", "-3", "--feature-save-dir", "f"],
     "--debug sets --train-epochs 2: leave out --train-epochs -3"),
])
def test_flags_that_debug_sets_are_refused_when_given(capsys, script, flags, text):
    """--debug replaces them: a value given (invalid or not) would be silently ignored."""
    from mimgnet import main as mimgnet_main
    from omniglot import main as omniglot_main
    from simclr import main as simclr_main

    parse = {"omniglot": omniglot_main, "mimgnet": mimgnet_main, "simclr": simclr_main}[script].parse_args
    with pytest.raises(SystemExit) as exit_info:
        parse(flags)
    assert exit_info.value.code == 2 and text in capsys.readouterr().err
    assert parse(["--debug", *(flags[3:] if script == "simclr" else [])]).debug


def test_overwrite_replaces_every_file_of_the_old_run(trained, omniglot_sample, tmp_path):
    save, _ = trained
    run = tmp_path / "copy"
    shutil.copytree(save, run)
    with OutputFolder(run, "Omniglot run", "--save-dir") as folder:  # as --eval-only --save-dir writes it
        folder.write_json("eval_results.json", {})
    result = run_main("--data-dir", omniglot_sample, "--save-dir", run, *SMALL, "--eval-shots", "1",
                      "--train-iters", "2", "--overwrite")
    assert result.returncode == 0, result.stderr[-2000:]
    assert sorted(p.name for p in run.iterdir()) == [RECORD, "best_1shot.pt", "config.json", "figures", "last.pt",
                                                     "metrics.csv", "results.json"]
    assert [r["step"] for r in csv.DictReader((run / "metrics.csv").open())] == ["2"]
