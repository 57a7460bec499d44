"""Issue 22: no number from input that makes it meaningless, and no late failure.  Checkpoints with NaN or Inf,
Omniglot arrays against the ink convention, 1-way tasks, runs that could only fail after training started,
counts beyond this machine's memory, and Ctrl-C while a command still imports: each ends in one line on
stderr, exit code 2 (130 for Ctrl-C), no traceback, nothing written."""
import io
import math
import re
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from data import prepare_omniglot
from data.omniglot_build import write_build
from metagmvae.episodes import make_eval_sets
from metagmvae.evaluation import mean_confidence_interval
from metagmvae.runfiles import NonFiniteResult, UserError, check_distinct_classes, physical_memory
from metagmvae.training import Objective, UnlabeledSets, validate
from mimgnet import evaluate as mimgnet_evaluate
from mimgnet import main as mimgnet_main
from mimgnet.model import FeatureGMVAE
from omniglot import cluster, draw_figures, evaluate
from omniglot import main as omniglot_main
from omniglot.dataset import load_split
from omniglot.model import OmniglotGMVAE
from simclr import main as simclr_main
from simclr.model import SimCLR

from .conftest import REPO_ROOT
from .test_hostile_inputs import OMNIGLOT_FLAGS, assert_refused, assert_refused_in_process

NAN_TENSOR = "decoder.0.weight"


def poisoned(state_dict, name=NAN_TENSOR, value=float("nan")):
    """A copy of state_dict whose tensor `name` holds one `value`."""
    state_dict = {k: v.clone() for k, v in state_dict.items()}
    state_dict[name][(0,) * state_dict[name].dim()] = value
    return state_dict


@pytest.fixture(scope="module")
def nan_checkpoints(tmp_path_factory):
    """Checkpoints of every model with one NaN or Inf weight."""
    folder = tmp_path_factory.mktemp("nan_checkpoints")
    omniglot, mimgnet, simclr = OmniglotGMVAE(8, 4), FeatureGMVAE(8, 4), SimCLR(hidden_size=4)
    torch.save({"model": poisoned(omniglot.state_dict()), "model_config": omniglot.config}, folder / "omniglot.pt")
    torch.save({"model": poisoned(omniglot.state_dict(), value=float("inf")), "model_config": omniglot.config},
               folder / "omniglot_inf.pt")
    torch.save({"model": poisoned(mimgnet.state_dict(), "decoder.0.weight"), "model_config": mimgnet.config},
               folder / "mimgnet.pt")
    torch.save({"model": mimgnet.state_dict(), "model_config": mimgnet.config}, folder / "mimgnet_finite.pt")
    name = next(k for k, v in simclr.state_dict().items() if v.is_floating_point())
    torch.save({"model": poisoned(simclr.state_dict(), name), "model_config": {"hidden_size": 4, "image_size": 84}},
               folder / "simclr.pt")
    return folder


def test_eval_only_refuses_a_checkpoint_with_nan_naming_the_tensor(omniglot_data, nan_checkpoints, capsys):
    common = ["--data-dir", omniglot_data, "--eval-only", *OMNIGLOT_FLAGS, "--checkpoint"]
    assert_refused("omniglot/main.py", *common, nan_checkpoints / "omniglot.pt",
                   text=f"omniglot.pt: tensor 'model/{NAN_TENSOR}' holds NaN or Inf values",
                   roots=[omniglot_data, nan_checkpoints])
    assert_refused_in_process(omniglot_main.main, *common, nan_checkpoints / "omniglot_inf.pt",
                              text=f"tensor 'model/{NAN_TENSOR}' holds NaN or Inf", roots=[nan_checkpoints],
                              capsys=capsys)


def test_mimgnet_eval_only_refuses_nan_weights(nan_checkpoints, tmp_path, capsys):
    np.save(tmp_path / "test_features.npy", np.random.default_rng(0).random((180, 8), dtype=np.float32))
    np.save(tmp_path / "test_labels.npy", np.repeat(np.arange(6), 30))
    assert_refused_in_process(mimgnet_main.main, "--data-dir", tmp_path, "--eval-only", "--latent-size", "4",
                              "--eval-shots", "1", "--eval-episodes", "2", "--device", "cpu", "--checkpoint",
                              nan_checkpoints / "mimgnet.pt", text="tensor 'model/decoder.0.weight' holds NaN",
                              roots=[tmp_path], capsys=capsys)


@pytest.fixture
def episodes(tmp_path):
    """An episodes folder with one 2-way episode (two drawings per class and part, each with a dot of its own;
    the query drawings' lines shorter than the support ones, so that no query is a copy of another image)."""
    root = tmp_path / "episodes"
    for query, part in enumerate(("support", "query")):
        for k, name in enumerate(("a", "b")):
            (root / "e1" / part / name).mkdir(parents=True)
            for i in range(2):
                image = Image.new("L", (28, 28), 255)
                draw = ImageDraw.Draw(image)
                draw.line((4 + 10 * k, 4 + 4 * query, 24 - 10 * k, 24 - 4 * query), fill=0, width=3)
                draw.rectangle((2 + 6 * i, 24, 4 + 6 * i, 26), fill=0)
                image.save(root / "e1" / part / name / f"{i}.png")
    return root


def test_evaluate_cluster_and_figures_refuse_nan_weights(nan_checkpoints, episodes, omniglot_data, tmp_path, capsys):
    text = f"omniglot.pt: tensor 'model/{NAN_TENSOR}' holds NaN or Inf"
    checkpoint = nan_checkpoints / "omniglot.pt"
    assert_refused_in_process(evaluate.main, "--checkpoint", checkpoint, "--episodes", episodes, "--device", "cpu",
                              text=text, roots=[episodes], capsys=capsys)
    assert_refused_in_process(cluster.main, "--checkpoint", checkpoint, "--images", episodes, "--clusters", "2",
                              "--device", "cpu", text=text, roots=[episodes], capsys=capsys)
    assert_refused_in_process(draw_figures.main, "--checkpoint", checkpoint, "--data-dir", omniglot_data, "--out",
                              tmp_path / "figures", "--device", "cpu", text=text, roots=[omniglot_data],
                              capsys=capsys)
    assert not (tmp_path / "figures").exists() and not (tmp_path / "episodes-clusters").exists()


def test_a_simclr_encoder_with_nan_is_refused(nan_checkpoints, episodes, simclr_data, tmp_path, capsys):
    assert_refused_in_process(mimgnet_evaluate.main, "--encoder", nan_checkpoints / "simclr.pt", "--checkpoint",
                              nan_checkpoints / "mimgnet_finite.pt", "--episodes", episodes, "--device", "cpu",
                              text="simclr.pt: tensor 'model/", roots=[episodes, nan_checkpoints], capsys=capsys)
    assert_refused_in_process(simclr_main.main, "--data-dir", simclr_data, "--feature-save-dir", tmp_path / "features",
                              "--export-only", "--device", "cpu", "--checkpoint", nan_checkpoints / "simclr.pt",
                              text="holds NaN or Inf values", roots=[simclr_data], capsys=capsys)
    assert not (tmp_path / "features").exists()


@pytest.mark.parametrize("kind, make, text", [
    ("sparse", lambda t: t.to_sparse(), "is a sparse_coo tensor"),
    ("meta", lambda t: t.to("meta"), "is a meta tensor (a shape without values)"),
    ("complex", lambda t: t.to(torch.complex64), "holds complex64 values"),
])
def test_a_checkpoint_tensor_that_is_not_plain_numbers_is_refused(omniglot_data, episodes, tmp_path, capsys, kind,
                                                                   make, text):
    """torch.load reads sparse, meta and complex tensors; weights made of them fail inside torch or are cast
    with a warning."""
    model = OmniglotGMVAE(8, 4)
    state = {k: make(v) if k == "encoder.0.bias" else v for k, v in model.state_dict().items()}
    checkpoint = tmp_path / f"{kind}.pt"
    torch.save({"model": state, "model_config": model.config}, checkpoint)
    message = f"{kind}.pt: tensor 'model/encoder.0.bias' {text}; expected dense tensors of real numbers"
    assert_refused_in_process(omniglot_main.main, "--data-dir", omniglot_data, "--eval-only", *OMNIGLOT_FLAGS,
                              "--checkpoint", checkpoint, text=message, roots=[omniglot_data], capsys=capsys)
    assert_refused_in_process(evaluate.main, "--checkpoint", checkpoint, "--episodes", episodes, "--device", "cpu",
                              text=message, roots=[episodes], capsys=capsys)


def test_model_sizes_that_build_no_model_are_refused(omniglot_data, tmp_path, capsys):
    """A size of 0 in a checkpoint's settings (torch only warns), true as a size (Python's 1), and flags whose
    model does not fit in memory."""
    model = OmniglotGMVAE(8, 4)
    for name, change, text in (("latent0", {"latent_size": 0}, "needs sizes of at least 1 (latent_size 0)"),
                               ("heads_true", {"num_heads": True}, "needs whole numbers as sizes, not num_heads True")):
        checkpoint = tmp_path / f"{name}.pt"
        torch.save({"model": model.state_dict(), "model_config": {**model.config, **change}}, checkpoint)
        assert_refused_in_process(omniglot_main.main, "--data-dir", omniglot_data, "--eval-only", *OMNIGLOT_FLAGS,
                                  "--checkpoint", checkpoint, text=f"the Omniglot model {text}", roots=[omniglot_data],
                                  capsys=capsys)
    # a 3x3 conv of huge x huge channels takes 36 huge^2 bytes, twice the memory; the activations of a step of 20
    # decoded images (--batch-size 1) are counted first (omniglot.model.training_step_bytes) and fit
    huge = str(2 * math.isqrt((physical_memory() or 2 ** 40) // 36))
    assert_refused_in_process(omniglot_main.main, "--data-dir", omniglot_data, *OMNIGLOT_FLAGS, "--hidden-size", huge,
                              "--train-iters", "2", "--batch-size", "1", "--save-dir", tmp_path / "run",
                              text=f"--hidden-size {huge} --latent-size 4: the Omniglot model cannot be built with "
                                   "these settings", roots=[omniglot_data], capsys=capsys)
    assert not (tmp_path / "run").exists()


def zeroed(state_dict):
    """A copy of state_dict with every tensor 0 (BatchNorm variances 1): a model that encodes every item alike."""
    return {k: torch.ones_like(v) if k.endswith("running_var") else torch.zeros_like(v) for k, v in state_dict.items()}


ALIKE_TEXT = "the model encodes all items of an episode alike"


def test_a_model_that_encodes_every_item_alike_gives_no_accuracy_or_clusters(omniglot_data, episodes, tmp_path,
                                                                            capsys):
    """All-zero weights send every item to one posterior: the MC noise alone would decide each prediction."""
    omniglot, mimgnet = OmniglotGMVAE(8, 4), FeatureGMVAE(8, 4)
    torch.save({"model": zeroed(omniglot.state_dict()), "model_config": omniglot.config}, tmp_path / "omniglot.pt")
    torch.save({"model": zeroed(mimgnet.state_dict()), "model_config": mimgnet.config}, tmp_path / "mimgnet.pt")
    assert_refused_in_process(omniglot_main.main, "--data-dir", omniglot_data, "--eval-only", *OMNIGLOT_FLAGS,
                              "--checkpoint", tmp_path / "omniglot.pt", text=ALIKE_TEXT, roots=[omniglot_data],
                              capsys=capsys)
    assert_refused_in_process(evaluate.main, "--checkpoint", tmp_path / "omniglot.pt", "--episodes", episodes,
                              "--device", "cpu", text=ALIKE_TEXT, roots=[episodes], capsys=capsys)
    assert_refused_in_process(cluster.main, "--checkpoint", tmp_path / "omniglot.pt", "--images", episodes,
                              "--clusters", "2", "--device", "cpu", text=ALIKE_TEXT, roots=[episodes], capsys=capsys)
    features = tmp_path / "features"
    features.mkdir()
    np.save(features / "test_features.npy", np.random.default_rng(0).random((180, 8), dtype=np.float32))
    np.save(features / "test_labels.npy", np.repeat(np.arange(6), 30))
    assert_refused_in_process(mimgnet_main.main, "--data-dir", features, "--eval-only", "--latent-size", "4",
                              "--eval-shots", "1", "--eval-episodes", "2", "--device", "cpu", "--checkpoint",
                              tmp_path / "mimgnet.pt", text=ALIKE_TEXT, roots=[features], capsys=capsys)
    assert not list(tmp_path.glob("episodes-*"))


def test_features_beyond_float32_are_refused(tmp_path, capsys):
    """float64 features that overflow float32 would reach the model as Inf."""
    features = np.random.default_rng(0).random((180, 8))
    features[7, 3] = 1e300
    np.save(tmp_path / "test_features.npy", features)
    np.save(tmp_path / "test_labels.npy", np.repeat(np.arange(6), 30))
    model = FeatureGMVAE(8, 4)
    torch.save({"model": model.state_dict(), "model_config": model.config}, tmp_path / "mimgnet.pt")
    assert_refused_in_process(mimgnet_main.main, "--data-dir", tmp_path, "--eval-only", "--latent-size", "4",
                              "--eval-shots", "1", "--eval-episodes", "2", "--device", "cpu", "--checkpoint",
                              tmp_path / "mimgnet.pt", text="test_features.npy contains NaN or Inf (or values beyond "
                              "float32's range)", roots=[tmp_path], capsys=capsys)


def test_an_encoder_that_gives_every_image_one_feature_vector_exports_nothing(simclr_data, tmp_path, capsys):
    model = SimCLR(hidden_size=4)
    torch.save({"model": zeroed(model.state_dict()), "model_config": {"hidden_size": 4, "image_size": 84}},
               tmp_path / "simclr.pt")
    assert_refused_in_process(simclr_main.main, "--data-dir", simclr_data, "--feature-save-dir", tmp_path / "features",
                              "--export-only", "--device", "cpu", "--checkpoint", tmp_path / "simclr.pt",
                              text="simclr.pt encodes every image of the train split to the same features",
                              roots=[simclr_data], capsys=capsys)
    assert not (tmp_path / "features").exists()


def test_images_of_values_0_to_1_in_uint8_are_refused_as_such(simclr_data, tmp_path, capsys):
    """Images scaled to [0, 1] and stored as uint8 (0 and 1 only) read as nearly black to every later step."""
    data = shutil.copytree(simclr_data, tmp_path / "data")
    np.save(data / "test_images.npy", np.load(data / "test_images.npy") // 128)
    model = SimCLR(hidden_size=4)
    torch.save({"model": model.state_dict(), "model_config": {"hidden_size": 4, "image_size": 84}},
               tmp_path / "simclr.pt")
    assert_refused_in_process(simclr_main.main, "--data-dir", data, "--feature-save-dir", tmp_path / "features",
                              "--export-only", "--device", "cpu", "--checkpoint", tmp_path / "simclr.pt",
                              text=f"{data / 'test_images.npy'}: its brightest 4x4-pixel block averages 1 of 255: "
                                   "images of values 0-1, or scaled down, in uint8?", roots=[data], capsys=capsys)
    assert not (tmp_path / "features").exists()


# Finite weights whose outputs are NaN or Inf: a BatchNorm variance below 0 (the encoder's, so that
# prediction, clustering, features and figures all meet it) and weights so large that they overflow.
DEGENERATE_TEXT = "hold NaN or Inf values: its weights give no usable result"


def scaled(state_dict, name, factor):
    return {k: v * factor if k == name else v for k, v in state_dict.items()}


@pytest.fixture(scope="module")
def degenerate_checkpoints(tmp_path_factory):
    """Checkpoints with finite weights that give NaN or Inf outputs, of every model."""
    folder = tmp_path_factory.mktemp("degenerate_checkpoints")
    omniglot, mimgnet, simclr = OmniglotGMVAE(8, 4), FeatureGMVAE(8, 4), SimCLR(hidden_size=4)
    torch.save({"model": poisoned(omniglot.state_dict(), "encoder.1.running_var", -1.0),
                "model_config": omniglot.config}, folder / "omniglot.pt")
    torch.save({"model": scaled(omniglot.state_dict(), "encoder.0.weight", 1e30), "model_config": omniglot.config},
               folder / "omniglot_overflow.pt")
    torch.save({"model": scaled(mimgnet.state_dict(), "posterior.0.mab.fc_q.weight", 1e30),
                "model_config": mimgnet.config}, folder / "mimgnet.pt")
    torch.save({"model": poisoned(simclr.state_dict(), "encoder.blocks.0.1.running_var", -1.0),
                "model_config": {"hidden_size": 4, "image_size": 84}}, folder / "simclr.pt")
    return folder


def test_finite_weights_with_nan_outputs_give_no_accuracy(omniglot_data, degenerate_checkpoints, tmp_path, capsys):
    common = ["--data-dir", omniglot_data, "--eval-only", *OMNIGLOT_FLAGS, "--checkpoint"]
    for name in ("omniglot.pt", "omniglot_overflow.pt"):
        assert_refused_in_process(omniglot_main.main, *common, degenerate_checkpoints / name,
                                  text=f"the model's class probabilities {DEGENERATE_TEXT}",
                                  roots=[omniglot_data, degenerate_checkpoints], capsys=capsys)
    np.save(tmp_path / "test_features.npy", np.random.default_rng(0).random((180, 8), dtype=np.float32))
    np.save(tmp_path / "test_labels.npy", np.repeat(np.arange(6), 30))
    assert_refused_in_process(mimgnet_main.main, "--data-dir", tmp_path, "--eval-only", "--latent-size", "4",
                              "--eval-shots", "1", "--eval-episodes", "2", "--device", "cpu", "--checkpoint",
                              degenerate_checkpoints / "mimgnet.pt", text=DEGENERATE_TEXT,
                              roots=[tmp_path, degenerate_checkpoints], capsys=capsys)


def test_finite_weights_with_nan_outputs_give_no_predictions_clusters_figures_or_features(
        degenerate_checkpoints, episodes, omniglot_data, simclr_data, tmp_path, capsys):
    checkpoint = degenerate_checkpoints / "omniglot.pt"
    assert_refused_in_process(evaluate.main, "--checkpoint", checkpoint, "--episodes", episodes, "--device", "cpu",
                              text=f"the model's class probabilities {DEGENERATE_TEXT}", roots=[episodes],
                              capsys=capsys)
    assert_refused_in_process(cluster.main, "--checkpoint", checkpoint, "--images", episodes, "--clusters", "2",
                              "--device", "cpu", text=f"cluster responsibilities and means {DEGENERATE_TEXT}",
                              roots=[episodes], capsys=capsys)
    assert_refused_in_process(draw_figures.main, "--checkpoint", checkpoint, "--data-dir", omniglot_data, "--out",
                              tmp_path / "figures", "--device", "cpu", text=f"reconstructions {DEGENERATE_TEXT}",
                              roots=[omniglot_data], capsys=capsys)
    assert_refused_in_process(simclr_main.main, "--data-dir", simclr_data, "--feature-save-dir", tmp_path / "features",
                              "--export-only", "--device", "cpu", "--checkpoint", degenerate_checkpoints / "simclr.pt",
                              text=f"the model's features {DEGENERATE_TEXT}", roots=[simclr_data], capsys=capsys)
    assert not any(tmp_path.glob("figures*")) and not (tmp_path / "features").exists()
    assert not (tmp_path / "episodes-clusters").exists() and not (tmp_path / "episodes-predictions").exists()


def test_validation_with_nan_outputs_stops_instead_of_selecting(omniglot_data, degenerate_checkpoints):
    """Both --select-by scores refuse, in training as in testing: NaN would never count as better."""
    model = OmniglotGMVAE(8, 4)
    model.load_state_dict(torch.load(degenerate_checkpoints / "omniglot.pt")["model"])
    val = load_split(omniglot_data, "val")
    objective = Objective(5, 2, 3, False)
    for scored_on in (UnlabeledSets.draw(val, 2, 10, 0), make_eval_sets(val, 5, [1], 2, 2, 0, "val")):
        with pytest.raises(NonFiniteResult, match="hold NaN or Inf values"):
            validate(model, scored_on, objective, 2, 3, 2, 0, torch.device("cpu"))


def train_args(data, save, *flags):
    return ["--data-dir", data, "--save-dir", save, *OMNIGLOT_FLAGS, "--batch-size", "1", "--freq-iters", "2",
            "--eval-shots", "1", *flags]


@pytest.fixture(scope="module")
def trained_run(omniglot_data, tmp_path_factory):
    """A run folder of 2 steps (last.pt, best_1shot.pt)."""
    save = tmp_path_factory.mktemp("run") / "run"
    omniglot_main.main(list(map(str, train_args(omniglot_data, save, "--train-iters", "2"))))
    return save


@pytest.mark.parametrize("part", ["model", "optimizer"])
def test_resume_refuses_a_last_pt_with_nan_and_names_the_best_checkpoint(omniglot_data, trained_run, tmp_path, capsys,
                                                                        part):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    state = torch.load(run / "last.pt", weights_only=True)
    if part == "model":
        state["model"] = poisoned(state["model"])
        text = f"last.pt: tensor 'model/{NAN_TENSOR}' holds NaN or Inf"
    else:
        moments = state["optimizer"]["state"][0]["exp_avg_sq"]
        moments[(0,) * moments.dim()] = float("inf")
        text = "last.pt: tensor 'optimizer/state/0/exp_avg_sq' holds NaN or Inf"
    torch.save(state, run / "last.pt")
    line = assert_refused_in_process(omniglot_main.main, *train_args(omniglot_data, run, "--train-iters", "4",
                                                                     "--resume"),
                                     text=text, roots=[run, omniglot_data], capsys=capsys)
    assert "best_1shot.pt" in line and "copy one to last.pt to resume" in line


# ---- the ink convention of the Omniglot arrays

def copy_arrays(source, target, **replace):
    """target/ holding source's train/val/test.npy, those named in `replace` ({split: function of the array})
    changed."""
    target.mkdir()
    for split in ("train", "val", "test"):
        array = np.load(source / f"{split}.npy")
        np.save(target / f"{split}.npy", replace.get(split, lambda a: a)(array))
    return target


def inverted_inside_a_dark_border(drawings):
    """1 - x with the border pixels left at 0: the border test passes, the drawing is still mostly ink."""
    inverted = 1 - drawings
    inverted[..., 0, :, :], inverted[..., -1, :, :], inverted[..., :, 0, :], inverted[..., :, -1, :] = 0, 0, 0, 0
    return inverted


@pytest.mark.parametrize("split, change, text", [
    ("test", lambda a: 1 - a, "test.npy: 160 of 160 drawings have a light background"),
    ("val", lambda a: np.concatenate([a[:4], 1 - a[4:]]), "val.npy: 80 of 160 drawings have a light background"),
    ("test", np.zeros_like, "test.npy: 160 of 160 drawings are blank"),
    ("test", lambda a: np.full_like(a, 0.4), "test.npy: mostly ink (mean pixel above 0.3"),
    ("test", lambda a: np.concatenate([a[:6], inverted_inside_a_dark_border(a[6:])]),
     "test.npy: 40 of 160 drawings are mostly ink (mean pixel above 0.5, the first class 6 drawing 0"),
    ("test", lambda a: a * 2 - 0.5, "test.npy has values in [-0.5, 1.5]; expected [0, 1] with ink = 1"),
    ("test", lambda a: np.where(a == a.max(), np.float32(1.0001), a), "test.npy has values in [0, 1.0001]"),
    ("test", lambda a: a / 255, "test.npy: its strongest ink is 0.00392, below 0.5: values scaled down"),
    ("val", lambda a: a * 0.01, "val.npy: its strongest ink is 0.01, below 0.5: values scaled down"),
])
def test_arrays_against_the_ink_convention_are_refused(omniglot_data, nan_checkpoints, tmp_path, capsys, split, change,
                                                       text):
    data = copy_arrays(omniglot_data, tmp_path / "data", **{split: change})
    checkpoint = tmp_path / "omniglot.pt"
    model = OmniglotGMVAE(8, 4)
    torch.save({"model": model.state_dict(), "model_config": model.config}, checkpoint)
    common = ["--data-dir", data, *OMNIGLOT_FLAGS]
    if split == "test":
        line = assert_refused_in_process(omniglot_main.main, *common, "--eval-only", "--checkpoint", checkpoint,
                                         text=text, roots=[data], capsys=capsys)
    else:
        line = assert_refused_in_process(draw_figures.main, "--checkpoint", checkpoint, "--data-dir", data, "--out",
                                         tmp_path / "figures", "--device", "cpu", text=text, roots=[data],
                                         capsys=capsys)
    assert_refused_in_process(omniglot_main.main, *common, "--save-dir", tmp_path / "run", text=text, roots=[data],
                              capsys=capsys)
    assert not (tmp_path / "run").exists() and not (tmp_path / "figures").exists()
    if "values in" not in text:
        assert "mean pixel" in line and "border mean" in line and "expected ink = 1 on a 0 background" in line


def test_arrays_of_one_drawing_repeated_are_refused(omniglot_data, tmp_path, capsys):
    """Ink on a blank background, but every drawing the same: no class differs from another."""
    data = copy_arrays(omniglot_data, tmp_path / "data", test=lambda a: np.broadcast_to(a[:1, :1], a.shape).copy())
    assert_refused_in_process(omniglot_main.main, "--data-dir", data, *OMNIGLOT_FLAGS, "--train-iters", "2",
                              "--save-dir", tmp_path / "run", roots=[data], capsys=capsys,
                              text="test.npy: all 160 drawings are the same image; nothing tells them apart")
    assert not (tmp_path / "run").exists()


SAME_CLASS = "(the same 20 items, in any order, up to 0.0001 of the largest value)"


@pytest.mark.parametrize("source, text", [
    ("val", f"class 0 of test.npy is class 0 of val.npy {SAME_CLASS}"),  # val.npy copied as test.npy
    ("val, shuffled and re-saved", f"class 0 of test.npy is class 0 of val.npy {SAME_CLASS}"),
    ("test", "class 3 of test.npy is class 1 of test.npy"),  # one class twice
    ("val, 19 drawings of each class", "19 of the 19 items of class 7 of test.npy are items of class 7 of val.npy"),
    ("test, one drawing per class repeated", "class 0 of test.npy holds 1 different items among its 20"),
    ("val, noise added", "20 of the 20 items of class 7 of test.npy are items of class 7 of val.npy or copies of "
                         "them (equal, or closer than 0.1 of their distance from the median item and than 0.15 of "
                         "the median distance from an item to its 5th nearest; drawings also once scaled, "
                         "centred and blurred)"),
    ("val, 15 drawings of each class, scaled", "15 of the 15 items of class 7 of test.npy are items of class 7"),
    ("val, moved a pixel down and two left", "20 of the 20 items of class 7 of test.npy are items of class 7 of "
                                             "val.npy or copies of them"),
    ("val, ink 0.7 as dark", "20 of the 20 items of class 7 of test.npy are items of class 7 of val.npy or copies of "
                             "them"),
    ("test, one drawing per class repeated with noise", "class 0 of test.npy holds 1 different items among its 20"),
])
def test_a_class_in_two_places_is_refused(omniglot_data, nan_checkpoints, tmp_path, capsys, source, text):
    """Test accuracy on validation classes, or an episode with two equal classes, measures nothing, in
    training and with --eval-only: also when the copy's drawings are in another order and its values moved
    by float rounding, noise or a scale, its drawings moved by whole pixels or their ink lighter, and when it
    holds only part of each class.  Queries that are copies of their support drawing measure nothing either."""
    noise = np.random.default_rng(1).uniform(-0.02, 0.02, (8, 20, 28, 28, 1)).astype(np.float32)

    def replace(test):
        if source == "val":
            return np.load(omniglot_data / "val.npy")
        if source.startswith("val, shuffled"):
            return np.load(omniglot_data / "val.npy")[:, ::-1] * np.float32(1 - 1e-6)
        if source.startswith("val, 19"):
            return np.load(omniglot_data / "val.npy")[:, :19].copy()
        if source == "val, noise added":
            return np.clip(np.load(omniglot_data / "val.npy") + noise, 0, 1)
        if source.startswith("val, 15"):
            return np.load(omniglot_data / "val.npy")[:, 5:] * np.float32(0.99)
        if source.startswith("val, ink"):
            return np.load(omniglot_data / "val.npy") * np.float32(0.7)
        if source.startswith("val, moved"):
            moved = np.zeros_like(np.load(omniglot_data / "val.npy"))
            moved[:, :, 1:, :-2] = np.load(omniglot_data / "val.npy")[:, :, :-1, 2:]
            return moved
        if source.startswith("test, one drawing"):
            repeated = np.repeat(test[:, :1], test.shape[1], axis=1)
            return np.clip(repeated + noise, 0, 1) if source.endswith("noise") else repeated
        test = test.copy()
        test[3] = test[1]
        return test
    data = copy_arrays(omniglot_data, tmp_path / "data", test=replace)
    assert_refused_in_process(omniglot_main.main, "--data-dir", data, *OMNIGLOT_FLAGS, "--train-iters", "2",
                              "--save-dir", tmp_path / "run", text=f"{data}: {text}", roots=[data], capsys=capsys)
    checkpoint = tmp_path / "omniglot.pt"
    model = OmniglotGMVAE(8, 4)
    torch.save({"model": model.state_dict(), "model_config": model.config}, checkpoint)
    assert_refused_in_process(omniglot_main.main, "--data-dir", data, *OMNIGLOT_FLAGS, "--eval-only", "--checkpoint",
                              checkpoint, text=f"{data}: {text}", roots=[data], capsys=capsys)
    assert not (tmp_path / "run").exists()


def test_one_outlier_value_makes_no_two_other_classes_equal():
    """The tolerance is the pair's: one value of 1e5 in a test class widened it for every class (two training
    classes in [0, 1] were then called equal); a class copied beside it is still found."""
    rng = np.random.default_rng(0)
    train, test = rng.random((4, 5, 8), dtype=np.float32), rng.random((3, 5, 8), dtype=np.float32)
    test[2, 4, 0] = 1e5
    check_distinct_classes({"train_features.npy": train, "test_features.npy": test}, "D")
    test[1] = train[3, ::-1]
    with pytest.raises(UserError, match="class 1 of test_features.npy is class 3 of train_features.npy"):
        check_distinct_classes({"train_features.npy": train, "test_features.npy": test}, "D")


def test_a_build_with_a_class_in_two_splits_writes_nothing(omniglot_data, tmp_path):
    test = np.load(omniglot_data / "test.npy")
    with pytest.raises(UserError, match=re.escape(f"class 0 of val.npy is class 2 of train.npy {SAME_CLASS}")):
        write_build(tmp_path / "build", {"train": test, "val": test[2:4], "test": test[4:]}, {})
    assert not (tmp_path / "build").exists()


def test_float64_drawings_are_checked_as_float32(omniglot_data, tmp_path, capsys):
    """A drawing whose only ink is below float32's range is blank as the model reads it."""
    def faint(test):
        test = test.astype(np.float64)
        test[0, 0] = 0.0
        test[0, 0, 5, 5] = 1e-50
        return test
    data = copy_arrays(omniglot_data, tmp_path / "data", test=faint)
    assert_refused_in_process(omniglot_main.main, "--data-dir", data, *OMNIGLOT_FLAGS, "--train-iters", "2",
                              "--save-dir", tmp_path / "run", text="test.npy: 1 of 160 drawings are blank",
                              roots=[data], capsys=capsys)
    assert not (tmp_path / "run").exists()


def test_blank_or_identical_own_images_are_refused(episodes, tmp_path, capsys):
    """A blank image holds no stroke; an episode or a folder of one picture repeated tells no class apart."""
    checkpoint = tmp_path / "omniglot.pt"
    model = OmniglotGMVAE(8, 4)
    torch.save({"model": model.state_dict(), "model_config": model.config}, checkpoint)
    common = ["--checkpoint", checkpoint, "--device", "cpu", "--mc-sample-size", "2"]
    blank = episodes / "e1" / "query" / "b" / "1.png"
    Image.new("L", (50, 40), 200).save(blank)
    assert_refused_in_process(evaluate.main, "--checkpoint", checkpoint, "--episodes", episodes, "--device", "cpu",
                              text=f"{blank}: blank image (all pixels equal at 28x28 grayscale)", roots=[episodes],
                              capsys=capsys)
    assert_refused_in_process(cluster.main, *common, "--images", episodes, "--clusters", "2",
                              text=f"{blank}: blank image", roots=[episodes], capsys=capsys)
    first = episodes / "e1" / "support" / "a" / "0.png"
    for image in episodes.rglob("*.png"):
        if image != first:
            shutil.copyfile(first, image)
    assert_refused_in_process(evaluate.main, "--checkpoint", checkpoint, "--episodes", episodes, "--device", "cpu",
                              text=f"{episodes / 'e1'}: support classes 'a' and 'b' hold the same picture as the "
                                   "model reads it", roots=[episodes], capsys=capsys)
    assert_refused_in_process(cluster.main, *common, "--images", episodes, "--clusters", "2",
                              text=f"--images {episodes}: all 8 images are the same picture", roots=[episodes],
                              capsys=capsys)
    assert not list(tmp_path.glob("episodes-*"))


def test_a_query_that_is_a_copy_of_a_support_image_is_refused(episodes, tmp_path, capsys):
    """Its prediction would be read off its own copy: no accuracy from such an episode."""
    checkpoint = tmp_path / "omniglot.pt"
    model = OmniglotGMVAE(8, 4)
    torch.save({"model": model.state_dict(), "model_config": model.config}, checkpoint)
    shutil.copyfile(episodes / "e1" / "support" / "b" / "1.png", episodes / "e1" / "query" / "b" / "0.png")
    assert_refused_in_process(evaluate.main, "--checkpoint", checkpoint, "--episodes", episodes, "--device", "cpu",
                              text=f"{episodes / 'e1'}: query b/0.png is the support picture support/b/1.png as the "
                                   "model reads it", roots=[episodes], capsys=capsys)
    assert not list(tmp_path.glob("episodes-*"))


def character_zip(path, ink, paper, characters=3):
    """A zip of `characters` characters of 20 drawings (omniglot/Alphabet/characterNN/NNNN_MM.png): a stroke
    of colour `ink` on `paper` (0 black, 255 white), 105x105 as the official drawings."""
    with zipfile.ZipFile(path, "w") as zf:
        for c in range(characters):
            for d in range(20):
                image = Image.new("L", (105, 105), paper)
                ImageDraw.Draw(image).line((20 + 5 * c, 20 + d, 80, 85 - 3 * c), fill=ink, width=6)
                buffer = io.BytesIO()
                image.save(buffer, format="PNG")
                zf.writestr(f"omniglot/Alphabet/character{c + 1:02d}/{c + 1:04d}_{d + 1:02d}.png", buffer.getvalue())
    return path


def test_a_build_of_white_on_black_drawings_is_refused_before_writing(tmp_path, capsys):
    (tmp_path / "in").mkdir()
    good = character_zip(tmp_path / "in" / "black_on_white.zip", ink=0, paper=255)
    prepare_omniglot.main(["--source", str(good), "--out", str(tmp_path / "good")])
    assert (tmp_path / "good" / "test.npy").is_file()
    swapped = character_zip(tmp_path / "in" / "white_on_black.zip", ink=255, paper=0)
    for out in (tmp_path / "out", tmp_path / "good"):  # a new folder, and one holding a previous build
        line = assert_refused_in_process(prepare_omniglot.main, "--source", swapped, "--out", out,
                                         text="the converted drawings of train.npy: 80 of 80 drawings have a light "
                                              "background", roots=[tmp_path], capsys=capsys)
        assert "mean pixel 0.9" in line
    assert not (tmp_path / "out").exists()


# ---- N-way tasks need N >= 2

@pytest.mark.parametrize("flags, text", [
    (["--way", "3", "--eval-way", "1"], "--eval-way 1: an N-way episode needs N >= 2 classes"),
    (["--way", "1"], "--way 1 (which --eval-way defaults to): an N-way episode needs N >= 2 classes"),
    (["--eval-way", "1"], "--eval-way 1: an N-way episode needs N >= 2"),
])
def test_one_way_evaluation_is_refused(omniglot_data, tmp_path, capsys, flags, text):
    at = OMNIGLOT_FLAGS.index("--eval-way")
    without_eval_way = OMNIGLOT_FLAGS[:at] + OMNIGLOT_FLAGS[at + 2:]
    common = ["--data-dir", omniglot_data, *without_eval_way, *flags]
    assert_refused_in_process(omniglot_main.main, *common, "--save-dir", tmp_path / "run", text=text,
                              roots=[omniglot_data], capsys=capsys)
    assert_refused_in_process(mimgnet_main.main, "--data-dir", tmp_path, "--eval-only", "--checkpoint", "x.pt", *flags,
                              text=text, roots=[omniglot_data], capsys=capsys)
    assert not (tmp_path / "run").exists()


def test_one_evaluation_episode_is_refused(omniglot_data, tmp_path, capsys):
    """The 95% half-width of a single episode is 0 whatever the model: no run reports one."""
    text = "--eval-episodes 1: the accuracies are reported with a 95% confidence interval, which needs at least 2"
    assert_refused_in_process(omniglot_main.main, "--data-dir", omniglot_data, "--save-dir", tmp_path / "run",
                              *OMNIGLOT_FLAGS, "--train-iters", "2", "--eval-episodes", "1", text=text,
                              roots=[omniglot_data], capsys=capsys)
    assert_refused_in_process(mimgnet_main.main, "--data-dir", tmp_path, "--eval-only", "--checkpoint", "x.pt",
                              "--eval-episodes", "1", text=text, roots=[omniglot_data], capsys=capsys)
    assert not (tmp_path / "run").exists()
    with pytest.raises(ValueError, match="at least 2 episodes"):
        mean_confidence_interval([0.6])


def test_one_labelled_own_episode_gives_its_accuracy_without_an_interval(episodes, tmp_path, capsys):
    model = OmniglotGMVAE(8, 4)
    torch.save({"model": model.state_dict(), "model_config": model.config}, tmp_path / "omniglot.pt")
    evaluate.main(["--checkpoint", str(tmp_path / "omniglot.pt"), "--episodes", str(episodes), "--device", "cpu",
                   "--mc-samples", "2"])
    out = capsys.readouterr().out
    assert re.search(r"^e1: \d+\.\d\d % \(\d/4 queries, 2-way\)$", out, re.M), out
    assert "one labelled episode: no mean +- 95% confidence interval" in out
    assert not re.search(r"\+- \d+\.\d\d", out), out


def test_one_way_figures_and_own_episodes_are_refused(omniglot_data, episodes, tmp_path, capsys):
    checkpoint = tmp_path / "omniglot.pt"
    model = OmniglotGMVAE(8, 4)
    torch.save({"model": model.state_dict(), "model_config": model.config}, checkpoint)
    assert_refused_in_process(draw_figures.main, "--checkpoint", checkpoint, "--data-dir", omniglot_data, "--out",
                              tmp_path / "figures", "--eval-way", "1", "--device", "cpu",
                              text="--eval-way 1: an N-way episode needs N >= 2", roots=[omniglot_data], capsys=capsys)
    for part in ("support", "query"):
        shutil.rmtree(episodes / "e1" / part / "b")
    assert_refused_in_process(evaluate.main, "--checkpoint", checkpoint, "--episodes", episodes, "--device", "cpu",
                              text="support: 1 class folder (a); an episode needs at least 2 classes",
                              roots=[episodes], capsys=capsys)
    assert not (episodes / "predictions.csv").exists() and not (tmp_path / "figures").exists()


def test_training_with_one_component_is_a_plain_vae_prior_and_runs(omniglot_data, tmp_path, capsys):
    results = omniglot_main.main(list(map(str, train_args(omniglot_data, tmp_path / "run", "--train-iters", "2",
                                                          "--way", "1", "--eval-way", "5"))))
    assert set(results["test"]) == {"5way-1shot"}


# ---- a run that could only fail later is refused at its start

def test_a_run_whose_figure_episode_cannot_be_drawn_is_refused_at_start(omniglot_data, tmp_path, capsys):
    """val-elbo reads no validation labels, but each validation draws an --eval-way test-episode figure
    from the validation split: 9 classes of 8 cannot be drawn, after training had started."""
    assert_refused_in_process(omniglot_main.main, *train_args(omniglot_data, tmp_path / "run", "--eval-way", "9",
                                                              "--select-by", "val-elbo"),
                              text="--eval-way 9 is larger than the 8 classes of the val split",
                              roots=[omniglot_data], capsys=capsys)
    assert not (tmp_path / "run").exists()


def test_more_components_than_figure_items_trains_validates_and_resumes(omniglot_data, tmp_path, capsys):
    """--way 70 --sample-size 100 died at the first validation: its figure fitted 70 components to 60 items."""
    args = train_args(omniglot_data, tmp_path / "run", "--train-iters", "2", "--way", "70", "--sample-size", "100",
                      "--hidden-size", "4", "--latent-size", "2")
    omniglot_main.main(list(map(str, args)))
    assert (tmp_path / "run" / "figures" / "mixture.png").is_file()
    omniglot_main.main(list(map(str, [*args, "--train-iters", "4", "--resume"])))
    assert (tmp_path / "run" / "results.json").is_file()


def test_draw_figures_refuses_more_components_than_items(omniglot_data, tmp_path, capsys):
    checkpoint = tmp_path / "omniglot.pt"
    model = OmniglotGMVAE(8, 4)
    torch.save({"model": model.state_dict(), "model_config": model.config}, checkpoint)
    assert_refused_in_process(draw_figures.main, "--checkpoint", checkpoint, "--data-dir", omniglot_data, "--out",
                              tmp_path / "figures", "--way", "100", "--device", "cpu",
                              text="--way 100 is more than the 60 items of the mixture figure", roots=[omniglot_data],
                              capsys=capsys)
    assert not (tmp_path / "figures").exists()


# ---- counts beyond memory, absurd rates

@pytest.mark.parametrize("flags, text", [
    (["--sample-size", "100000000"], "--sample-size 100000000: the items of a training batch (1 episodes x 100000000 "
                                     "items x 784 floats) would take"),
    (["--eval-episodes", str(10 ** 12)], "--eval-episodes 1000000000000: the random streams and item indices"),
    (["--select-by", "val-elbo", "--val-elbo-sets", str(10 ** 12)], "--val-elbo-sets 1000000000000: the random"),
])
def test_counts_beyond_memory_are_refused(omniglot_data, tmp_path, capsys, flags, text):
    line = assert_refused_in_process(omniglot_main.main, *train_args(omniglot_data, tmp_path / "run",
                                                                     "--train-mc-sample-size", "1", "--latent-size",
                                                                     "1", *flags),
                                     text=text, roots=[omniglot_data], capsys=capsys)
    assert "of memory of this machine" in line and not (tmp_path / "run").exists()


def test_mimgnet_sample_size_beyond_memory_is_refused(tmp_path, capsys):
    features = physical_memory() // (4 * 16 * 2) + 1  # 2 features an item: one batch of this many is too much
    data = tmp_path / "features"
    data.mkdir()
    rng = np.random.default_rng(0)
    for split in ("train", "val", "test"):
        np.save(data / f"{split}_features.npy", rng.random((6 * 30, 2), dtype=np.float32))
        np.save(data / f"{split}_labels.npy", np.repeat(np.arange(6), 30))
    assert_refused_in_process(mimgnet_main.main, "--data-dir", data, "--save-dir", tmp_path / "run",
                              "--sample-size", features, "--train-mc-sample-size", "1", "--latent-size", "1",
                              "--eval-shots", "1", "--device", "cpu",
                              text=f"--sample-size {features}: the items of a training batch (16 episodes x "
                                   f"{features} items x 2 floats)", roots=[tmp_path], capsys=capsys)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("flags, text", [
    (["--lr", "1e300"], "--lr 1e+300 is above 1: Adam moves every weight by about lr per step"),
    (["--lr", "2"], "--lr 2.0 is above 1"),
    (["--weight-decay", "1e300"], "--weight-decay 1e+300 is above 1"),
    # positive in float64, 0 (or below float32's rounding of the weights) in the steps: nothing would train
    (["--lr", "1e-320"], "--lr 1e-320 is below 1e-10: Adam moves every weight by about lr per step, less than "
                         "float32 rounding"),
    (["--grad-clip", "1e-320"], "--grad-clip 1e-320 is below 1e-06: Adam divides each gradient by its magnitude "
                                "+ 1e-8"),
])
def test_absurd_rates_are_refused(omniglot_data, simclr_data, tmp_path, capsys, flags, text):
    assert_refused_in_process(omniglot_main.main, *train_args(omniglot_data, tmp_path / "run", *flags), text=text,
                              roots=[omniglot_data], capsys=capsys)
    if "--lr" in flags:
        assert_refused_in_process(simclr_main.main, "--data-dir", simclr_data, "--save-dir", tmp_path / "run",
                                  "--feature-save-dir", tmp_path / "features", *flags, text=text,
                                  roots=[simclr_data], capsys=capsys)
    assert not (tmp_path / "run").exists()


def test_evaluate_and_cluster_sample_counts_beyond_memory_are_refused(nan_checkpoints, episodes, tmp_path, capsys):
    checkpoint = tmp_path / "omniglot.pt"
    model = OmniglotGMVAE(8, 4)
    torch.save({"model": model.state_dict(), "model_config": model.config}, checkpoint)
    line = assert_refused_in_process(evaluate.main, "--checkpoint", checkpoint, "--episodes", episodes, "--device",
                                     "cpu", "--mc-samples", "2000000000",
                                     text="--mc-samples 2000000000: the latent samples of 8 images (8 x 2000000000 "
                                          "samples x 4 floats) would take", roots=[episodes], capsys=capsys)
    assert "of memory of this machine" in line
    line = assert_refused_in_process(cluster.main, "--checkpoint", checkpoint, "--images", episodes, "--clusters", "2",
                                     "--device", "cpu", "--restarts", "100000000",
                                     text="--restarts 100000000: the random streams and latent samples of the EM runs "
                                          "(100000000 restarts x 8 images x 32 samples) would take",
                                     roots=[episodes], capsys=capsys)
    assert not (tmp_path / "episodes-clusters").exists() and not (episodes / "predictions.csv").exists()


# ---- Ctrl-C while a command still imports

ENTRY_POINTS = [("omniglot/main.py", "omniglot/main.py"), ("mimgnet/main.py", "mimgnet/main.py"),
                ("simclr/main.py", "simclr/main.py"), ("omniglot/evaluate.py", "evaluate.py"),
                ("mimgnet/evaluate.py", "evaluate.py"), ("omniglot/cluster.py", "cluster.py"),
                ("mimgnet/cluster.py", "cluster.py"), ("omniglot/draw_figures.py", "omniglot/draw_figures.py"),
                ("data/prepare_omniglot.py", "prepare_omniglot.py"), ("data/synthetic_omniglot.py",
                                                                       "synthetic_omniglot.py"),
                ("data/prepare_mimgnet.py", "prepare_mimgnet.py"),
                ("data/synthetic_mimgnet.py", "synthetic_mimgnet.py"),
                ("-m metagmvae.report", "python -m metagmvae.report")]


def loading_torch(pid):
    """Whether process pid has mapped torch's shared library: it is inside `import torch`."""
    try:
        return "libtorch" in Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return False


@pytest.mark.parametrize("command, prog", ENTRY_POINTS)
def test_ctrl_c_while_torch_imports_is_one_line(command, prog):
    process = subprocess.Popen([sys.executable, *command.split()], cwd=REPO_ROOT, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True,
                               # as from a terminal: a shell starts background jobs with SIGINT ignored
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 60
    while not loading_torch(process.pid) and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.001)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    assert stderr == f"{prog}: error: interrupted\n"


def test_ctrl_c_after_a_command_has_done_its_work_is_ignored():
    """Once exit_on_user_error's block has ended (the work done or refused), a Ctrl-C would only interrupt
    Python's exit handlers, torch's among them: a traceback and exit code 0.  It is ignored."""
    script = ("import os, signal, torch\n"
              "from metagmvae.startup import quiet_ctrl_c\n"
              "from metagmvae.runfiles import exit_on_user_error\n"
              "quiet_ctrl_c('__main__', 'prog')\n"
              "with exit_on_user_error('prog'):\n"
              "    pass\n"
              "os.kill(os.getpid(), signal.SIGINT)\n"
              "print('exited normally')\n")
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    assert (result.returncode, result.stdout, result.stderr) == (0, "exited normally\n", "")
