"""mimgnet/evaluate.py on folders of natural images: a tiny SimCLR encoder and feature model, episodes of
synthetic Mini-ImageNet images (data/synthetic_mimgnet.py) of several sizes, modes and formats, and the refusals.

The features of an episode's images must be those the feature export (data/prepare_mimgnet.py then
simclr/trainer.py export_features) gives the same image files, and the printed accuracies those of the model
and the baselines on the exported features.
"""
import csv
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from data.prepare_mimgnet import prepare_mimgnet
from data.synthetic_mimgnet import write_dataset
from metagmvae.evaluation import logistic_regression_predictions, nearest_class_mean_predictions
from metagmvae.imagefolders import PREDICTIONS_COLUMNS
from metagmvae.runfiles import seed_everything
from mimgnet import evaluate
from mimgnet.model import REFERENCE_PREFIXES, FeatureGMVAE
from omniglot.model import OmniglotGMVAE
from simclr.model import SimCLR
from simclr.trainer import export_features

from .conftest import REPO_ROOT, to_reference_state_dict, unlabel_queries
from .test_hostile_inputs import assert_refused, assert_refused_in_process, snapshot

HIDDEN = 4  # SimCLR channels: F = 4 * 2 * 2 = 16 features
FEATURES = 4 * HIDDEN
WAY, SHOT, QUERY = 3, 2, 3
PER_CLASS = SHOT + QUERY
CPU = torch.device("cpu")
SMALL = ["--mc-samples", "4", "--em-iters", "2", "--device", "cpu", "--batch-size", "7"]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Freshly initialised checkpoints: the SimCLR encoder, the feature model ours and the authors'-style, one
    feature model of another input size, and an Omniglot model."""
    folder = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    simclr, features, wide, omniglot = SimCLR(hidden_size=HIDDEN), FeatureGMVAE(FEATURES, 4), FeatureGMVAE(32, 4), \
        OmniglotGMVAE(8, 4)
    torch.save({"model": simclr.state_dict(), "model_config": {"hidden_size": HIDDEN, "image_size": 84}},
               folder / "simclr.pt")
    for name, model in (("features.pt", features), ("wide.pt", wide), ("omniglot.pt", omniglot)):
        torch.save({"model": model.state_dict(), "model_config": model.config}, folder / name)
    torch.save({"state_dict": to_reference_state_dict(features, REFERENCE_PREFIXES)}, folder / "authors.pth")
    return folder


@pytest.fixture(scope="module")
def exported(models, tmp_path_factory):
    """A synthetic image set of 100 x 60 JPEGs prepared and exported as the SimCLR pipeline does:
    (image folder, test class synsets, test features (classes, PER_CLASS, F))."""
    root = tmp_path_factory.mktemp("imgnet")
    layout = write_dataset(root, {"train": 1, "val": 1, "test": WAY}, PER_CLASS, (60, 100), seed=0)
    prepare_mimgnet(root / "images", root, root / "arrays")
    encoder = SimCLR(hidden_size=HIDDEN)
    encoder.load_state_dict(torch.load(models / "simclr.pt")["model"])
    export_features(encoder, root / "arrays", root / "features", models / "simclr.pt", 16, CPU)
    features = np.load(root / "features" / "test_features.npy").reshape(WAY, PER_CLASS, FEATURES)
    return root / "images", [synset for synset, _, _ in layout["test"]], torch.from_numpy(features)


def image_path(images, synset, i):
    return images / f"{synset}{i + 1:08d}.jpg"


def lossless_copy(source, target, mode):
    """The decoded pixels of `source` in a PNG of `mode` ("RGB", or "RGBA" fully opaque): the same image after
    conversion to RGB."""
    with Image.open(source) as im:
        im.convert(mode).save(target)


@pytest.fixture(scope="module")
def episodes(exported, tmp_path_factory):
    """ep0: the exported test images themselves (JPEG, and some as RGB or opaque RGBA PNG), class k's images
    0-1 in support/, 2-4 in query/; ep1: the same classes as a grayscale PNG, a JPEG of another size, a
    palette GIF.  Hidden and non-image files beside them are skipped."""
    images, synsets, _ = exported
    root = tmp_path_factory.mktemp("episodes") / "episodes"
    for k, synset in enumerate(synsets):
        for i in range(PER_CLASS):
            part = "support" if i < SHOT else "query"
            folder = root / "ep0" / part / synset
            folder.mkdir(parents=True, exist_ok=True)
            source = image_path(images, synset, i)
            if (k + i) % 3 == 0:
                shutil.copy(source, folder / source.name)
            else:
                lossless_copy(source, folder / f"{source.stem}.png", "RGBA" if (k + i) % 3 == 1 else "RGB")
            folder = root / "ep1" / part / synset
            folder.mkdir(parents=True, exist_ok=True)
            with Image.open(source) as im:
                if i % 3 == 0:
                    im.convert("L").save(folder / f"{i}.png")
                elif i % 3 == 1:
                    im.resize((130, 90)).save(folder / f"{i}.jpeg", quality=95)
                else:
                    im.convert("P").save(folder / f"{i}.gif")
    (root / "ep0" / "support" / synsets[0] / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (root / "ep1" / "query" / synsets[1] / "notes.txt").write_text("taken on holiday\n")
    return root


def run_evaluate(*args):
    return subprocess.run([sys.executable, "mimgnet/evaluate.py", *map(str, args)], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=120)


def test_episode_features_are_those_of_the_feature_export(models, exported, episodes):
    _, synsets, features = exported
    encoder = evaluate.simclr_trainer.load_model(models / "simclr.pt", CPU)
    episode = evaluate.load_episode(episodes / "ep0", encoder, 4, CPU)
    assert episode.classes == synsets and episode.y_support.tolist() == [0, 0, 1, 1, 2, 2]
    assert [f.rsplit(".", 1)[0] for f in episode.query_files[:4]] == [
        f"{synsets[0]}/{synsets[0]}0000000{i}" for i in (3, 4, 5)] + [f"{synsets[1]}/{synsets[1]}00000003"]
    torch.testing.assert_close(episode.support, features[:, :SHOT].flatten(0, 1), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(episode.query, features[:, SHOT:].flatten(0, 1), atol=1e-5, rtol=1e-5)
    other = evaluate.load_episode(episodes / "ep1", encoder, 4, CPU)
    assert other.support.shape == (WAY * SHOT, FEATURES) and other.query.shape == (WAY * QUERY, FEATURES)
    assert torch.isfinite(other.query).all() and not torch.allclose(other.query, episode.query)


def expected_lines(model, episodes, seed):
    """The report lines of {name: (support (Ns, F), query (Nq, F))} of WAY classes with SHOT and QUERY items
    each, class-major, predicted in that order after seeding with `seed`."""
    y_support, y_query = (torch.arange(WAY).repeat_interleave(n) for n in (SHOT, QUERY))
    seed_everything(seed)
    lines = []
    for name, (support, query) in episodes.items():
        with torch.inference_mode():
            probs = model.predict(support[None], y_support[None], query[None], WAY, 4, 2)
        correct = int((probs[0].argmax(-1) == y_query).sum())
        ncm, softmax = [100 * (predict(support[None], y_support[None], query[None], WAY)[0] == y_query).float().mean()
                        for predict in (nearest_class_mean_predictions, logistic_regression_predictions)]
        lines.append(f"{name}: {100 * correct / len(y_query):.2f} % ({correct}/{len(y_query)} queries, {WAY}-way), "
                     f"feature nearest class mean {ncm:.2f} %, feature softmax regression {softmax:.2f} %")
    return lines


def test_command_prints_model_and_baselines_per_episode_and_their_means(models, exported, episodes, capsys):
    result = run_evaluate("--encoder", models / "simclr.pt", "--checkpoint", models / "features.pt",
                          "--episodes", episodes, "--seed", "5", *SMALL)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.strip().splitlines()
    assert [line.split(":")[0] for line in lines] == ["ep0", "ep1", "mean accuracy", "feature nearest class mean",
                                                      "feature softmax regression"]
    row = r": \d+\.\d\d % \(\d/9 queries, 3-way\), feature nearest class mean \d+\.\d\d %, " \
          r"feature softmax regression \d+\.\d\d %"
    assert all(re.fullmatch(name + row, line) for name, line in zip(("ep0", "ep1"), lines))
    assert all(re.fullmatch(r"[a-z ]+: \d+\.\d\d \+- \d+\.\d\d % over 2 episodes", line) for line in lines[2:])
    # ep0 from the exported features, ep1 (no export of its converted images) from load_episode
    features = exported[2]
    encoder = evaluate.simclr_trainer.load_model(models / "simclr.pt", CPU)
    ep1 = evaluate.load_episode(episodes / "ep1", encoder, 4, CPU)
    model = FeatureGMVAE(FEATURES, 4)
    model.load_state_dict(torch.load(models / "features.pt")["model"])
    assert lines[:2] == expected_lines(model.eval(), {"ep0": (features[:, :SHOT].flatten(0, 1),
                                                               features[:, SHOT:].flatten(0, 1)),
                                                       "ep1": (ep1.support, ep1.query)}, seed=5)
    assert not (episodes / "predictions.csv").exists()
    # the authors' checkpoint format gives the same model, hence the same report
    evaluate.main(["--encoder", str(models / "simclr.pt"), "--checkpoint", str(models / "authors.pth"),
                   "--episodes", str(episodes), "--seed", "5", *SMALL])
    assert capsys.readouterr().out == result.stdout


def test_unlabelled_queries_are_predicted_into_a_csv_beside_the_episodes(models, episodes, tmp_path, capsys):
    root = tmp_path / "unlabelled"
    shutil.copytree(episodes / "ep1", root / "holiday")
    unlabel_queries(root / "holiday")
    before = snapshot(root)
    flags = ["--encoder", str(models / "simclr.pt"), "--checkpoint", str(models / "features.pt"), *SMALL]
    evaluate.main([*flags, "--episodes", str(root)])
    predictions = tmp_path / "unlabelled-predictions" / "predictions.csv"
    assert capsys.readouterr().out == f"wrote 9 predictions to {predictions}\n"
    assert snapshot(root) == before  # the input folder is only read
    with open(predictions, newline="") as f:
        header, *rows = csv.reader(f)
    assert header == PREDICTIONS_COLUMNS == ["episode", "file", "predicted", "probability"]
    classes = sorted(p.name for p in (root / "holiday" / "support").iterdir())
    assert [r[1] for r in rows] == sorted(p.name for p in (root / "holiday" / "query").iterdir() if p.suffix != ".txt")
    assert all(r[0] == "holiday" and r[2] in classes and 1 / WAY <= float(r[3]) <= 1 for r in rows)
    evaluate.main([*flags, "--episodes", str(root), "--out", str(tmp_path / "again")])
    assert (tmp_path / "again" / "predictions.csv").read_bytes() == predictions.read_bytes()  # seeded


@pytest.fixture
def episode(episodes, tmp_path):
    """A copy of ep0 alone, to damage."""
    shutil.copytree(episodes / "ep0", tmp_path / "episodes" / "ep0")
    return tmp_path / "episodes"


def flags(models, episodes, encoder="simclr.pt", checkpoint="features.pt"):
    return ["--encoder", models / encoder, "--checkpoint", models / checkpoint, "--episodes", episodes, *SMALL]


def test_refuses_an_empty_image_file_and_an_empty_episodes_folder(models, episode, tmp_path, capsys):
    empty = next((episode / "ep0" / "query").glob("*/*.png"))
    empty.write_bytes(b"")
    assert_refused("mimgnet/evaluate.py", *flags(models, episode), text=f"{empty}: unreadable image",
                   roots=[episode, models])
    (tmp_path / "none").mkdir()
    assert_refused_in_process(evaluate.main, *flags(models, tmp_path / "none"), text="none: no episode folders",
                              roots=[tmp_path, models], capsys=capsys)


def test_refuses_damaged_images_and_bad_class_folders(models, episode, capsys):
    support = episode / "ep0" / "support"
    damaged = next(support.glob("*/*.jpg"))
    damaged.write_bytes(damaged.read_bytes()[:200])
    assert_refused_in_process(evaluate.main, *flags(models, episode), text=f"{damaged}: unreadable image",
                              roots=[episode, models], capsys=capsys)
    damaged.unlink()
    folder = damaged.parent
    for image in folder.iterdir():
        image.unlink()
    (folder / "notes.txt").write_text("no images here\n")
    assert_refused_in_process(evaluate.main, *flags(models, episode), text=f"{folder}: no image files",
                              roots=[episode, models], capsys=capsys)
    shutil.rmtree(folder)
    query_only = episode / "ep0" / "query" / folder.name
    assert_refused_in_process(evaluate.main, *flags(models, episode),
                              text=f"{query_only}: class {folder.name!r} is not among the support classes",
                              roots=[episode, models], capsys=capsys)


@pytest.mark.parametrize("encoder, checkpoint, text", [
    ("omniglot.pt", "features.pt", "omniglot.pt holds this project's Omniglot model; expected a checkpoint of the "
                                   "SimCLR model"),
    ("simclr.pt", "simclr.pt", "simclr.pt holds this project's SimCLR model; expected a checkpoint of the "
                               "Mini-ImageNet model"),
    ("features.pt", "features.pt", "features.pt holds this project's Mini-ImageNet model; expected a checkpoint of "
                                   "the SimCLR model"),
    ("simclr.pt", "wide.pt", "wide.pt takes 32 features but --encoder"),
])
def test_refuses_checkpoints_of_the_wrong_kind_or_size(models, episode, capsys, encoder, checkpoint, text):
    line = assert_refused_in_process(evaluate.main, *flags(models, episode, encoder, checkpoint), text=text,
                                     roots=[episode, models], capsys=capsys)
    if checkpoint == "wide.pt":
        assert line.endswith(f"simclr.pt gives {FEATURES}; pass the SimCLR checkpoint whose features the model was "
                             "trained on")


def test_refuses_a_non_positive_batch_size(models, episode, capsys):
    assert_refused_in_process(evaluate.main, *flags(models, episode), "--batch-size", "0",
                              text="--batch-size must be positive (got 0)", roots=[episode, models], capsys=capsys)
