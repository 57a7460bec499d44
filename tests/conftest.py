import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("METAGMVAE_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))
SAMPLE_CHARACTERS = 242  # distinct characters in the two official images_background_small zips


@pytest.fixture(autouse=True, scope="session")
def own_cache_folder(tmp_path_factory):
    """The CPU block arena (metagmvae/cpu_memory.py) is built into a folder of this test session, for the
    commands the tests run in this process and in subprocesses, not into the user's ~/.cache."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("cache")))
        yield


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real test data of ../shared/data (override with METAGMVAE_SHARED_DATA)."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared test data not found at {SHARED_DATA} (set METAGMVAE_SHARED_DATA)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def omniglot_zips(shared_data) -> list:
    zips = sorted((shared_data / "omniglot").glob("images_background_small*.zip"))
    if not zips:
        pytest.skip(f"no Omniglot sample zips under {shared_data / 'omniglot'}")
    return zips


@pytest.fixture(scope="session")
def real_omniglot_sample(omniglot_zips, tmp_path_factory) -> Path:
    """train/val/test.npy built from the real sample zips (seed 0): 716 / 60 / 192 classes."""
    from data.prepare_omniglot import build_omniglot

    out = tmp_path_factory.mktemp("omniglot_sample")
    build_omniglot(omniglot_zips, out, seed=0)
    return out


@pytest.fixture(scope="session")
def omniglot_sample(request, tmp_path_factory) -> Path:
    """Omniglot arrays for end-to-end runs: the real sample when its zips are at hand, else as many
    procedural characters (data/synthetic_omniglot.py, a few seconds), with the same split sizes."""
    if sorted((SHARED_DATA / "omniglot").glob("images_background_small*.zip")):
        return request.getfixturevalue("real_omniglot_sample")
    from data.synthetic_omniglot import build_synthetic_omniglot

    out = tmp_path_factory.mktemp("omniglot_procedural")
    build_synthetic_omniglot(out, SAMPLE_CHARACTERS, seed=0)
    return out


def unlabel_queries(episode):
    """Move an episode folder's query/<class>/<file> to query/<class>_<file>: unlabelled queries."""
    for folder in list((episode / "query").iterdir()):
        for image in list(folder.iterdir()):
            image.rename(folder.parent / f"{folder.name}_{image.name}")
        folder.rmdir()


def reference_key_shapes(model_name):
    """{parameter name: shape} of the authors' checkpoints of `model_name` (tests/data)."""
    shapes = {}
    for line in (REPO_ROOT / "tests" / "data" / "reference_checkpoint_keys.txt").read_text().splitlines():
        if line.startswith(f"{model_name} "):
            _, name, shape = line.split(" ", 2)
            shapes[name] = tuple(int(s) for s in shape.strip("()").split(",") if s.strip())
    return shapes


def to_reference_state_dict(model, prefixes, way=5):
    """Our weights under the authors' names ({their prefix: ours}), with their two extra buffers."""
    inverse = {ours: theirs for theirs, ours in prefixes.items()}
    state = {}
    for name, tensor in model.state_dict().items():
        prefix = next(p for p in inverse if name.startswith(p))
        state[inverse[prefix] + name[len(prefix):]] = tensor.clone()
    state["log_norm_constant"] = torch.tensor(-0.5 * math.log(2 * math.pi))
    state["uniform_pi"] = torch.full((way,), 1.0 / way)
    return state


def interrupted_at_call(function, n):
    """`function` wrapped to raise KeyboardInterrupt (a Ctrl-C at that moment) at its n-th call."""
    calls = []

    def wrapped(*args, **kwargs):
        calls.append(args)
        if len(calls) == n:
            raise KeyboardInterrupt
        return function(*args, **kwargs)
    return wrapped


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(*args, script="omniglot/main.py", processes=2, **env):
    """`torchrun --nproc_per_node processes script args` on CPU, one thread per process."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", **env}
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes),
                           "--master_port", str(free_port()), script, *map(str, args)],
                          cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)


def process_tree(pid):
    """pid and all its descendants (Linux /proc), parents first."""
    children = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # the process ended meanwhile
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    tree = [pid]
    for parent in tree:
        tree += children.get(parent, [])
    return tree


def kill_once_written(command, path, timeout=300, **env):
    """Run `command` (a list, from the repository root) and SIGKILL it with all its descendants (torchrun's
    workers run in sessions of their own) as soon as `path` exists (a checkpoint, say); returns the
    command's exit status, -SIGKILL when it was killed.  The run must be long enough not to finish first:
    give it more --train-iters than the resumed run."""
    process = subprocess.Popen(list(map(str, command)), cwd=REPO_ROOT, env={**os.environ, **env},
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout
    while not Path(path).exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    for pid in process_tree(process.pid):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return process.wait()


@pytest.fixture(scope="session")
def omniglot_data(tmp_path_factory):
    """Tiny valid Omniglot arrays: 8 classes of 20 drawings per split, random ink (= 1) strokes away from the
    border on a 0 background, as omniglot/dataset.py checks."""
    folder = tmp_path_factory.mktemp("omniglot")
    rng = np.random.default_rng(0)
    for split in ("train", "val", "test"):
        drawings = np.zeros((8, 20, 28, 28, 1), np.float32)
        drawings[:, :, 6:22, 10:18] = rng.random((8, 20, 16, 8, 1)) < 0.3
        np.save(folder / f"{split}.npy", drawings)
    return folder


@pytest.fixture(scope="session")
def simclr_data(tmp_path_factory):
    """The smallest data simclr/main.py --export-only accepts: one class of two random images per split."""
    folder = tmp_path_factory.mktemp("imgnet")
    rng = np.random.default_rng(0)
    for split in ("train", "val", "test"):
        np.save(folder / f"{split}_images.npy", rng.integers(0, 256, (1, 2, 84, 84, 3), np.uint8))
    manifest = {"splits": {split: {"classes": [f"n0{i}"]} for i, split in enumerate(("train", "val", "test"))}}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder
