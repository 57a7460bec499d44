import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("METAGMVAE_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))


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
def omniglot_sample(omniglot_zips, tmp_path_factory) -> Path:
    """train/val/test.npy built from the real sample zips (seed 0): 716 / 60 / 192 classes."""
    from data.prepare_omniglot import build_omniglot

    out = tmp_path_factory.mktemp("omniglot_sample")
    build_omniglot(omniglot_zips, out, seed=0)
    return out


def reference_key_shapes(model_name):
    """{parameter name: shape} of the authors' checkpoints, from ../shared/reference-checkpoint-keys.txt."""
    keys_file = SHARED_DATA.parent / "reference-checkpoint-keys.txt"
    if not keys_file.exists():
        pytest.skip(f"{keys_file} not found")
    shapes = {}
    for line in keys_file.read_text().splitlines():
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
