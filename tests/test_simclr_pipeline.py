"""data/prepare_mimgnet.py and simclr/main.py end to end on a tiny synthetic Mini-ImageNet.

The images come from data/synthetic_mimgnet.py (each class a shape and a texture in random colours),
72 x 96 so that preparing resizes them, with train.csv's classes put out of sorted order. Every output
goes under tmp_path.
"""
import csv
import io
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from data.prepare_mimgnet import load_image, prepare_mimgnet, read_split_csv
from data.synthetic_mimgnet import write_dataset
from metagmvae.folders import RECORD, OutputFolder, RunDir
from metagmvae.runfiles import UserError, load_checkpoint
from simclr.data import load_split
from simclr import trainer as simclr_trainer
from mimgnet import cluster as mimgnet_cluster
from mimgnet import evaluate as mimgnet_evaluate
from mimgnet.main import main as mimgnet_main
from simclr.main import main as simclr_main
from simclr.model import SimCLR
from simclr.trainer import FEATURES_KIND, export_features, load_model

from .conftest import REPO_ROOT, torchrun
from .test_hostile_inputs import assert_refused_in_process

PER_CLASS = 12
# split -> synsets in CSV order; train's is not sorted, to show that preparing keeps the CSV order
CLASSES = {
    "train": ["n00000003", "n00000001", "n00000004", "n00000002"],
    "val": ["n00000005", "n00000006"],
    "test": ["n00000007", "n00000008"],
}
SMALL = ["--debug", "--batch-size", "8", "--hidden-size", "8", "--device", "cpu", "--seed", "3"]  # 2 epochs x 2 batches


def make_dataset(root, seed=0):
    """Write root/images/*.jpg and root/{train,val,test}.csv with the classes in CLASSES' order; returns root."""
    write_dataset(root, {split: len(synsets) for split, synsets in CLASSES.items()}, PER_CLASS, (72, 96), seed)
    with open(root / "train.csv", newline="") as f:
        header, *rows = csv.reader(f)
    rows.sort(key=lambda row: CLASSES["train"].index(row[1]))  # stable: a class keeps its image order
    with open(root / "train.csv", "w", newline="") as f:
        csv.writer(f).writerows([header, *rows])
    return root


def run_script(script, *args):
    return subprocess.run([sys.executable, script, *map(str, args)], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=120)


def assert_refused(result, text):
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert text in result.stderr, result.stderr


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """The synthetic dataset prepared in its own folder: (folder, manifest)."""
    root = make_dataset(tmp_path_factory.mktemp("imgnet"))
    return root / "arrays", prepare_mimgnet(root / "images", root, root / "arrays")


@pytest.fixture(scope="module")
def trained(prepared, tmp_path_factory):
    """A --debug SimCLR run (2 epochs of 2 batches) via the command line: (save dir, feature dir, completed process)."""
    root = tmp_path_factory.mktemp("simclr")
    result = run_script("simclr/main.py", "--data-dir", prepared[0], "--save-dir", root / "run",
                        "--feature-save-dir", root / "features", *SMALL)
    assert result.returncode == 0, result.stderr[-3000:]
    return root / "run", root / "features", result


def load_features(folder):
    return {name: np.load(folder / f"{name}.npy") for split in ("train", "val", "test")
            for name in (f"{split}_features", f"{split}_labels")}


def test_prepare_writes_arrays_in_csv_order(prepared):
    root, manifest = prepared
    for split, classes in CLASSES.items():
        array = np.load(root / f"{split}_images.npy")
        assert array.shape == (len(classes), PER_CLASS, 84, 84, 3) and array.dtype == np.uint8
        info = manifest["splits"][split]
        assert info["classes"] == classes
        assert info["per_class"] == PER_CLASS and info["skipped"] == [] and info["csv"].endswith(f"{split}.csv")
        synset = classes[1]
        assert np.array_equal(array[1, 4], load_image(root.parent / "images" / f"{synset}{5:08d}.jpg"))
    assert json.loads((root / "manifest.json").read_text()) == manifest
    assert "BILINEAR" in manifest["preprocessing"]


def test_missing_image_is_an_error_and_writes_nothing(tmp_path):
    root = make_dataset(tmp_path / "imgnet")
    (root / "images" / "n0000000600000007.jpg").unlink()
    result = run_script("data/prepare_mimgnet.py", "--out", root / "arrays", "--images", root / "images", "--splits",
                        root)
    assert_refused(result, "n0000000600000007.jpg: image not found")
    assert sorted(p.name for p in root.iterdir()) == [RECORD, "images", "test.csv", "train.csv", "val.csv"]


def test_skip_bad_replaces_and_counts(tmp_path):
    root = make_dataset(tmp_path / "imgnet")
    (root / "images" / "n0000000100000003.jpg").unlink()
    (root / "images" / "n0000000800000012.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(UserError, match=r"n0000000100000003\.jpg: image not found"):
        prepare_mimgnet(root / "images", root, tmp_path / "out")
    (root / "images" / "n0000000100000003.jpg").write_bytes((root / "images" / "n0000000100000001.jpg").read_bytes())
    with pytest.raises(UserError, match=r"n0000000800000012\.jpg: unreadable image"):  # the last split
        prepare_mimgnet(root / "images", root, tmp_path / "out")
    assert not (tmp_path / "out").exists()  # the folder it created is removed again: no temporary file
    (root / "images" / "n0000000100000003.jpg").unlink()
    result = run_script("data/prepare_mimgnet.py", "--out", tmp_path / "out", "--images", root / "images",
                        "--splits", root, "--skip-bad")
    assert result.returncode == 0, result.stderr[-2000:]
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    train, test = (manifest["splits"][s]["skipped"] for s in ("train", "test"))
    assert [(r["file"], r["replaced_by"]) for r in train] == [("n0000000100000003.jpg", "n0000000100000004.jpg")]
    assert [(r["file"], r["replaced_by"]) for r in test] == [("n0000000800000012.jpg", "n0000000800000001.jpg")]
    assert "unreadable" in test[0]["reason"]
    array = np.load(tmp_path / "out" / "train_images.npy")
    assert np.array_equal(array[1, 2], array[1, 3])  # class n00000001 is second in train.csv


def test_malformed_csvs_are_refused(tmp_path):
    root = make_dataset(tmp_path / "imgnet")
    lines = (root / "val.csv").read_text().splitlines()
    (root / "val.csv").write_text("\n".join(lines[:-1]) + "\n")  # n00000006 has one image less
    with pytest.raises(UserError, match=r"class n00000006 has 11 images but n00000005 has 12"):
        prepare_mimgnet(root / "images", root, root / "arrays")
    (root / "val.csv").write_text("\n".join(lines[:3] + ["n0000000500000004.jpg"] + lines[4:]) + "\n")
    with pytest.raises(UserError, match=r"val\.csv:4: expected 2 non-empty columns"):
        read_split_csv(root / "val.csv")
    (root / "test.csv").write_text("file,class\n")
    with pytest.raises(UserError, match=r"test\.csv:1: expected the header filename,label"):
        read_split_csv(root / "test.csv")
    assert not any(root.glob("*.npy")) and not (root / "manifest.json").exists()


def test_real_split_csvs_parse(shared_data):
    splits = {s: read_split_csv(shared_data / "mini-imagenet-splits" / f"{s}.csv") for s in ("train", "val", "test")}
    assert {s: len(c) for s, c in splits.items()} == {"train": 64, "val": 16, "test": 20}
    assert all(len(files) == 600 for classes in splits.values() for files in classes.values())
    assert not set(splits["train"]) & set(splits["val"]) and not set(splits["train"]) & set(splits["test"])
    assert next(iter(splits["train"])) == "n01532829"


def test_load_split_validates_files(prepared, tmp_path):
    images, labels, names = load_split(prepared[0], "val")
    assert images.shape == (2 * PER_CLASS, 3, 84, 84) and images.dtype == torch.uint8
    assert labels.tolist() == [0] * PER_CLASS + [1] * PER_CLASS and names == ["n00000005", "n00000006"]
    with pytest.raises(UserError, match="val_images.npy not found"):
        load_split(tmp_path, "val")
    np.save(tmp_path / "val_images.npy", np.zeros((2, 3, 84, 84, 3), np.float32))
    with pytest.raises(UserError, match="val_images.npy has dtype float32"):
        load_split(tmp_path, "val")
    np.save(tmp_path / "val_images.npy", np.zeros((6, 84, 84, 3), np.uint8))
    with pytest.raises(UserError, match=r"val_images.npy has shape \(6, 84, 84, 3\)"):
        load_split(tmp_path, "val")


def test_training_run_writes_checkpoint_metrics_and_features(trained):
    save, features_dir, result = trained
    state = load_checkpoint(save / "last.pt")
    assert state["epoch"] == 2 and state["model_config"] == {"hidden_size": 8, "image_size": 84}
    assert set(state) >= {"model", "optimizer", "scheduler", "rng", "shuffle_rng", "augment_rng", "config"}
    assert state["config"]["batch_size"] == 8 and json.loads((save / "config.json").read_text())["seed"] == 3
    rows = list(csv.DictReader((save / "metrics.csv").open()))
    assert [int(r["epoch"]) for r in rows] == [1, 2] and float(rows[0]["lr"]) == 1e-3
    assert float(rows[1]["lr"]) == pytest.approx(5e-4) and all(np.isfinite(float(r["loss"])) for r in rows)
    features = load_features(features_dir)
    for split, classes in CLASSES.items():
        assert features[f"{split}_features"].shape == (len(classes) * PER_CLASS, 32)
        assert features[f"{split}_features"].dtype == np.float32
        assert np.isfinite(features[f"{split}_features"]).all()
        assert features[f"{split}_labels"].dtype == np.int64
        assert features[f"{split}_labels"].tolist() == np.repeat(np.arange(len(classes)), PER_CLASS).tolist()
    manifest = json.loads((features_dir / "manifest.json").read_text())
    assert manifest["feature_size"] == 32 and manifest["checkpoint"] == str(save / "last.pt")
    assert manifest["splits"]["train"]["classes"] == CLASSES["train"]
    assert "test: 24 x 32 features of 2 classes" in result.stdout


class Interrupted(Exception):
    """Stands for a crash right after the first epoch's checkpoint."""


def test_resume_and_export_only_reproduce_the_run_bit_for_bit(prepared, trained, tmp_path, monkeypatch):
    save, features_dir, _ = trained
    flags = ["--data-dir", str(prepared[0]), "--save-dir", str(tmp_path / "run"),
             "--feature-save-dir", str(tmp_path / "features"), *SMALL]

    def save_then_crash(run, name, state):
        save_checkpoint(run, name, state)
        raise Interrupted

    save_checkpoint = RunDir.save_checkpoint
    monkeypatch.setattr(RunDir, "save_checkpoint", save_then_crash)
    with pytest.raises(Interrupted):
        simclr_main(flags)
    monkeypatch.undo()
    assert load_checkpoint(tmp_path / "run" / "last.pt")["epoch"] == 1
    simclr_main(flags + ["--resume"])
    resumed, straight = (load_checkpoint(p / "last.pt")["model"] for p in (tmp_path / "run", save))
    assert all(torch.equal(resumed[k], straight[k]) for k in straight)
    expected = load_features(features_dir)
    for name, array in load_features(tmp_path / "features").items():
        assert np.array_equal(array, expected[name]), name
    simclr_main(["--data-dir", str(prepared[0]), "--feature-save-dir", str(tmp_path / "exported"), "--export-only",
                 "--checkpoint", str(save / "last.pt"), "--batch-size", "7"])
    for name, array in load_features(tmp_path / "exported").items():
        assert np.array_equal(array, expected[name]), name


def test_refusals(prepared, trained, tmp_path, capsys):
    save, _, _ = trained
    data = ["--data-dir", str(prepared[0]), "--feature-save-dir", str(tmp_path / "features")]
    cases = [
        (["--save-dir", str(save), *SMALL], "already holds a run; pass --resume"),
        (["--save-dir", str(save), *SMALL[:-1], "4", "--resume"], "--seed 4 (saved 3)"),
        (["--save-dir", str(tmp_path / "run"), "--batch-size", "64"], "fewer than one batch of --batch-size 64"),
        (["--export-only"], "--export-only needs --checkpoint"),
    ]
    for flags, text in cases:
        with pytest.raises(SystemExit) as exit_info:
            simclr_main(data + flags)
        assert exit_info.value.code == 2 and text in capsys.readouterr().err
    assert not (tmp_path / "features").exists() and not (tmp_path / "run").exists()
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes((save / "last.pt").read_bytes()[:3000])
    assert_refused(run_script("simclr/main.py", *data, "--export-only", "--checkpoint", truncated),
                   "not a readable checkpoint")


def test_resume_on_other_images_is_refused_before_writing(prepared, trained, tmp_path, capsys):
    save, _, _ = trained
    other = shutil.copytree(prepared[0], tmp_path / "other")
    (other / RECORD).unlink()  # data of the user's own (with its record, a changed file is refused as such)
    images = np.load(other / "train_images.npy")
    images[0, 0] = 255 - images[0, 0]
    np.save(other / "train_images.npy", images)
    assert_refused_in_process(simclr_main, "--data-dir", other, "--save-dir", save, "--feature-save-dir",
                              tmp_path / "features", *SMALL, "--resume",
                              text=f"--resume: --data-dir {other} holds other data than the run of {save}/last.pt",
                              roots=[save, tmp_path], capsys=capsys)


@pytest.mark.parametrize("change", ["copied", "saved again as JPEG"])
def test_a_class_in_two_splits_is_refused_before_training(prepared, trained, tmp_path, capsys, change):
    """A test class whose images are a validation class's (byte for byte, or each saved again as JPEG):
    training and --export-only refuse it at start, comparing the images' 4x4-pixel block means, before
    SimCLR trains for hours on data whose features mimgnet/main.py would refuse."""
    save, _, _ = trained
    data = shutil.copytree(prepared[0], tmp_path / "data")
    (data / RECORD).unlink()  # data of the user's own (with its record, a changed file is refused as such)
    test, val = np.load(data / "test_images.npy"), np.load(data / "val_images.npy")
    test[0] = val[0] if change == "copied" else [jpeg_copy(image) for image in val[0]]
    np.save(data / "test_images.npy", test)
    text = f"{data} (images compared as 4x4-pixel block means): "
    text += ("class 0 of test_images.npy is class 0 of val_images.npy" if change == "copied" else
             f"{PER_CLASS} of the {PER_CLASS} items of class 0 of test_images.npy are items of class 0 of "
             "val_images.npy or copies of them")
    features = tmp_path / "features"
    assert_refused_in_process(simclr_main, "--data-dir", data, "--feature-save-dir", features, "--export-only",
                              "--checkpoint", save / "last.pt", "--batch-size", "7", text=text, roots=[tmp_path],
                              capsys=capsys)
    assert_refused_in_process(simclr_main, "--data-dir", data, "--save-dir", tmp_path / "run", "--feature-save-dir",
                              features, *SMALL, text=text, roots=[tmp_path], capsys=capsys)
    assert not features.exists() and not (tmp_path / "run").exists()


def jpeg_copy(image):
    """(84, 84, 3) uint8 -> the same image after a round trip through JPEG at quality 90."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, "JPEG", quality=90)
    return np.asarray(Image.open(buffer))


def test_export_refuses_an_encoder_that_merges_two_classes_before_writing(prepared, trained, tmp_path, monkeypatch):
    """Export checks the features too (images that differ can still encode alike), before its first write, and
    names the encoder: the images were found distinct before (check_data)."""
    save, _, _ = trained
    encoded = {}

    def merging_encode(model, images, batch_size, device):  # test class 0 encoded as val class 0
        features = real_encode(model, images, batch_size, device)
        split = ("train", "val", "test")[len(encoded)]
        encoded[split] = features
        if split == "test":
            per_class = len(features) // len(load_split(prepared[0], "test")[2])
            features[:per_class] = encoded["val"][:per_class]
        return features
    real_encode = simclr_trainer.encode
    monkeypatch.setattr(simclr_trainer, "encode", merging_encode)
    with pytest.raises(UserError, match=f"{save / 'last.pt'} encodes images of different classes alike \\(the "
                                        f"features of {prepared[0]}: class 0 of test_features.npy is class 0 of "
                                        "val_features.npy"):
        export_features(load_model(save / "last.pt", "cpu"), prepared[0], tmp_path / "features", save / "last.pt", 7,
                        "cpu")
    assert not (tmp_path / "features").exists()


def test_output_folders_inside_an_input_or_each_other_or_over_a_users_file_are_refused_at_start(prepared, tmp_path,
                                                                                                  capsys):
    """Refused before training, writing nothing: --save-dir inside --data-dir, --save-dir inside
    --feature-save-dir, and a feature folder whose train_features.npy is not the one this project wrote."""
    data = shutil.copytree(prepared[0], tmp_path / "data")
    features = tmp_path / "features"
    with OutputFolder(features, FEATURES_KIND, "--feature-save-dir") as folder:
        folder.write_bytes("train_features.npy", b"exported")
    (features / "train_features.npy").write_bytes(b"edited by the user")
    refuse = dict(roots=[tmp_path], capsys=capsys)
    assert_refused_in_process(simclr_main, "--data-dir", data, "--save-dir", data / "run", "--feature-save-dir",
                              tmp_path / "f", *SMALL, text=f"--save-dir {data / 'run'} lies inside --data-dir", **refuse)
    assert_refused_in_process(simclr_main, "--data-dir", data, "--save-dir", tmp_path / "f" / "run",
                              "--feature-save-dir", tmp_path / "f", *SMALL,
                              text=f"--save-dir {tmp_path / 'f' / 'run'} lies inside --feature-save-dir", **refuse)
    assert_refused_in_process(simclr_main, "--data-dir", data, "--save-dir", tmp_path / "run", "--feature-save-dir",
                              features, *SMALL, text=f"{features / 'train_features.npy'} was not written by this "
                                                     "project", **refuse)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "features"]


def test_exported_features_feed_mimgnet_end_to_end(trained, tmp_path):
    """images -> prepare -> SimCLR -> export -> mimgnet training and evaluation, all from the command line."""
    _, features, _ = trained
    result = run_script("mimgnet/main.py", "--data-dir", features, "--save-dir", tmp_path / "gmvae", "--way", "2",
                        "--sample-size", "4", "--batch-size", "2", "--train-mc-sample-size", "4",
                        "--test-mc-sample-size", "4", "--query", "5", "--eval-shots", "1", "5", "--train-iters", "6",
                        "--freq-iters", "3", "--eval-episodes", "6", "--latent-size", "4")
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((tmp_path / "gmvae" / "results.json").read_text())
    assert set(results["test"]) == {"2way-1shot", "2way-5shot"}
    assert all(0 <= r["mean"] <= 1 and r["episodes"] == 6 for r in results["test"].values())


def test_features_of_another_encoder_are_refused_by_a_model_trained_on_one(prepared, trained, tmp_path, capsys):
    """A Mini-ImageNet model trained on encoder A's export, given encoder B's features (another SimCLR network
    of the same size: features of the same scale), is refused by --eval-only, evaluate.py and cluster.py, and
    so is A's export with B's val and test features copied in; A's own features and encoder are accepted."""
    save, features_a, _ = trained
    torch.manual_seed(5)
    torch.save({"model": SimCLR(hidden_size=8).state_dict(), "model_config": {"hidden_size": 8, "image_size": 84}},
               tmp_path / "b.pt")
    simclr_main(["--data-dir", str(prepared[0]), "--feature-save-dir", str(tmp_path / "features_b"), "--export-only",
                 "--checkpoint", str(tmp_path / "b.pt"), "--batch-size", "8"])
    tiny = ["--way", "2", "--sample-size", "4", "--batch-size", "2", "--train-mc-sample-size", "2",
            "--test-mc-sample-size", "2", "--query", "3", "--eval-shots", "1", "--train-iters", "2",
            "--freq-iters", "2", "--eval-episodes", "2", "--latent-size", "4", "--device", "cpu"]
    mimgnet_main(["--data-dir", str(features_a), "--save-dir", str(tmp_path / "gmvae"), *tiny])
    checkpoint = tmp_path / "gmvae" / "last.pt"
    refuse = dict(roots=[tmp_path], capsys=capsys)
    eval_only = ["--eval-only", "--checkpoint", checkpoint, *tiny]
    assert_refused_in_process(mimgnet_main, "--data-dir", tmp_path / "features_b", *eval_only, **refuse,
                              text=f"{checkpoint} was trained on the features of another SimCLR encoder than "
                                   f"--data-dir {tmp_path / 'features_b'}")
    mimgnet_main(["--data-dir", str(features_a), *map(str, eval_only)])
    episodes = tmp_path / "episodes"  # one 2-way episode of test images, 3 per class
    images = np.load(prepared[0] / "test_images.npy")  # (C, I, 84, 84, 3)
    for c in range(2):
        for i, part in enumerate(["support"] + ["query"] * 3):
            (episodes / "ep0" / part / f"c{c}").mkdir(parents=True, exist_ok=True)
            Image.fromarray(images[c, i]).save(episodes / "ep0" / part / f"c{c}" / f"{i}.png")
    for main, flags in ((mimgnet_evaluate.main, ["--episodes", episodes, "--mc-samples", "2"]),
                        (mimgnet_cluster.main, ["--images", episodes / "ep0" / "query", "--clusters", "2",
                                                "--mc-sample-size", "2", "--restarts", "1"])):
        assert_refused_in_process(main, "--encoder", tmp_path / "b.pt", "--checkpoint", checkpoint, *flags,
                                  "--device", "cpu", **refuse, text=f"{checkpoint} was trained on the features of "
                                                                    f"another SimCLR encoder than --encoder")
    mimgnet_evaluate.main(list(map(str, ["--encoder", save / "last.pt", "--checkpoint", checkpoint,
                                         "--episodes", episodes, "--mc-samples", "2", "--device", "cpu"])))
    mixed = shutil.copytree(features_a, tmp_path / "mixed")
    for name in ("val_features.npy", "test_features.npy"):
        shutil.copyfile(tmp_path / "features_b" / name, mixed / name)
    assert_refused_in_process(mimgnet_main, "--data-dir", mixed, "--save-dir", tmp_path / "gmvae2", *tiny, **refuse,
                              text=f"--data-dir {mixed}: test_features.npy, val_features.npy changed since the "
                                   "command that wrote the folder wrote them")


def test_torchrun_simclr_trains_and_exports_like_one_process(prepared, trained, tmp_path):
    result = torchrun("--data-dir", prepared[0], "--save-dir", tmp_path / "run", "--feature-save-dir",
                      tmp_path / "features", *SMALL, script="simclr/main.py")
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("wrote ") == 1  # rank 0 alone exports and prints
    one, two = (list(csv.DictReader(open(run / "metrics.csv"))) for run in (trained[0], tmp_path / "run"))
    # float32: the first batch differs by rounding only, the next after Adam amplified it (test_distributed.py)
    for a, b in zip(one, two):
        assert float(b["loss"]) == pytest.approx(float(a["loss"]), rel=1e-4)
    features_one, features_two = load_features(trained[1]), load_features(tmp_path / "features")
    for name, array in features_one.items():
        assert features_two[name].shape == array.shape
        np.testing.assert_allclose(features_two[name], array, rtol=0, atol=0.02)


def test_a_split_replaced_during_training_is_refused_before_the_export(prepared, tmp_path, capsys, monkeypatch):
    """The export reads the image arrays anew after training (hours): they are checked again, so a test split
    replaced meanwhile is refused as such, not exported, nor blamed on the encoder."""
    data = shutil.copytree(prepared[0], tmp_path / "data")
    fit = simclr_trainer.fit

    def fit_then_replace(*args, **kwargs):
        fit(*args, **kwargs)
        images = np.load(data / "test_images.npy")
        np.save(data / "test_images.npy", images[::-1].copy())  # another split, classes in another order
    monkeypatch.setattr(simclr_trainer, "fit", fit_then_replace)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:  # stderr also holds the progress bars of training
        simclr_main(list(map(str, ["--data-dir", data, "--save-dir", tmp_path / "run", "--feature-save-dir",
                                   tmp_path / "features", *SMALL])))
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "Traceback" not in err
    assert err.splitlines()[-1].startswith(f"simclr/main.py: error: --data-dir {data}: test_images.npy changed since "
                                           "the command that wrote the folder wrote it"), err
    assert not (tmp_path / "features").exists()


def test_export_only_refuses_val_or_test_images_the_encoder_trained_on(prepared, trained, tmp_path, capsys):
    """Another build of the same images whose test split is the encoder's training images: their features
    would be tested as new classes. The encoder's run config names its data folder and the sha256 of its
    train split; while that folder holds it, the export compares."""
    save, _, _ = trained
    data, swapped = prepared[0], tmp_path / "swapped"
    swapped.mkdir()
    manifest = json.loads((data / "manifest.json").read_text())
    train, test = np.load(data / "train_images.npy"), np.load(data / "test_images.npy")
    np.save(swapped / "train_images.npy", test)
    np.save(swapped / "test_images.npy", train[:2])
    shutil.copyfile(data / "val_images.npy", swapped / "val_images.npy")
    splits = manifest["splits"]
    splits["train"]["classes"], splits["test"]["classes"] = splits["test"]["classes"], splits["train"]["classes"][:2]
    (swapped / "manifest.json").write_text(json.dumps(manifest))
    assert_refused_in_process(simclr_main, "--data-dir", swapped, "--feature-save-dir", tmp_path / "features",
                              "--export-only", "--checkpoint", save / "last.pt", "--batch-size", "8",
                              roots=[tmp_path, data], capsys=capsys,
                              text=f"--export-only --data-dir {swapped} (images compared as 4x4-pixel block means): "
                                   f"class 0 of the train images of {data}, which {save / 'last.pt'} trained on is "
                                   "class 0 of test_images.npy")
