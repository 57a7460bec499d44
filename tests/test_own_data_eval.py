"""mimgnet/evaluate.py on folders of natural images: a tiny SimCLR encoder and feature model, episodes of
synthetic Mini-ImageNet images (data/synthetic_mimgnet.py) of several sizes, modes and formats, and the refusals.

The features of an episode's images must be those the feature export (data/prepare_mimgnet.py then
simclr/trainer.py export_features) gives the same image files, and the printed accuracies those of the model
and the baselines on the exported features.

Then how own image files are opened (metagmvae.imagefolders.open_image: EXIF orientation, bit depth, no Pillow
warning) and read as drawings (omniglot/evaluate.py: paper level), the episode folders both evaluate.py refuse
(a picture in two support classes, episodes of different ways, an episode copied as another, entries outside
the layout), and
data/prepare_mimgnet.py refusing an image copied into another class under a new name.
"""
import csv
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from data import prepare_mimgnet as prepare_mimgnet_script
from data.prepare_mimgnet import load_image, prepare_mimgnet
from data.synthetic_mimgnet import write_dataset
from metagmvae import imagefolders
from metagmvae.evaluation import logistic_regression_predictions, nearest_class_mean_predictions
from metagmvae.folders import RECORD
from metagmvae.imagefolders import PREDICTIONS_COLUMNS
from metagmvae.runfiles import UserError, seed_everything
from mimgnet import evaluate
from omniglot import cluster as omniglot_cluster
from omniglot import evaluate as omniglot_evaluate
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
    (tmp_path / "links").mkdir()
    (tmp_path / "links" / "trip").symlink_to(root)  # beside the path given, not beside the link's target
    evaluate.main([*flags, "--episodes", str(tmp_path / "links" / "trip")])
    assert (tmp_path / "links" / "trip-predictions" / "predictions.csv").read_bytes() == predictions.read_bytes()


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


# ---- how image files are opened and read as drawings

def drawing(size=56, shift=0):
    """(size, size) float array, ink = 1 on 0: an asymmetric character (an L-shaped stroke moved right by
    `shift` pixels, and a dot), which a rotation by 90 degrees changes."""
    ink = np.zeros((size, size))
    ink[8:44, 12 + shift:18 + shift] = 1
    ink[38:44, 12 + shift:40 + shift] = 1
    ink[10:16, 40:46] = 1
    return ink


def on_white(ink):
    """(H, W) uint8: black ink on white paper."""
    return np.rint(255 * (1 - ink)).astype(np.uint8)


def test_images_are_read_upright_by_their_exif_orientation(tmp_path):
    upright = Image.fromarray(on_white(drawing())).convert("RGB")
    upright.save(tmp_path / "upright.jpg", quality=95)
    exif = Image.Exif()
    exif[0x0112] = 8  # stored turned by 90 degrees clockwise; viewers turn it back
    upright.rotate(-90, expand=True).save(tmp_path / "turned.jpg", quality=95, exif=exif.tobytes())
    for load, scale in ((omniglot_evaluate.load_image, 1), (load_image, 255)):  # both commands' image readers
        reference, turned = (load(tmp_path / name).astype(np.float64) / scale for name in ("upright.jpg", "turned.jpg"))
        assert np.abs(turned - reference).mean() < 0.02  # JPEG noise only
        assert np.abs(np.rot90(turned, axes=(0, 1)) - reference).mean() > 0.05  # a rotation is another character


def test_high_bit_depth_images_are_read_by_their_scale(tmp_path):
    pixels = np.where(drawing() > 0, 77, 255).astype(np.uint8)  # dark grey ink on white
    Image.fromarray(pixels).save(tmp_path / "8bit.png")
    Image.fromarray(257 * pixels.astype(np.uint16)).save(tmp_path / "16bit.png")
    Image.fromarray((pixels / 255).astype(np.float32)).save(tmp_path / "unit.tif")
    Image.fromarray(pixels.astype(np.float32)).save(tmp_path / "bytes.tif")
    with Image.open(tmp_path / "16bit.png") as a, Image.open(tmp_path / "unit.tif") as b:
        assert (a.mode, b.mode) == ("I;16", "F")
    expected = omniglot_evaluate.load_image(tmp_path / "8bit.png")
    assert expected.max() > 0.6  # the ink (1 - 77 / 255 = 0.7 at full resolution)
    for name in ("16bit.png", "unit.tif", "bytes.tif"):
        assert np.array_equal(omniglot_evaluate.load_image(tmp_path / name), expected), name
        assert np.array_equal(load_image(tmp_path / name), load_image(tmp_path / "8bit.png")), name
    Image.fromarray(4 * pixels.astype(np.float32)).save(tmp_path / "kilo.tif")
    with pytest.raises(UserError, match=r"kilo.tif: float image with values in \[308, 1\.02e\+03\]; expected \[0, 1\] or "
                                        r"\[0, 255\]"):
        omniglot_evaluate.load_image(tmp_path / "kilo.tif")


def test_damaged_metadata_other_colour_spaces_and_strips_are_read_or_refused_in_one_line(tmp_path):
    """Pillow raises what it likes on a damaged file (a struct.error from an EXIF tag of the wrong type); LAB
    converts only to RGB; a 1 x 2 image or a one-pixel strip is not a picture at any scale."""
    exif = Image.Exif()
    exif[0x0112], exif[0x010F] = 6, "cam"  # Orientation, Make
    # the Make tag renamed ImageWidth, its ASCII type kept: exif_transpose reads a width that is text
    raw = exif.tobytes().replace(b"\x01\x0f\x00\x02", b"\x01\x00\x00\x02", 1)  # big-endian: tag 0x010F, type 2
    assert raw != exif.tobytes()
    Image.fromarray(on_white(drawing())).save(tmp_path / "exif.jpg", exif=raw)
    Image.fromarray(on_white(drawing())).convert("RGB").convert("LAB").save(tmp_path / "lab.tif")
    Image.fromarray(on_white(drawing())).convert("RGB").save(tmp_path / "rgb.tif")
    Image.fromarray(np.array([[0, 255]], np.uint8)).save(tmp_path / "dot.png")
    Image.fromarray(np.tile(np.array([[0, 255]], np.uint8), (1, 14))).save(tmp_path / "strip.png")
    for load, scale in ((omniglot_evaluate.load_image, 1), (load_image, 255)):
        with pytest.raises(UserError, match=r"exif.jpg: unreadable image \(error: "):  # struct.error
            load(tmp_path / "exif.jpg")
        lab, rgb = (load(tmp_path / name).astype(np.float64) / scale for name in ("lab.tif", "rgb.tif"))
        assert np.abs(lab - rgb).max() < 0.05  # LAB's rounding
        for name, size in (("dot.png", "2x1"), ("strip.png", "28x1")):
            with pytest.raises(UserError, match=rf"{name}: {size} pixels; a picture needs at least 8 pixels a side"):
                load(tmp_path / name)


def test_images_whose_pixels_would_be_misread_are_refused(tmp_path):
    """8-bit values saved in a 16-bit file (as 16 bits nearly black: divided by 257 they would leave two grey
    levels), and a file of several frames (which one is the picture?)."""
    pixels = np.where(drawing() > 0, 77, 255).astype(np.uint8)
    Image.fromarray(pixels.astype(np.uint16)).save(tmp_path / "8in16.png")
    frames = [Image.fromarray(pixels), Image.fromarray(255 - pixels)]
    frames[0].save(tmp_path / "animated.gif", save_all=True, append_images=frames[1:])
    frames[0].save(tmp_path / "pages.tif", save_all=True, append_images=frames[1:])
    for load in (omniglot_evaluate.load_image, load_image):
        with pytest.raises(UserError, match=r"8in16.png: I;16 image with values in \[77, 255\]: 8-bit values in a "
                                            r"16-bit file\? As 16 bits it is nearly black; save it with 8 bits"):
            load(tmp_path / "8in16.png")
        for name in ("animated.gif", "pages.tif"):
            with pytest.raises(UserError, match=rf"{name}: 2 frames \(an animation or a multi-page file\); expected "
                                                "one picture"):
                load(tmp_path / name)


def test_a_transparent_image_is_read_as_a_viewer_shows_it_on_white(tmp_path):
    """Both commands: what the alpha channel hides is not read (a photo's hidden pixels, a drawing's ink)."""
    ink = drawing()
    rgba = np.zeros((*ink.shape, 4), np.uint8)  # hidden: black everywhere
    rgba[..., 3] = np.where(ink > 0, 255, 0)  # shown: the ink, in black; the rest transparent
    Image.fromarray(rgba).save(tmp_path / "transparent.png")
    Image.fromarray(on_white(ink)).convert("RGB").save(tmp_path / "white.png")
    assert np.array_equal(load_image(tmp_path / "transparent.png"), load_image(tmp_path / "white.png"))
    assert np.array_equal(omniglot_evaluate.load_image(tmp_path / "transparent.png"),
                          omniglot_evaluate.load_image(tmp_path / "white.png"))


def old_conversion(path):
    """What omniglot/evaluate.py gave an 8-bit grayscale drawing on clean white or black paper: x at 28x28 on
    [0, 1], inverted (1 - x) on white."""
    with Image.open(path) as im:
        small = np.asarray(im.convert("L").resize((28, 28), Image.LANCZOS), dtype=np.float32) / 255.0
        return 1.0 - small if im.getpixel((0, 0)) == 255 else small


def test_drawings_on_any_paper_become_ink_on_a_zero_background(tmp_path):
    ink = drawing()
    Image.fromarray(on_white(ink)).save(tmp_path / "white.png")
    Image.fromarray(np.rint(255 * ink).astype(np.uint8)).save(tmp_path / "black.png")
    Image.fromarray(np.where(ink > 0, 0, 110).astype(np.uint8)).save(tmp_path / "grey.png")  # black on grey paper
    white = omniglot_evaluate.load_image(tmp_path / "white.png")
    for name in ("white.png", "black.png"):  # clean paper: exactly as before
        assert np.array_equal(omniglot_evaluate.load_image(tmp_path / name), old_conversion(tmp_path / name))
    grey = omniglot_evaluate.load_image(tmp_path / "grey.png")
    assert grey[0, 0] == 0 and grey.max() == 1 and grey.dtype == np.float32
    assert np.abs(grey - white).max() < 0.02  # Lanczos of 0/110 rounded to 8 bits


def test_a_frame_or_dark_edge_around_a_drawing_does_not_invert_its_ink(tmp_path):
    """The paper is the median pixel, not the border's: a black frame around black ink on white (a character
    written in a box) leaves the paper white, so the stroke is ink 1 and the paper 0."""
    ink = np.kron(drawing(), np.ones((4, 4), np.float32))  # 112 x 112
    framed = on_white(ink)
    framed[:3], framed[-3:], framed[:, :3], framed[:, -3:] = 0, 0, 0, 0
    Image.fromarray(framed).save(tmp_path / "framed.png")
    Image.fromarray(on_white(ink)).save(tmp_path / "plain.png")
    converted, plain = (omniglot_evaluate.load_image(tmp_path / name) for name in ("framed.png", "plain.png"))
    inside = (slice(3, -3), slice(3, -3))  # beyond the frame's Lanczos ringing at 28x28
    assert np.abs(converted[inside] - plain[inside]).max() < 0.02
    assert converted.mean() < 0.3 and converted[0].mean() > 0.25  # the frame is ink (blurred), the page is not


def test_images_of_many_pixels_print_no_pillow_warning(tmp_path, monkeypatch, recwarn):
    Image.fromarray(on_white(drawing())).save(tmp_path / "big.png")  # 56 x 56 = 3136 pixels
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 2000)  # Pillow warns above it, refuses above twice it
    omniglot_evaluate.load_image(tmp_path / "big.png")
    assert not [w for w in recwarn if issubclass(w.category, Image.DecompressionBombWarning)]


# ---- episode folders both evaluate.py refuse

def write_drawing_episode(folder, way, shot=1, query=1):
    """An Omniglot episode of `way` classes (c0, c1, ...): class k's drawings have their stroke at 3k pixels,
    each drawing i of it with a square of ink of its own at the bottom (no drawing is a near-copy of
    another); `shot` support and `query` labelled query PNGs per class."""
    for k in range(way):
        for i in range(shot + query):
            ink = drawing(shift=3 * k)
            ink[48:52, 2 + 6 * i:6 + 6 * i] = 1
            part = folder / ("support" if i < shot else "query") / f"c{k}"
            part.mkdir(parents=True, exist_ok=True)
            Image.fromarray(on_white(ink)).save(part / f"{i}.png")


def omniglot_flags(models, episodes):
    return ["--checkpoint", models / "omniglot.pt", "--episodes", episodes, "--mc-samples", "2", "--em-iters", "1",
            "--device", "cpu"]


def test_refuses_an_episode_whose_support_classes_share_a_picture(models, tmp_path, capsys):
    root = tmp_path / "episodes"
    write_drawing_episode(root / "ep0", 3)
    write_drawing_episode(root / "ep1", 3)
    shutil.rmtree(root / "ep1" / "support" / "c2")
    shutil.copytree(root / "ep1" / "support" / "c0", root / "ep1" / "support" / "c2")
    assert_refused_in_process(omniglot_evaluate.main, *omniglot_flags(models, root),
                              text=f"{root / 'ep1'}: support classes 'c0' and 'c2' hold the same picture",
                              roots=[root, models], capsys=capsys)


@pytest.mark.parametrize("copy, text", [
    ("query/c1/1.jpg", "query c1/1.jpg is the support picture support/c1/0.png as the model reads it (equal, or "
                       "closer than 0.1 of their distance from the median item and than 0.15 of the median "
                       "distance from an item to its 5th nearest; drawings also once scaled, centred and blurred)"),
    ("support/c2/0.jpg", "support classes 'c1' and 'c2' hold the same picture as the model reads it (0.png and 0.jpg"),
])
def test_refuses_an_episode_with_a_support_picture_saved_again_as_jpeg(models, tmp_path, capsys, copy, text):
    """A JPEG of a support picture differs from it in most pixels, a little: a near-copy, as a query of its
    class or as the support picture of another class."""
    root = tmp_path / "episodes"
    write_drawing_episode(root / "ep0", 3)
    (root / "ep0" / Path(copy).with_suffix(".png")).unlink()
    Image.open(root / "ep0" / "support" / "c1" / "0.png").convert("RGB").save(root / "ep0" / copy, quality=90)
    assert_refused_in_process(omniglot_evaluate.main, *omniglot_flags(models, root), text=f"{root / 'ep0'}: {text}",
                              roots=[root, models], capsys=capsys)


@pytest.mark.parametrize("change", ["moved", "enlarged", "shrunk", "lighter"])
def test_refuses_an_episode_with_a_query_that_is_a_support_picture_moved_or_resized(models, tmp_path, capsys, change):
    """A support picture moved by a few pixels, enlarged ten times (nearest), shrunk to half (Lanczos) or with
    its ink at 0.85 of its darkness, saved as a query of its class: the same drawing."""
    root = tmp_path / "episodes"
    write_drawing_episode(root / "ep0", 3)
    support = Image.open(root / "ep0" / "support" / "c1" / "0.png").convert("L")
    if change == "moved":
        copy = Image.new("L", (56, 56), 255)
        copy.paste(support.crop((0, 0, 52, 54)), (4, 2))
    elif change == "lighter":
        copy = support.point(lambda v: round(255 - 0.85 * (255 - v)))
    else:
        copy = support.resize((560, 560), Image.NEAREST) if change == "enlarged" else support.resize((28, 28),
                                                                                                    Image.LANCZOS)
    copy.save(root / "ep0" / "query" / "c1" / "1.png")
    assert_refused_in_process(omniglot_evaluate.main, *omniglot_flags(models, root),
                              text=f"{root / 'ep0'}: query c1/1.png is the support picture support/c1/0.png as the "
                                   "model reads it", roots=[root, models], capsys=capsys)


def test_refuses_labelled_queries_that_are_one_picture_and_predicts_unlabelled_ones(models, tmp_path, capsys):
    """One query picture under two labels (one of them wrong whatever the prediction) or twice under one label
    (scored twice) is refused; unlabelled queries may repeat (each gets its row)."""
    root = tmp_path / "episodes"
    write_drawing_episode(root / "ep0", 3, query=2)
    query = root / "ep0" / "query"
    shutil.copy(query / "c0" / "1.png", query / "c2" / "9.png")
    assert_refused_in_process(omniglot_evaluate.main, *omniglot_flags(models, root),
                              text=f"{root / 'ep0'}: queries c0/1.png and c2/9.png are one picture as the model reads "
                                   "it", roots=[root, models], capsys=capsys)
    shutil.move(query / "c2" / "9.png", query / "c0" / "9.png")
    assert_refused_in_process(omniglot_evaluate.main, *omniglot_flags(models, root),
                              text=f"{root / 'ep0'}: queries c0/1.png and c0/9.png are one picture",
                              roots=[root, models], capsys=capsys)
    class_folders = [folder for folder in query.iterdir() if folder.is_dir()]
    for path in sorted(query.glob("*/*.png")):
        shutil.move(path, query / f"{path.parent.name}-{path.name}")
    for folder in class_folders:
        folder.rmdir()
    out = tmp_path / "predictions"
    omniglot_evaluate.main([str(a) for a in [*omniglot_flags(models, root), "--out", out]])
    rows = list(csv.DictReader(open(out / "predictions.csv")))
    assert {"c0-1.png", "c0-9.png"} <= {row["file"] for row in rows}


def test_refuses_labelled_episodes_of_different_ways(models, tmp_path, capsys):
    root = tmp_path / "episodes"
    for name, way in (("a", 2), ("b", 3), ("c", 3)):
        write_drawing_episode(root / name, way)
    assert_refused_in_process(omniglot_evaluate.main, *omniglot_flags(models, root),
                              text="labelled episodes of different ways: 1 2-way (a), 2 3-way (b, c)",
                              roots=[root, models], capsys=capsys)


def copy_episode(source, target, change):
    """target: the episode folder `source` copied, then changed by `change`: "copy" nothing, "class renamed" its
    class c1 renamed to another name (support and query), "files renamed and saved again" every image saved as
    a BMP of the same pixels under another name, or every image replaced by a near-copy of it."""
    shutil.copytree(source, target)
    if change == "class renamed":
        for part in ("support", "query"):
            (target / part / "c1").rename(target / part / "renamed")
    elif change == "files renamed and saved again":
        for path in sorted(target.rglob("*.png")):
            with Image.open(path) as im:
                im.save(path.with_name(f"copy-{path.stem}.bmp"))
            path.unlink()
    elif change != "copy":  # a near-copy of every picture: saved again as JPEG, with lighter ink, or moved
        for path in sorted(target.rglob("*.png")):
            with Image.open(path) as im:
                pixels = np.asarray(im.convert("L"), dtype=np.float64)
            if change == "saved again as JPEG":
                Image.fromarray(pixels.astype(np.uint8)).save(path.with_suffix(".jpg"), quality=90)
                path.unlink()
            elif change == "lighter ink":
                Image.fromarray(np.rint(255 - 0.7 * (255 - pixels)).astype(np.uint8)).save(path)
            else:  # two of its 56 pixels: one of the 28 the model reads
                Image.fromarray(np.roll(pixels, 2, axis=1).astype(np.uint8)).save(path)


@pytest.mark.parametrize("change", ["copy", "class renamed", "files renamed and saved again", "saved again as JPEG",
                                    "lighter ink", "moved"])
def test_refuses_an_episode_folder_copied_as_another_episode(models, tmp_path, capsys, change):
    """An episode copied (cp -r E/ep0 E/ep0copy), with a class folder renamed or its images renamed and saved
    again with the same pixels, is the same episode: counted twice, it would narrow the 95% CI, which counts
    episodes as independent.  Episodes that share only some pictures are kept."""
    root = tmp_path / "episodes"
    write_drawing_episode(root / "ep0", 3)
    write_drawing_episode(root / "ep1", 3, shot=2)  # ep0's pictures, its query among the support, and one more
    omniglot_evaluate.main(list(map(str, omniglot_flags(models, root))))
    assert "over 2 episodes" in capsys.readouterr().out
    copy_episode(root / "ep0", root / "ep0copy", change)
    line = assert_refused_in_process(omniglot_evaluate.main, *omniglot_flags(models, root),
                                     text="--episodes: episodes 'ep0' and 'ep0copy' are one episode: the same "
                                          "pictures in support and in query as the model reads them",
                                     roots=[root, models], capsys=capsys)
    assert "the mean accuracy's 95% CI counts episodes as independent" in line


def test_refuses_unlabelled_episodes_that_are_one_episode(models, tmp_path, capsys):
    """Two copies of an unlabelled episode would be predicted twice, as two; a labelled episode beside an
    unlabelled one of the same pictures is kept (the one is scored, the other predicted)."""
    root = tmp_path / "episodes"
    write_drawing_episode(root / "a", 2)
    write_drawing_episode(root / "b", 2)
    unlabel_queries(root / "b")
    out = tmp_path / "predictions"
    omniglot_evaluate.main(list(map(str, [*omniglot_flags(models, root), "--out", out])))
    assert capsys.readouterr().out.startswith("a: ")
    copy_episode(root / "b", root / "c", "copy")
    (root / "c" / "query" / "c0_1.png").rename(root / "c" / "query" / "other.png")
    line = assert_refused_in_process(omniglot_evaluate.main, *omniglot_flags(models, root), "--out", out,
                                     text="--episodes: episodes 'b' and 'c' are one episode", roots=[root, models],
                                     capsys=capsys)
    assert "its predictions would be listed twice, as two episodes" in line


def test_mimgnet_refuses_an_episode_copied_with_a_class_renamed(models, episode, capsys):
    """Natural images: the copy's features replace its images (mimgnet/evaluate.py), its pictures are kept."""
    synset = sorted(p.name for p in (episode / "ep0" / "support").iterdir())[1]
    shutil.copytree(episode / "ep0", episode / "ep0copy")
    for part in ("support", "query"):
        (episode / "ep0copy" / part / synset).rename(episode / "ep0copy" / part / "renamed")
    assert_refused_in_process(evaluate.main, *flags(models, episode),
                              text="--episodes: episodes 'ep0' and 'ep0copy' are one episode", roots=[episode, models],
                              capsys=capsys)


def test_refuses_folders_and_images_outside_the_layout_and_skips_hidden_files(models, tmp_path, capsys):
    root = tmp_path / "episodes"
    write_drawing_episode(root / "ep0", 2, query=2)
    (root / "ep0" / "support" / "c0" / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (root / "ep0" / "query" / ".thumbnails").mkdir()
    nested = root / "ep0" / "query" / "c0" / "sub"
    nested.mkdir()
    (root / "ep0" / "query" / "c0" / "1.png").rename(nested / "1.png")
    refuse = dict(roots=[root, models], capsys=capsys)
    assert_refused_in_process(omniglot_evaluate.main, *omniglot_flags(models, root),
                              text=f"{nested}: a folder inside a class folder", **refuse)
    (nested / "1.png").rename(root / "ep0" / "support" / "1.png")
    nested.rmdir()
    assert_refused_in_process(omniglot_evaluate.main, *omniglot_flags(models, root),
                              text=f"{root / 'ep0' / 'support' / '1.png'}: an image beside the class", **refuse)
    (root / "ep0" / "support" / "1.png").unlink()
    (root / "ep0" / "extra").mkdir()
    assert_refused_in_process(omniglot_evaluate.main, *omniglot_flags(models, root),
                              text=f"{root / 'ep0' / 'extra'}: a folder beside support/ and query/", **refuse)
    (root / "ep0" / "extra").rmdir()
    omniglot_evaluate.main(list(map(str, omniglot_flags(models, root))))  # hidden entries skipped
    assert capsys.readouterr().out.startswith("ep0: ")


def test_an_image_or_folder_name_that_is_not_utf8_is_refused_naming_it(models, tmp_path, capsys):
    root = tmp_path / "episodes"
    write_drawing_episode(root / "ep0", 2)
    unlabel_queries(root / "ep0")
    query = root / "ep0" / "query"
    bad_image = query / os.fsdecode(b"\xff.png")
    (query / "c0_1.png").rename(bad_image)
    refuse = dict(roots=[tmp_path], capsys=capsys)
    assert_refused_in_process(omniglot_evaluate.main, *omniglot_flags(models, root),
                              text=f"{query}/\\xff.png: a name that is not UTF-8", **refuse)
    bad_image.rename(query / "c0_1.png")
    (root / "ep0" / "support" / "c1").rename(root / "ep0" / "support" / os.fsdecode(b"c\xff"))
    assert_refused_in_process(omniglot_evaluate.main, *omniglot_flags(models, root),
                              text=f"{root / 'ep0' / 'support'}/c\\xff: a name that is not UTF-8", **refuse)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["episodes"]


def test_predictions_of_an_earlier_evaluation_do_not_outlive_its_unlabelled_queries(models, tmp_path, capsys):
    root, out = tmp_path / "episodes", tmp_path / "predictions"
    for name in ("a", "b"):
        write_drawing_episode(root / name, 2)
    unlabel_queries(root / "a")
    flags = [*omniglot_flags(models, root), "--out", out]
    omniglot_evaluate.main(list(map(str, flags)))
    assert (out / "predictions.csv").is_file()
    (out / "notes.txt").write_text("the user's")
    shutil.rmtree(root / "a")  # every episode labelled now: no predictions
    capsys.readouterr()
    omniglot_evaluate.main(list(map(str, flags)))
    assert f"removed the earlier {out / 'predictions.csv'}" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == [RECORD, "notes.txt"]


def test_prepare_mimgnet_refuses_an_image_copied_into_another_class(tmp_path, capsys):
    root = tmp_path / "imgnet"
    layout = write_dataset(root, {"train": 1, "val": 1, "test": 1}, 2, (30, 40), seed=0)
    (val, _, _), (test, _, _) = layout["val"][0], layout["test"][0]
    for i in (1, 2):  # the test class's files are byte copies of the val class's, under other names and order
        shutil.copy(root / "images" / f"{val}{i:08d}.jpg", root / "images" / f"{test}{3 - i:08d}.jpg")
    assert_refused_in_process(prepare_mimgnet_script.main, "--images", root / "images", "--splits", root, "--out",
                              tmp_path / "arrays",
                              text=f"class {test} of test.csv holds the images of class {val} of val.csv (the same "
                                   "2 files, byte for byte, under other names)", roots=[root], capsys=capsys)
    assert not (tmp_path / "arrays").exists()


def test_prepare_mimgnet_refuses_a_class_saved_again_as_another_class(tmp_path, capsys):
    """The test class's files are the val class's images saved again as JPEG (other bytes): the arrays hold
    near-copies, refused once decoded, before any file is written."""
    root = tmp_path / "imgnet"
    layout = write_dataset(root, {"train": 1, "val": 1, "test": 1}, 2, (30, 40), seed=0)
    (val, _, _), (test, _, _) = layout["val"][0], layout["test"][0]
    for i in (1, 2):
        Image.open(root / "images" / f"{val}{i:08d}.jpg").save(root / "images" / f"{test}{i:08d}.jpg", quality=80)
    assert_refused_in_process(prepare_mimgnet_script.main, "--images", root / "images", "--splits", root, "--out",
                              tmp_path / "arrays",
                              text=f"the build for {tmp_path / 'arrays'} (images compared as 4x4-pixel block means): "
                                   "2 of the 2 items of class 0 of test_images.npy are items of class 0 of "
                                   "val_images.npy or copies of them", roots=[root], capsys=capsys)
    assert not (tmp_path / "arrays").exists()


def test_messages_name_what_the_user_gave(models, tmp_path, capsys):
    """The default output folder is not called a flag the user never passed; a support/ folder written
    Support/, and a query class whose name looks like a support class's but is written with other Unicode
    code points (NFD, as macOS writes names, against NFC), are named as such."""
    root = tmp_path / "episodes"
    write_drawing_episode(root / "ep0", 2)
    (tmp_path / "episodes-predictions").write_text("mine\n")
    assert_refused_in_process(omniglot_evaluate.main, *omniglot_flags(models, root), roots=[tmp_path], capsys=capsys,
                              text=f"cannot write to --out (not given: its default, beside --episodes) "
                                   f"{tmp_path / 'episodes-predictions'}: {tmp_path / 'episodes-predictions'} is not "
                                   "a folder")
    (tmp_path / "episodes-predictions").unlink()
    (root / "ep0" / "support").rename(root / "ep0" / "Support")
    assert_refused_in_process(omniglot_evaluate.main, *omniglot_flags(models, root), roots=[tmp_path], capsys=capsys,
                              text=f"{root / 'ep0'}: episode without a support/ folder (Support/ is there: the "
                                   "names are lowercase)")
    (root / "ep0" / "Support").rename(root / "ep0" / "support")
    nfc, nfd = "caf\u00e9", "cafe\u0301"
    (root / "ep0" / "support" / "c1").rename(root / "ep0" / "support" / nfc)
    (root / "ep0" / "query" / "c1").rename(root / "ep0" / "query" / nfd)
    assert_refused_in_process(omniglot_evaluate.main, *omniglot_flags(models, root), roots=[tmp_path], capsys=capsys,
                              text=f"is not among the support classes of {root / 'ep0'} (support/{nfc} looks the "
                                   "same but is written with other Unicode code points, NFC against NFD")


def test_a_drawing_whose_ink_covers_most_of_it_is_refused(tmp_path):
    """Ink over 60% of the picture: the median shade, taken as the paper, is the ink, and the drawing would be
    read inverted (its paper as strokes). Real Omniglot drawings are at most 20% ink once read."""
    pixels = np.full((56, 56), 255, np.uint8)
    pixels[:, :34] = 0  # black ink over 61% of the picture
    Image.fromarray(pixels).save(tmp_path / "heavy.png")
    with pytest.raises(UserError, match=r"heavy.png: read as a drawing whose ink covers \d+% of it \(real Omniglot "
                                        r"drawings: at most 20%\)"):
        omniglot_evaluate.load_image(tmp_path / "heavy.png")
    Image.fromarray(on_white(drawing())).save(tmp_path / "plain.png")
    assert omniglot_evaluate.load_image(tmp_path / "plain.png").mean() < 0.2


def test_episodes_of_the_drawings_a_checkpoint_trained_on_are_refused(omniglot_data, tmp_path, capsys):
    """Own episodes made of the train split of the checkpoint's run (its config names the folder and each
    split's sha256): their accuracy would measure memory. Episodes of its test split are scored. Class folders
    of those drawings are not scored by the cluster command either."""
    from omniglot import main as omniglot_main

    run = tmp_path / "run"
    omniglot_main.main(list(map(str, ["--data-dir", omniglot_data, "--save-dir", run, "--hidden-size", "8",
                                      "--latent-size", "4", "--way", "5", "--sample-size", "10", "--query", "2",
                                      "--eval-episodes", "2", "--train-mc-sample-size", "2", "--test-mc-sample-size",
                                      "2", "--batch-size", "1", "--train-iters", "2", "--freq-iters", "2",
                                      "--device", "cpu"])))
    for split in ("train", "test"):
        drawings = np.load(omniglot_data / f"{split}.npy")[:3, :3, :, :, 0]  # 3 classes, 1 support + 2 queries
        for k in range(3):
            for i in range(3):
                part = tmp_path / split / "ep0" / ("support" if i == 0 else "query") / f"c{k}"
                part.mkdir(parents=True, exist_ok=True)
                Image.fromarray(on_white(drawings[k, i])).save(part / f"{i}.png")
    flags = ["--checkpoint", run / "last.pt", "--mc-samples", "2", "--device", "cpu"]
    assert_refused_in_process(omniglot_evaluate.main, *flags, "--episodes", tmp_path / "train", roots=[tmp_path],
                              capsys=capsys, text=f"--episodes {tmp_path / 'train'}: 9 of its 9 images are, as the "
                                                  f"model reads them, items of the train split of {omniglot_data}, "
                                                  f"which {run / 'last.pt'} trained on")
    omniglot_evaluate.main(list(map(str, [*flags, "--episodes", tmp_path / "test"])))
    # and the cluster command, scoring class folders of those drawings
    images = tmp_path / "train" / "ep0" / "query"
    assert_refused_in_process(omniglot_cluster.main, "--checkpoint", run / "last.pt", "--images", images,
                              "--clusters", "3", "--mc-sample-size", "2", "--restarts", "1", "--device", "cpu",
                              "--out", tmp_path / "clusters", roots=[tmp_path], capsys=capsys,
                              text=f"--images {images}: 6 of its 6 images are, as the model reads them, items of the "
                                   f"train split of {omniglot_data}")


def test_refuses_an_episode_whose_pictures_are_all_in_another(models, tmp_path, capsys):
    """ep0 copied with one query left out of a class: not the same episode, but none of its pictures is new, so
    it would narrow the CI as a repeat does. An episode with its query among another's support is kept."""
    root = tmp_path / "episodes"
    write_drawing_episode(root / "ep0", 3, query=2)
    shutil.copytree(root / "ep0", root / "ep1")
    (root / "ep1" / "query" / "c1" / "2.png").unlink()
    assert_refused_in_process(omniglot_evaluate.main, *omniglot_flags(models, root), roots=[root, models],
                              capsys=capsys, text="--episodes: every picture of episode 'ep1' is one of episode 'ep0' "
                                                  "in support and in query as the model reads them")


def test_labelled_episodes_in_a_folder_with_a_long_name_are_evaluated(models, tmp_path, capsys):
    """The default output folder (<episodes>-predictions) serves unlabelled queries only: its name, too long
    for the file system, refuses those alone, asking for --out."""
    root = tmp_path / ("e" * 250)
    write_drawing_episode(root / "ep0", 2)
    write_drawing_episode(root / "ep1", 2, shot=2)
    omniglot_evaluate.main(list(map(str, omniglot_flags(models, root))))
    assert "over 2 episodes" in capsys.readouterr().out
    unlabel_queries(root / "ep1")
    assert_refused_in_process(omniglot_evaluate.main, *omniglot_flags(models, root), roots=[tmp_path], capsys=capsys,
                              text="--out not given, and its default, a folder beside --episodes named after it with "
                                   "-predictions, has a name too long for the file system: give --out")


def test_an_output_folder_turned_into_a_link_after_the_start_is_not_written(models, tmp_path, capsys, monkeypatch):
    """--out checked at the start (a new folder), then made a link into --episodes while the episodes are
    predicted: entering it, the command finds it leads elsewhere than when checked, and writes nothing."""
    root = tmp_path / "episodes"
    write_drawing_episode(root / "ep0", 2)
    unlabel_queries(root / "ep0")
    out = tmp_path / "out"
    evaluate_episodes = imagefolders.evaluate

    def link_then_evaluate(*args, **kwargs):
        out.symlink_to(root / "ep0", target_is_directory=True)
        return evaluate_episodes(*args, **kwargs)
    monkeypatch.setattr(imagefolders, "evaluate", link_then_evaluate)
    before = snapshot(root)
    line = assert_refused_in_process(omniglot_evaluate.main, *omniglot_flags(models, root), "--out", out, roots=[],
                                     capsys=capsys, text=f"--out {out} now leads to {(root / 'ep0').resolve()}, not "
                                                         f"to {out} as when the command checked it at its start")
    assert "nothing is written there" in line and snapshot(root) == before
