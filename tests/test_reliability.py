"""Never corrupt, never lost: atomic checkpoints under SIGKILL, divergence stops cleanly, bad paths refused."""
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from metagmvae.folders import LOCK_FILE, RECORD, OutputFolder
from metagmvae.runfiles import UserError, checkpoint_bytes, load_checkpoint
from metagmvae.training import Objective, TrainingDiverged, train_step
from mimgnet.model import FeatureGMVAE

from .conftest import REPO_ROOT

WRITER = """
import sys, torch
sys.path.insert(0, {root!r})
from metagmvae.folders import OutputFolder
from metagmvae.runfiles import checkpoint_bytes
step = 0
with OutputFolder({folder!r}, "test run", "--save-dir") as folder:
    while True:
        step += 1
        folder.write_bytes("last.pt", checkpoint_bytes({{"step": step, "weights": torch.full((1 << 20,), float(step))}}))
        print(step, flush=True)
"""


def test_a_checkpoint_killed_mid_write_is_never_corrupt_and_stays_recorded(tmp_path):
    path = tmp_path / "last.pt"
    with OutputFolder(tmp_path, "test run", "--save-dir") as folder:
        folder.write_bytes("last.pt", checkpoint_bytes({"step": 0, "weights": torch.zeros(1 << 20)}))
    for delay in (0.0, 0.005, 0.013, 0.021, 0.034):
        writer = subprocess.Popen([sys.executable, "-c", WRITER.format(root=str(REPO_ROOT), folder=str(tmp_path))],
                                  stdout=subprocess.PIPE, text=True)
        writer.stdout.readline()  # torch imported, one checkpoint written: now kill it mid-stream
        time.sleep(delay)
        writer.send_signal(signal.SIGKILL)
        writer.wait()
        writer.stdout.close()
        state = load_checkpoint(path)  # the previous or the new file, whole
        assert state["step"] >= 1
        assert torch.equal(state["weights"], torch.full((1 << 20,), float(state["step"])))
        with OutputFolder(tmp_path, "test run", "--save-dir") as folder:
            assert folder.owns("last.pt")  # the record knows it, whichever version it is
    assert not [p for p in tmp_path.iterdir() if p.name not in ("last.pt", RECORD, LOCK_FILE)
                and not p.name.endswith(".tmp")]


def test_foreign_and_truncated_files_are_refused(tmp_path):
    text = tmp_path / "notes.pt"
    text.write_text("not a checkpoint")
    with pytest.raises(UserError, match="not a readable checkpoint"):
        load_checkpoint(text)
    tensor = tmp_path / "tensor.pt"
    torch.save(torch.zeros(3), tensor)
    with pytest.raises(UserError, match="expected a dict"):
        load_checkpoint(tensor)
    with pytest.raises(UserError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")


def test_a_nan_loss_stops_training_with_the_step_number():
    model = FeatureGMVAE(feature_size=8, latent_size=2)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    with torch.no_grad():
        model.decoder[0].weight[0, 0] = float("nan")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(TrainingDiverged, match="at step 5"):
        train_step(model, optimizer, torch.rand(2, 4, 8), None, Objective(2, 2, 2), step=5)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) or torch.isnan(before[k]).any() for k in before)


def write_features(folder):
    rng = np.random.default_rng(0)
    folder.mkdir()
    for split in ("train", "val", "test"):
        np.save(folder / f"{split}_features.npy", rng.random((6 * 30, 8), dtype=np.float32))
        np.save(folder / f"{split}_labels.npy", np.repeat(np.arange(6), 30))
    return folder


def test_unwritable_save_dir_is_refused(tmp_path):
    data = write_features(tmp_path / "features")
    blocker = tmp_path / "file"
    blocker.write_text("a regular file")
    result = subprocess.run([sys.executable, "mimgnet/main.py", "--data-dir", data, "--save-dir", blocker / "run",
                             "--train-iters", "2", "--eval-shots", "1"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "cannot write to --save-dir" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_grad_clip_bounds_the_update():
    torch.manual_seed(0)
    model = FeatureGMVAE(feature_size=8, latent_size=2)
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    before = [p.clone() for p in model.parameters()]
    train_step(model, optimizer, torch.rand(2, 4, 8) * 100, None, Objective(2, 2, 2), step=1, grad_clip=1e-3)
    moved = torch.cat([(p - b).flatten() for p, b in zip(model.parameters(), before)])
    assert moved.norm() <= 1e-3 * (1 + 1e-4)
