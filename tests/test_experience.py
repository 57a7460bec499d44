"""The synthetic Omniglot generator, the figures, omniglot/evaluate.py on image folders and the report."""
import csv
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from data.synthetic_omniglot import build_synthetic_omniglot, generate_characters
from data.synthetic_omniglot import main as synthetic_main
from metagmvae import report
from metagmvae.folders import OutputFolder
from omniglot import evaluate, figures
from omniglot.dataset import load_omniglot
from omniglot.model import OmniglotGMVAE

from .conftest import REPO_ROOT, unlabel_queries

TILE = 28 * figures.SCALE


def test_generator_is_seeded_and_looks_like_omniglot():
    a = generate_characters(6, 8, seed=3)
    assert a.shape == (6, 8, 28, 28) and a.dtype == np.float32
    assert np.array_equal(a, generate_characters(6, 8, seed=3))
    assert not np.allclose(a, generate_characters(6, 8, seed=4))
    assert a.min() >= 0 and a.max() <= 1
    assert (a.max(axis=(2, 3)) > 0.5).all()  # every drawing has ink ...
    assert 0.01 < a.mean() < 0.2 and (a > 0.5).mean() < 0.2  # ... on a minority of the pixels


def test_drawings_of_a_character_are_closer_than_other_characters():
    x = generate_characters(12, 10, seed=0).reshape(12, 10, -1)
    distances = np.linalg.norm(x[:, :, None, None] - x[None, None], axis=-1)  # (C, I, C, I)
    same_class = np.eye(12, dtype=bool)[:, None, :, None] & ~np.eye(10, dtype=bool)[None, :, None, :]
    other_class = ~np.eye(12, dtype=bool)[:, None, :, None].repeat(10, 1).repeat(10, 3)
    assert distances[same_class].mean() < 0.9 * distances[other_class].mean()
    nearest_mean = np.linalg.norm(x[:, :, None] - x.mean(1)[None, None], axis=-1).argmin(-1)  # (C, I)
    assert (nearest_mean == np.arange(12)[:, None]).mean() > 0.6


def test_synthetic_build_has_the_layout_of_the_real_build(real_omniglot_sample, tmp_path, capsys):
    manifest = build_synthetic_omniglot(tmp_path / "syn", 30, drawings=20, seed=1)
    real, synthetic = load_omniglot(real_omniglot_sample), load_omniglot(tmp_path / "syn")
    assert {p.name for p in (tmp_path / "syn").iterdir()} == {p.name for p in real_omniglot_sample.iterdir()}
    for split in ("train", "val", "test"):
        assert synthetic[split].shape[1:] == real[split].shape[1:] and synthetic[split].dtype == real[split].dtype
        assert len(synthetic[split]) == 4 * manifest["split_counts"][split]
        assert manifest["shapes"][split] == list(np.load(tmp_path / "syn" / f"{split}.npy").shape)
    assert sum(manifest["split_counts"].values()) == 30
    train = synthetic["train"]
    assert torch.equal(train[1], torch.rot90(train[0], 1, dims=(-2, -1)))  # class 4c + r: rotated 90r degrees
    real_manifest = json.loads((real_omniglot_sample / "manifest.json").read_text())
    written = json.loads((tmp_path / "syn" / "manifest.json").read_text())
    assert set(real_manifest) - {"sources"} <= set(written) and written["synthetic"] is True
    assert written["generator"]["characters"] == 30 and written["generator"]["seed"] == 1
    synthetic_main(["--out", str(tmp_path / "cli"), "--characters", "6", "--drawings", "4", "--split", "4", "1", "1"])
    assert "train 4 characters -> [16, 4, 28, 28, 1]" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:
        synthetic_main(["--out", str(tmp_path / "bad"), "--characters", "6", "--split", "4", "1", "2"])
    assert exit_info.value.code == 2 and "--split 4 1 2" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    return OmniglotGMVAE(hidden_size=8, latent_size=4)


@pytest.fixture(scope="module")
def drawings():
    """(5 characters, 6 drawings, 1, 28, 28) tensor."""
    return torch.from_numpy(generate_characters(5, 6, seed=2))[:, :, None]


def png_size(path):
    with Image.open(path) as im:
        assert im.format == "PNG"
        return im.size


@pytest.fixture
def out(tmp_path):
    """An opened output folder for figures."""
    with OutputFolder(tmp_path / "figures", "test figures", "--out") as folder:
        yield folder


def test_figures_have_the_size_of_their_grid(tiny_model, drawings, out):
    images = drawings.flatten(0, 1)  # (30, 1, 28, 28)
    path = figures.save_reconstructions(tiny_model, images[:11], out / "rec.png", per_row=8)
    assert png_size(path) == (4 + 16 * (TILE + 4), 4 + 2 * (TILE + 4))  # 2 rows of 8 (input, output) pairs
    path = figures.save_episode_mixture(tiny_model, images[:15], 3, 5, out / "mix.png", max_items=12)
    assert png_size(path) == (4 + 13 * (TILE + 4), 4 + 3 * (TILE + 4))  # the mean and 12 items per component
    assert tiny_model.training  # the figures restore the mode they found
    support, y_support = drawings[:3, :2].flatten(0, 1), torch.arange(3).repeat_interleave(2)
    query, y_query = drawings[:3, 2:5].flatten(0, 1)[:7], torch.arange(3).repeat_interleave(3)[:7]
    predicted = y_query.clone()
    predicted[0] = 2
    path = figures.save_test_episode(support, y_support, query, y_query, predicted, out / "ep.png", per_row=4)
    cell = TILE + figures.LABEL_HEIGHT + 4
    support_height = 4 + 3 * cell
    assert png_size(path) == (4 + 4 * (TILE + 4), support_height + 4 + 2 * cell)
    with Image.open(path) as im:  # query 0 is wrong: red frame; query 1 is right: green frame
        assert im.getpixel((4 - 1, support_height + 4 + 10)) == figures.RED
        assert im.getpixel((4 + TILE + 4 - 1, support_height + 4 + 10)) == figures.GREEN


@pytest.mark.parametrize("steps", [[20], [1000, 2000, 3000]])
def test_learning_curves_have_three_panels(tmp_path, out, steps):
    metrics = tmp_path / "metrics.csv"
    with open(metrics, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["step", "rec", "kl", "loss", "val_1shot", "val_1shot_ci95", "val_5shot", "wall_time_s"])
        writer.writerows([[s, 100 / (i + 1), 3 + i, 0, 0.4 + 0.1 * i, 0.01, 0.6, s / 10] for i, s in enumerate(steps)])
    path = figures.save_learning_curves(figures.read_metrics_table(metrics), out / "curves.png")
    assert png_size(path) == (3 * figures.PANEL_WIDTH, figures.PANEL_HEIGHT)


def write_image(path, image, size):
    """A (28, 28) ink = 1 array as dark ink on white, resized to size x size, in the format of the suffix."""
    pixels = np.rint((1 - image) * 255).astype(np.uint8)
    Image.fromarray(pixels).resize((size, size), Image.LANCZOS).save(path)


@pytest.fixture(scope="module")
def episodes(omniglot_sample, tmp_path_factory):
    """Two 5-way episodes (2 support, 3 query per class) from the sample's test split, as image folders."""
    test = np.load(omniglot_sample / "test.npy")[:, :, :, :, 0]
    root = tmp_path_factory.mktemp("episodes")
    for e, (size, suffix) in enumerate([(105, ".png"), (56, ".bmp")]):
        for k, c in enumerate(range(4 * e, 4 * e + 20, 4)):  # 5 characters, unrotated
            for part, drawings in (("support", range(2)), ("query", range(2, 5))):
                folder = root / f"episode{e}" / part / f"char{c}"
                folder.mkdir(parents=True)
                for i in drawings:
                    write_image(folder / f"{i:02d}{suffix}", test[c, i], size)
    return root


@pytest.fixture(scope="module")
def checkpoint(tiny_model, tmp_path_factory):
    path = tmp_path_factory.mktemp("checkpoint") / "tiny.pt"
    torch.save({"model": tiny_model.state_dict(), "model_config": tiny_model.config}, path)
    return path


def test_images_are_converted_like_the_training_data(omniglot_sample, tmp_path):
    image = np.load(omniglot_sample / "test.npy")[0, 0, :, :, 0]
    write_image(tmp_path / "big.png", image, 105)
    assert abs(evaluate.load_image(tmp_path / "big.png") - image).mean() < 0.05
    Image.fromarray(np.rint(image * 255).astype(np.uint8)).save(tmp_path / "light_on_dark.png")
    assert np.allclose(evaluate.load_image(tmp_path / "light_on_dark.png"), image, atol=1 / 255)


def run_evaluate(*args):
    return subprocess.run([sys.executable, "omniglot/evaluate.py", *map(str, args)], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=120)


def test_evaluate_prints_episode_and_mean_accuracies(episodes, checkpoint):
    result = run_evaluate("--checkpoint", checkpoint, "--episodes", episodes, "--mc-samples", "4", "--em-iters", "2")
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.strip().splitlines()
    assert [line.split(":")[0] for line in lines] == ["episode0", "episode1", "mean accuracy"]
    assert all("/15 queries, 5-way)" in line for line in lines[:2])
    assert lines[2].endswith("% over 2 episodes")


def test_evaluate_writes_predictions_for_unlabelled_queries(episodes, checkpoint, tmp_path, capsys):
    root = tmp_path / "unlabelled"
    shutil.copytree(episodes / "episode0", root / "ep")
    unlabel_queries(root / "ep")
    evaluate.main(["--checkpoint", str(checkpoint), "--episodes", str(root), "--mc-samples", "4", "--em-iters", "2"])
    assert "wrote 15 predictions" in capsys.readouterr().out
    rows = list(csv.DictReader((tmp_path / "unlabelled-predictions" / "predictions.csv").open()))
    assert len(rows) == 15 and {r["episode"] for r in rows} == {"ep"}
    assert {r["predicted"] for r in rows} <= {p.name for p in (root / "ep" / "support").iterdir()}
    assert all(0.2 <= float(r["probability"]) <= 1 for r in rows)  # the top class of 5


def break_empty_support_class(ep):
    shutil.rmtree(ep / "support" / "char0")
    (ep / "support" / "char0").mkdir()
    return ep / "support" / "char0"


def break_query_class(ep):
    (ep / "query" / "char4").rename(ep / "query" / "unknown")
    return ep / "query" / "unknown"


def break_image(ep):
    (ep / "support" / "char8" / "00.png").write_bytes(b"not an image")
    return ep / "support" / "char8"


def break_support(ep):
    shutil.rmtree(ep / "support")
    return ep


@pytest.mark.parametrize("damage", [break_empty_support_class, break_query_class, break_image, break_support, None])
def test_evaluate_names_the_bad_folder(episodes, checkpoint, tmp_path, capsys, damage):
    root = tmp_path / "eps"
    root.mkdir()
    if damage is None:  # an empty episodes folder
        bad = root
    else:
        shutil.copytree(episodes / "episode0", root / "ep")
        bad = damage(root / "ep")
    with pytest.raises(SystemExit) as exit_info:
        evaluate.main(["--checkpoint", str(checkpoint), "--episodes", str(root)])
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and len(err.splitlines()) == 1 and str(bad) in err, err


def write_results(folder, name, results):
    folder.mkdir()
    (folder / name).write_text(json.dumps(results))
    return folder


def test_report_tables_runs_and_baselines(tmp_path, capsys):
    entry = {"mean": 0.95123, "ci95": 0.01234, "episodes": 1000, "checkpoint": "best_1shot.pt"}
    omniglot = write_results(tmp_path / "omni", "results.json", {
        "test": {"5way-1shot": entry, "5way-5shot": {**entry, "mean": 0.97, "ci95": 0.01}},
        "baselines": {"pixel_nearest_class_mean": {"5way-1shot": {"mean": 0.6, "ci95": 0.02, "episodes": 1000}}},
        "train_iters": 60000, "wall_time_s": 7200.0, "config": {"hidden_size": 64, "data_dir": "data/omniglot"}})
    mimgnet = write_results(tmp_path / "mimg", "eval_results.json", {
        "test": {"5way-20shot": {"mean": 0.6314, "ci95": 0.0071, "episodes": 500}},
        "config": {"data_dir": "data/imgnet/features", "shot": 1}})
    report.main([str(omniglot), str(mimgnet)])
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("| run | dataset | method | way | shot | accuracy (%) | episodes |") and len(lines) == 6
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in lines[2:]]
    assert cells[0] == [str(omniglot), "Omniglot", "Meta-GMVAE", "5", "1", "95.12 +- 1.23", "1000", "60000", "2.0 h"]
    assert cells[1][5] == "97.00 +- 1.00"
    assert cells[2][2:7] == ["pixel_nearest_class_mean", "5", "1", "60.00 +- 2.00", "1000"]
    assert cells[3] == [str(mimgnet), "Mini-ImageNet", "Meta-GMVAE", "5", "20", "63.14 +- 0.71", "500", "-", "-"]


def test_report_keeps_one_row_per_entry_whatever_the_names(tmp_path, capsys):
    """A | or a line break in a run's name stays inside its cell, and a Mini-ImageNet run (it saves --shot)
    whose data folder is named after omniglot is still a Mini-ImageNet run."""
    entry = {"mean": 0.5, "ci95": 0.01, "episodes": 1000}
    run = write_results(tmp_path / "a|b\nc", "results.json", {
        "test": {"5way-1shot": entry}, "config": {"shot": 1, "data_dir": "/home/me/omniglot-paper/features"}})
    report.main([str(run)])
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 3 and lines[2].count(" | ") == len(report.COLUMNS) - 1
    assert lines[2].startswith(f"| {tmp_path}/a\\|b\\x0ac | Mini-ImageNet | Meta-GMVAE |"), lines[2]


@pytest.mark.parametrize("content", [None, "{not json", '{"test": {"5way": {"mean": 1}}}'])
def test_report_refuses_missing_or_malformed_results(tmp_path, capsys, content):
    run = tmp_path / "run"
    run.mkdir()
    if content is not None:
        (run / "results.json").write_text(content)
    with pytest.raises(SystemExit) as exit_info:
        report.main([str(run)])
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and len(err.splitlines()) == 1 and str(run) in err, err


def test_prepare_omniglot_synthetic_flag_is_the_generator(tmp_path):
    script = [sys.executable, "data/prepare_omniglot.py", "--out", str(tmp_path / "cli"), "--synthetic",
              "--characters", "12", "--drawings", "20", "--seed", "4"]
    result = subprocess.run(script, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    build_synthetic_omniglot(tmp_path / "lib", 12, 20, seed=4)
    cli, lib = load_omniglot(tmp_path / "cli"), load_omniglot(tmp_path / "lib")
    assert all(torch.equal(cli[s], lib[s]) for s in cli)
    refused = subprocess.run(script + ["--source", str(tmp_path)], cwd=REPO_ROOT, capture_output=True, text=True,
                             timeout=120)
    assert refused.returncode == 2 and "drop --source" in refused.stderr
