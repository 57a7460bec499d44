"""Files of a run: user errors, atomic writes, the run folder, checkpoints and RNG state.

A run folder (--save-dir) holds config.json, metrics.csv, checkpoints (*.pt) and results.json. Every file
is written to a temporary name, fsynced and renamed over the old one, so a crash mid-write leaves the
previous file intact. Checkpoints are plain dicts that torch.load(weights_only=True) reads; the authors'
checkpoints load too (`convert_state_dict`).
"""
import csv
import io
import json
import os
import pickle
import random
import shutil
import sys
import tempfile
import zipfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch


class UserError(Exception):
    """Bad input (data, flags, files) that the user must fix: one line on stderr, exit code 2."""


@contextmanager
def exit_on_user_error(prog):
    """Turn a UserError raised inside the block into `prog: error: ...` and exit code 2."""
    try:
        yield
    except UserError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        sys.exit(2)


# ---- atomic writes and safe reads

@contextmanager
def atomic_path(path):
    """Yield a temporary path beside `path`; on success fsync it and rename it over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the file the usual permissions
    try:
        yield Path(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_json(path, obj):
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def write_text(path, text):
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def load_npy(path, mmap_mode=None):
    """np.load without pickles; an unreadable file raises UserError naming it."""
    try:
        return np.load(path, mmap_mode=mmap_mode, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise UserError(f"{path} is not a readable .npy file: {e}") from None


# ---- checkpoints

# The authors' checkpoints store their accuracy as a numpy scalar; allow exactly those types.
_NUMPY_SCALAR_TYPES = [np.dtype, type(np.dtype(np.float64)), type(np.dtype(np.float32))]
try:
    _NUMPY_SCALAR_TYPES.append(np._core.multiarray.scalar)
except AttributeError:  # numpy < 2
    _NUMPY_SCALAR_TYPES.append(np.core.multiarray.scalar)


def save_checkpoint(path, state):
    """torch.save `state` to a temporary file, fsync, then rename over `path`."""
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path):
    """Load a checkpoint dict onto the CPU without unpickling arbitrary objects; bad files raise UserError."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist")
    try:
        with torch.serialization.safe_globals(_NUMPY_SCALAR_TYPES):
            state = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, OSError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError) as e:
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"{path} is not a readable checkpoint (truncated or foreign file): {first_line}") from None
    if not isinstance(state, dict):
        raise UserError(f"{path} is not a checkpoint: expected a dict, found {type(state).__name__}")
    return state


REFERENCE_BUFFERS = ("log_norm_constant", "uniform_pi")  # constants of the authors' models we compute instead


def convert_state_dict(state_dict, prefixes):
    """Rename an authors' state_dict by module prefix ({their prefix: ours}) and drop their buffers.

    An unknown name raises KeyError.
    """
    converted = {}
    for name, tensor in state_dict.items():
        if name in REFERENCE_BUFFERS:
            continue
        prefix = next((p for p in prefixes if name.startswith(p)), None)
        if prefix is None:
            raise KeyError(f"unexpected parameter {name!r} in a reference checkpoint")
        converted[prefixes[prefix] + name[len(prefix):]] = tensor
    return converted


def build_model(state, path, model_class, convert_reference, name):
    """A model from a loaded checkpoint dict: ours (keys "model", "model_config") or the authors' (a dict
    whose "state_dict" uses their names, converted by convert_reference -> (state_dict, config))."""
    if "model" in state:
        state_dict, config = state["model"], state["model_config"]
    elif "state_dict" in state:
        try:
            state_dict, config = convert_reference(state["state_dict"])
        except KeyError as e:
            raise UserError(f"{path}: not a {name} Meta-GMVAE checkpoint ({e.args[0]})") from None
    else:
        raise UserError(f"{path}: neither our checkpoint (key 'model') nor the authors' (key 'state_dict')")
    try:
        model = model_class(**config)
        model.load_state_dict(state_dict)
    except (RuntimeError, TypeError) as e:
        raise UserError(f"{path}: weights do not fit the {name} model: {str(e).splitlines()[0]}") from None
    return model


# ---- RNG state

def seed_everything(seed):
    """Seed python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rng_state():
    """All global RNG states, as objects torch.load(weights_only=True) accepts."""
    np_state = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": (np_state[0], torch.from_numpy(np_state[1].copy()), *np_state[2:]),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state):
    random.setstate(state["python"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy(), *rest))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ---- the run folder

LAST_CHECKPOINT = "last.pt"
RUN_FILES = ("config.json", "metrics.csv", "results.json", "eval_results.json")  # besides *.pt and figures/


class RunDir:
    """config.json, metrics.csv, checkpoints (*.pt), results.json and figures/ of one run."""

    def __init__(self, path):
        self.path = Path(path)

    def prepare(self, config, resume=False, overwrite=False):
        """Create the directory and write config.json; refuse to mix two runs in one directory."""
        if self.path.exists() and not self.path.is_dir():
            raise UserError(f"--save-dir {self.path} exists and is not a directory")
        has_run = (self.path / "config.json").exists() or self.last_checkpoint.exists()
        if resume and not self.last_checkpoint.exists():
            raise UserError(f"--resume: no {LAST_CHECKPOINT} in {self.path}")
        if has_run and not (resume or overwrite):
            raise UserError(f"{self.path} already holds a run; pass --resume to continue it or --overwrite to replace it")
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            if overwrite and not resume:
                for old in [*self.path.glob("*.pt"), *(self.path / name for name in RUN_FILES)]:
                    old.unlink(missing_ok=True)
                shutil.rmtree(self.path / "figures", ignore_errors=True)
            write_json(self.path / "config.json", config)
        except OSError as e:
            raise UserError(f"cannot write to --save-dir {self.path}: {e.strerror or e}") from None

    @property
    def last_checkpoint(self):
        return self.path / LAST_CHECKPOINT

    @property
    def figures(self):
        return self.path / "figures"

    @property
    def metrics(self):
        return self.path / "metrics.csv"

    def checkpoint(self, name):
        return self.path / f"{name}.pt"

    def read_metrics(self, up_to, key="step"):
        """Rows of metrics.csv (as strings) whose `key` column is <= up_to: those a checkpoint has seen."""
        if not self.metrics.exists():
            return []
        return [r for r in csv.DictReader(self.metrics.open()) if int(r[key]) <= up_to]

    def write_metrics(self, rows):
        """Rewrite metrics.csv atomically; the columns are the union of the rows' keys, in order."""
        fields = list(dict.fromkeys(k for row in rows for k in row))
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
        write_text(self.metrics, buffer.getvalue())

    def write_results(self, results, name="results.json"):
        write_json(self.path / name, results)


def check_same_flags(saved_config, config, flags):
    """Refuse to resume a run whose saved config differs from `config` (a dict of flags) in any of `flags`."""
    differing = [f for f in flags if saved_config.get(f) != config[f]]
    if differing:
        raise UserError("--resume with different settings than the saved run: " + ", ".join(
            f"--{f.replace('_', '-')} {config[f]} (saved {saved_config.get(f)})" for f in differing))
