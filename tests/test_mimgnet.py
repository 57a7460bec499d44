"""mimgnet/: the feature-space model, its loss, feature loading and the command line."""
import csv
import json
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch

from metagmvae.episodes import make_eval_set
from metagmvae.evaluation import logistic_regression_accuracies, nearest_class_mean_accuracies
from metagmvae.gmvae import count_parameters
from metagmvae.runfiles import load_checkpoint
from mimgnet.dataset import load_features
from mimgnet.model import REFERENCE_PREFIXES, FeatureGMVAE
from mimgnet.model import load_model

from .conftest import REPO_ROOT, kill_once_written, reference_key_shapes, to_reference_state_dict, torchrun


def test_parameter_count_and_reference_names():
    model = FeatureGMVAE()
    assert count_parameters(model) == 953_664
    ours = {k: tuple(v.shape) for k, v in to_reference_state_dict(model, REFERENCE_PREFIXES).items()}
    assert ours == reference_key_shapes("mimgnet")


def test_reconstruction_loss_is_the_squared_error_against_repeated_targets():
    torch.manual_seed(0)
    model = FeatureGMVAE(feature_size=12, latent_size=4)
    x, z = torch.rand(2, 3, 12), torch.randn(2, 3, 5, 4, requires_grad=True)
    fast = model.reconstruction_loss(x, z)
    naive = torch.nn.functional.mse_loss(model.decoder(z), x.unsqueeze(2).repeat(1, 1, 5, 1), reduction="sum")
    torch.testing.assert_close(fast, naive)
    torch.testing.assert_close(torch.autograd.grad(fast, z)[0], torch.autograd.grad(naive, z)[0])


def test_authors_checkpoint_gives_identical_predictions(tmp_path):
    torch.manual_seed(1)
    model = FeatureGMVAE(feature_size=16, latent_size=4).eval()
    path = tmp_path / "best.pth"
    torch.save({"state_dict": to_reference_state_dict(model, REFERENCE_PREFIXES), "accuracy": np.float64(0.4)}, path)
    loaded = load_model(path, torch.device("cpu"))
    support, query, labels = torch.rand(2, 5, 16), torch.rand(2, 10, 16), torch.arange(5).expand(2, 5)
    torch.manual_seed(2)
    expected = model.predict(support, labels, query, 5, 8, 3)
    torch.manual_seed(2)
    assert torch.equal(loaded.predict(support, labels, query, 5, 8, 3), expected)


def write_features(folder, classes=(8, 6, 6), per_class=40, dim=16, seed=0):
    """Non-negative features of well separated classes, class-major, with labels."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for split, c in zip(("train", "val", "test"), classes):
        centres = rng.random((c, 1, dim)) * 4
        features = np.maximum(centres + 0.3 * rng.normal(size=(c, per_class, dim)), 0).astype(np.float32)
        np.save(folder / f"{split}_features.npy", features.reshape(-1, dim))
        np.save(folder / f"{split}_labels.npy", np.repeat(np.arange(c), per_class))
    return folder


def test_features_load_class_major_and_the_reference_layout(tmp_path):
    data = load_features(write_features(tmp_path / "ours"))
    assert data["train"].shape == (8, 40, 16) and data["test"].shape == (6, 40, 16)
    reference = tmp_path / "reference"
    reference.mkdir()
    for i, (split, classes) in enumerate((("train", 64), ("val", 16), ("test", 20))):  # 600 rows per class
        rows = np.arange(classes * 600 * 3, dtype=np.float32).reshape(-1, 3) + 1e6 * (i + 1)  # other per split
        np.save(reference / f"{split}_features.npy", rows)
    train = load_features(reference)["train"]
    assert train.shape == (64, 600, 3) and train[1, 0, 0] == 1e6 + 600 * 3


def test_baselines_solve_separable_episodes(tmp_path):
    test = load_features(write_features(tmp_path), ("test",))["test"]
    eval_set = make_eval_set(test, 5, 1, 15, 20, 0, "test")
    assert nearest_class_mean_accuracies(eval_set).mean() > 0.95
    assert logistic_regression_accuracies(eval_set).mean() > 0.95


def run_main(*args):
    return subprocess.run([sys.executable, "mimgnet/main.py", *map(str, args)], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=300)


SMALL = ["--train-mc-sample-size", "8", "--test-mc-sample-size", "8", "--batch-size", "4", "--eval-episodes", "20",
         "--eval-shots", "1", "5", "20", "--lr", "1e-3"]


def test_train_and_test_end_to_end(tmp_path):
    data = write_features(tmp_path / "features")
    result = run_main("--data-dir", data, "--save-dir", tmp_path / "run", *SMALL, "--train-iters", "30",
                      "--freq-iters", "15")
    assert result.returncode == 0, result.stderr[-2000:]
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert set(results["test"]) == {"5way-1shot", "5way-5shot", "5way-20shot"}
    # one checkpoint, selected at --shot 1, is tested at every shot
    assert {r["checkpoint"] for r in results["test"].values()} == {str(tmp_path / "run" / "best_1shot.pt")}
    assert set(results["baselines"]) == {"feature_nearest_class_mean", "feature_logistic_regression"}
    assert all(0 <= r["mean"] <= 1 for r in results["test"].values())
    assert "baseline feature_logistic_regression" in result.stdout


@pytest.mark.parametrize("damage, text", [
    (lambda d: np.save(d / "val_features.npy", np.full((6 * 40, 16), np.nan, np.float32)), "contains NaN"),
    (lambda d: np.save(d / "test_features.npy", np.random.default_rng(0).random((6 * 40, 8), np.float32)),
     "feature sizes differ"),
    (lambda d: np.save(d / "test_features.npy", np.full((6 * 40, 16), 0.5, np.float32)),
     "test_features.npy: all 240 rows are the same feature vector; nothing tells the items apart"),
    (lambda d: [shutil.copyfile(d / f"train_{kind}.npy", d / f"test_{kind}.npy") for kind in ("features", "labels")],
     "class 0 of test_features.npy is class 0 of train_features.npy (the same 40 items, in any order"),
    (lambda d: [np.save(d / "test_features.npy", np.load(d / "val_features.npy") * np.float32(1.001)),
                shutil.copyfile(d / "val_labels.npy", d / "test_labels.npy")],
     "40 of the 40 items of class 5 of test_features.npy are items of class 5 of val_features.npy or copies"),
    (lambda d: np.save(d / "test_features.npy", np.load(d / "val_features.npy")
                       + np.random.default_rng(1).uniform(0, 0.05, (6 * 40, 16)).astype(np.float32)),
     "40 of the 40 items of class 5 of test_features.npy are items of class 5 of val_features.npy or copies"),
    (lambda d: np.save(d / "test_features.npy", np.load(d / "test_features.npy") * np.float32(1e-3)),
     "the features of test and train are on different scales (median row norms train 9.9, val 9.61, test 0.00898: "
     "more than 10x apart); every split must come from one encoder, unscaled"),
    (lambda d: np.save(d / "test_features.npy", np.load(d / "test_features.npy") * np.float32(1e-20)),
     "the features of test and train are on different scales"),  # not "the others are copies"
    (lambda d: (d / "train_labels.npy").unlink(), "label-free features must be the authors' train file"),
    (lambda d: np.save(d / "val_labels.npy", np.arange(6 * 40) % 6), "not class-major"),
    (lambda d: (d / "test_features.npy").unlink(), "test_features.npy not found"),
    (lambda d: (d / "manifest.json").write_text(json.dumps(
        {"feature_size": 16, "splits": {s: {"count": 600} for s in ("train", "val", "test")}})),
     "lists 600 x 16"),
])
def test_bad_features_are_refused(tmp_path, damage, text):
    data = write_features(tmp_path / "features")
    damage(data)
    result = run_main("--data-dir", data, "--save-dir", tmp_path / "run", *SMALL, "--train-iters", "2")
    assert result.returncode == 2 and text in result.stderr, result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_killed_run_resumes_to_the_same_numbers(tmp_path):
    data = write_features(tmp_path / "features")
    common = ["--data-dir", data, *SMALL, "--train-iters", "20", "--freq-iters", "10"]
    straight = run_main(*common, "--save-dir", tmp_path / "straight")
    assert straight.returncode == 0, straight.stderr[-2000:]
    killed = kill_once_written([sys.executable, "mimgnet/main.py", *common, "--save-dir", tmp_path / "run",
                                "--train-iters", "1000"], tmp_path / "run" / "last.pt")
    assert killed == -signal.SIGKILL and load_checkpoint(tmp_path / "run" / "last.pt")["step"] == 10
    resumed = run_main(*common, "--save-dir", tmp_path / "run", "--resume")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    first, second = (json.loads((tmp_path / d / "results.json").read_text()) for d in ("straight", "run"))
    assert first["test"] == {k: {**v, "checkpoint": v["checkpoint"].replace("/run/", "/straight/")}
                             for k, v in second["test"].items()}


def test_resume_on_other_features_or_another_shot_is_refused_before_writing(tmp_path):
    data = write_features(tmp_path / "features")
    common = [*SMALL, "--freq-iters", "2", "--save-dir", tmp_path / "run"]
    first = run_main("--data-dir", data, *common, "--train-iters", "2")
    assert first.returncode == 0, first.stderr[-2000:]
    other = shutil.copytree(data, tmp_path / "other")
    features = np.load(other / "train_features.npy")
    np.save(other / "train_features.npy", features + np.float32(0.01))
    files = {p: p.read_bytes() for p in (tmp_path / "run").rglob("*") if p.is_file()}
    refused = run_main("--data-dir", other, *common, "--train-iters", "4", "--resume")
    assert refused.returncode == 2 and f"--resume: --data-dir {other} holds other data than the run" in refused.stderr
    # --shot picks the validation score that selects best_*.pt: a resumed run keeps it
    refused = run_main("--data-dir", data, *common, "--train-iters", "4", "--resume", "--shot", "5")
    assert refused.returncode == 2 and "--resume with different settings than the saved run: --shot 5 (saved 1)" \
        in refused.stderr, refused.stderr
    assert {p: p.read_bytes() for p in (tmp_path / "run").rglob("*") if p.is_file()} == files


def test_label_free_selection(tmp_path):
    """val-elbo and last read no validation label: a validation split of 2 classes suffices for 5-way."""
    data = write_features(tmp_path / "features", classes=(8, 2, 6))
    common = ["--data-dir", data, *SMALL, "--train-iters", "20", "--freq-iters", "10"]
    refused = run_main(*common, "--save-dir", tmp_path / "acc")
    assert refused.returncode == 2 and "larger than the 2 classes of the val split" in refused.stderr
    for mode, checkpoint in (("val-elbo", "best_elbo.pt"), ("last", "last.pt")):
        result = run_main(*common, "--save-dir", tmp_path / mode, "--select-by", mode)
        assert result.returncode == 0, result.stderr[-2000:]
        results = json.loads((tmp_path / mode / "results.json").read_text())
        assert results["select_by"] == mode
        assert {r["checkpoint"] for r in results["test"].values()} == {str(tmp_path / mode / checkpoint)}
        header = (tmp_path / mode / "metrics.csv").read_text().splitlines()[0].split(",")
        assert not [c for c in header if c.startswith("val_") and c.endswith("shot")]
        assert ("val_loss" in header) == (mode == "val-elbo")
    elbo = load_checkpoint(tmp_path / "val-elbo" / "best_elbo.pt")
    assert elbo["step"] in (10, 20) and set(elbo["best"]) == {"elbo"}


def test_torchrun_trains_like_one_process(tmp_path):
    """mimgnet has no BatchNorm: two processes share the 4 episodes of a step and the evaluation episodes."""
    data = write_features(tmp_path / "features")
    flags = ["--data-dir", data, *SMALL, "--train-iters", "4", "--freq-iters", "2"]
    one = run_main(*flags, "--save-dir", tmp_path / "one")
    two = torchrun(*flags, "--save-dir", tmp_path / "two", script="mimgnet/main.py")
    assert one.returncode == 0 and two.returncode == 0, two.stderr[-3000:]
    rows = [list(csv.DictReader(open(run / "metrics.csv"))) for run in (tmp_path / "one", tmp_path / "two")]
    for a, b in zip(*rows):
        assert float(b["loss"]) == pytest.approx(float(a["loss"]), rel=1e-5)
        assert float(b["val_1shot"]) == pytest.approx(float(a["val_1shot"]), abs=0.005)  # a query may flip
