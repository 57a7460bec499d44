"""Files of a run: user errors, atomic writes, the run folder, checkpoints and RNG state.

A run folder (--save-dir) holds config.json, metrics.csv, checkpoints (*.pt) and results.json
(TRAINING_FILES), and is locked while a process trains in it. Every file is written to a temporary name,
fsynced and renamed over the old one, so a crash mid-write (or a full disk) leaves the previous file
intact. Checkpoints are plain dicts that torch.load(weights_only=True) reads; the authors' checkpoints
load too (`convert_state_dict`).
"""
import csv
import errno
import fcntl
import io
import json
import math
import os
import pickle
import random
import sys
import tempfile
import time
import warnings
import zipfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from .startup import end_quiet_ctrl_c


class UserError(Exception):
    """Bad input (data, flags, files) that the user must fix: one line on stderr, exit code 2."""
    exit_code = 2


class Interrupted(UserError):
    """Ctrl-C (SIGINT): one line on stderr saying where the run stands, exit code 130 (128 + SIGINT)."""
    exit_code = 130


@contextmanager
def exit_on_user_error(prog):
    """Turn a UserError raised inside the block into one line `prog: error: ...` (a message quoting a
    multi-line text, a file name with a newline say, is joined) and its exit code; a Ctrl-C that nothing
    inside turned into Interrupted becomes `prog: error: interrupted` and exit code 130 (before the block,
    startup.quiet_ctrl_c says the same)."""
    end_quiet_ctrl_c()
    try:
        yield
    except UserError as e:
        print(f"{prog}: error: {' '.join(str(e).splitlines())}", file=sys.stderr)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        print(f"{prog}: error: interrupted", file=sys.stderr)
        sys.exit(Interrupted.exit_code)


# ---- atomic writes and safe reads

DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def temporary_pattern(pattern):
    """Glob pattern of the temporary files atomic_path writes for files matching `pattern` ("figures/*.png"
    -> "figures/.*.png.*.tmp"): a process killed mid-write leaves one behind."""
    folder, slash, name = pattern.rpartition("/")
    return f"{folder}{slash}.{name}.*.tmp"


@contextmanager
def atomic_path(path):
    """Yield a temporary path beside `path`; on success fsync it and rename it over `path`.  A full disk
    raises UserError saying so; `path` then keeps its previous content (or stays absent)."""
    path = Path(path)
    existed = path.exists()
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the file the usual permissions
        yield Path(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        if e.errno not in DISK_FULL:
            raise
        kept = "keeps its previous content" if existed else "was not written"
        raise UserError(f"cannot write {path}: the disk is full ({e.strerror}); {path.name} {kept}") from None
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)


def write_json(path, obj):
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def write_text(path, text):
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def physical_memory():
    """Bytes of memory of this machine, or None where the system does not tell (non-POSIX)."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None


def format_bytes(size):
    """1536 -> '1.5 KiB'."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024:
            return f"{size:.3g} {unit}"
        size /= 1024
    return f"{size:.3g} PiB"


def check_fits_in_memory(size, what):
    """Refuse `what` (a phrase naming the flag or file) when its `size` bytes exceed this machine's memory."""
    memory = physical_memory()
    if memory is not None and size > memory:
        raise UserError(f"{what} would take {format_bytes(size)}, more than the {format_bytes(memory)} of "
                        "memory of this machine")


_NPY_HEADER_READERS = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}


def load_npy(path, mmap_mode=None):
    """np.load of a numeric .npy array (no pickled objects).  The header is checked first: a file that is not
    a .npy array, holds Python objects, is shorter than its header says, or (unless memory-mapped) promises
    more than this machine's memory raises UserError naming it."""
    path = Path(path)
    expected = "expected a numeric .npy array written by numpy.save"
    try:
        with open(path, "rb") as f:
            read_header = _NPY_HEADER_READERS.get(np.lib.format.read_magic(f))
            if read_header is None:
                raise UserError(f"{path}: unsupported .npy format version; {expected}")
            shape, _, dtype = read_header(f)
            data_offset = f.tell()
    except (ValueError, EOFError) as e:
        raise UserError(f"{path} is not a .npy array ({e}); {expected}") from None
    except OSError as e:
        raise UserError(f"{path}: cannot read ({e.strerror or e})") from None
    if dtype.hasobject:
        raise UserError(f"{path} holds Python objects (pickled data); {expected}")
    size = math.prod(shape) * dtype.itemsize
    if mmap_mode is None:
        check_fits_in_memory(size, f"{path} (a {dtype} array of shape {shape})")
    if path.stat().st_size < data_offset + size:
        raise UserError(f"{path} is truncated: its header promises a {dtype} array of shape {shape} "
                        f"({format_bytes(size)}) but the file holds {format_bytes(path.stat().st_size)}")
    try:
        return np.load(path, mmap_mode=mmap_mode, allow_pickle=False)
    except MemoryError:
        raise UserError(f"{path}: its {format_bytes(size)} array does not fit in the free memory") from None
    except (ValueError, OSError, EOFError) as e:
        raise UserError(f"{path} is not a readable .npy array ({e}); {expected}") from None


# ---- checkpoints

# The authors' checkpoints store their accuracy as a numpy scalar; allow exactly those types.
_NUMPY_SCALAR_TYPES = [np.dtype, type(np.dtype(np.float64)), type(np.dtype(np.float32))]
try:
    _NUMPY_SCALAR_TYPES.append(np._core.multiarray.scalar)
except AttributeError:  # numpy < 2
    _NUMPY_SCALAR_TYPES.append(np.core.multiarray.scalar)


def save_checkpoint(path, state):
    """torch.save `state` to a temporary file, fsync, then rename over `path`.  The bytes are written by
    Python, so that a full disk is an OSError that atomic_path reports (torch's own writer says less)."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    with atomic_path(path) as tmp:
        tmp.write_bytes(buffer.getbuffer())


CHECKPOINT_EXPECTED = "expected a .pt checkpoint of this project or the authors' .pth"


def load_checkpoint(path):
    """Load a checkpoint dict onto the CPU without unpickling arbitrary objects.

    Whatever torch.load raises, the file is not a checkpoint: every failure becomes a UserError that names
    the file and what it should be (torch's own advice to load with weights_only=False is not passed on).
    """
    path = Path(path)
    if path.is_dir():
        raise UserError(f"checkpoint {path} is a directory; {CHECKPOINT_EXPECTED}")
    if not path.exists():
        raise UserError(f"checkpoint {path} does not exist")
    if not path.is_file():
        raise UserError(f"checkpoint {path} is not a regular file; {CHECKPOINT_EXPECTED}")
    try:
        with torch.serialization.safe_globals(_NUMPY_SCALAR_TYPES), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch warns about pickle protocols of files it then reads or refuses
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # whatever it is, the file is not a checkpoint
        raise UserError(f"{path} is not a readable checkpoint ({_load_failure(path, e)}); "
                        f"{CHECKPOINT_EXPECTED}") from None
    if not isinstance(state, dict):
        raise UserError(f"{path} is not a checkpoint: expected a dict, found {type(state).__name__}")
    return state


def _load_failure(path, error):
    """Why torch.load failed on `path`, in the user's terms."""
    try:
        if path.stat().st_size == 0:
            return "an empty file"
        if not zipfile.is_zipfile(path):
            return "not a file written by torch.save, or a truncated one"
    except OSError as e:
        return f"cannot read it: {e.strerror or e}"
    if isinstance(error, pickle.UnpicklingError):
        return "it holds Python objects besides tensors, numbers and containers"
    if isinstance(error, MemoryError):
        return "its tensors do not fit in memory"
    return "a damaged torch archive"


REFERENCE_BUFFERS = ("log_norm_constant", "uniform_pi")  # constants of the authors' models we compute instead


def convert_state_dict(state_dict, prefixes):
    """Rename an authors' state_dict by module prefix ({their prefix: ours}) and drop their buffers.

    An unknown name raises UserError.
    """
    converted = {}
    for name, tensor in state_dict.items():
        if name in REFERENCE_BUFFERS:
            continue
        prefix = next((p for p in prefixes if name.startswith(p)), None)
        if prefix is None:
            raise UserError(f"unexpected parameter {name!r}")
        converted[prefixes[prefix] + name[len(prefix):]] = tensor
    return converted


# What a checkpoint holds, for messages: our checkpoints by their model_config's keys, the authors' by the
# first module of their state_dict names (their Omniglot model also has the set posterior of the other).
_MODEL_CONFIG_KINDS = {frozenset({"hidden_size", "latent_size", "num_heads"}): "Omniglot",
                       frozenset({"feature_size", "latent_size", "num_heads"}): "Mini-ImageNet",
                       frozenset({"hidden_size", "image_size"}): "SimCLR"}
OURS, AUTHORS = "this project's", "the authors'"
_REFERENCE_KINDS = (("encoder.encoder.", "Omniglot"), ("q_z_given_x_net.", "Mini-ImageNet"))
MAX_NAMES_SHOWN = 6


def checkpoint_kind(state):
    """(whose: OURS or AUTHORS, model name such as "Omniglot") of a loaded checkpoint dict, or None."""
    if isinstance(state.get("model_config"), dict):
        kind = _MODEL_CONFIG_KINDS.get(frozenset(state["model_config"]))
        return None if kind is None else (OURS, kind)
    if isinstance(state.get("state_dict"), dict):
        names = [n for n in state["state_dict"] if isinstance(n, str)]
        return next(((AUTHORS, kind) for prefix, kind in _REFERENCE_KINDS
                     if any(n.startswith(prefix) for n in names)), None)
    return None


def _name_list(names):
    names = sorted(names)
    shown = ", ".join(names[:MAX_NAMES_SHOWN])
    return shown + (f" and {len(names) - MAX_NAMES_SHOWN} more" if len(names) > MAX_NAMES_SHOWN else "")


class NonFiniteCheckpoint(UserError):
    """A checkpoint whose weights or optimizer state hold NaN or Inf."""


def _check_tensor_dict(state_dict, path, key):
    """Refuse `state_dict` (the checkpoint's entry `key`) unless it is a dict of named tensors, all finite."""
    if not isinstance(state_dict, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                   for k, v in state_dict.items()):
        found = type(state_dict).__name__ if not isinstance(state_dict, dict) else "a dict holding other things"
        raise UserError(f"{path}: {key!r} is not a dict of named tensors (found {found})")
    _check_finite(state_dict, path, key)


def _non_finite(value, name):
    """The name ('<name>/<key>/...') of the first tensor or float in `value`, a tensor, float or nested
    dict, list or tuple of them, holding NaN or Inf; None if all are finite."""
    if isinstance(value, torch.Tensor):
        finite = not value.is_floating_point() and not value.is_complex() or bool(torch.isfinite(value).all())
        return None if finite else name
    if isinstance(value, float):
        return None if math.isfinite(value) else name
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, (list, tuple)) else ()
    return next((found for k, v in items if (found := _non_finite(v, f"{name}/{k}")) is not None), None)


def _check_finite(value, path, key):
    """Refuse a checkpoint whose entry `key` (value: see _non_finite) holds NaN or Inf, naming the first
    such tensor: a model or optimizer with them gives meaningless numbers (chance-level accuracies, nan
    probabilities, one cluster)."""
    found = _non_finite(value, key)
    if found is not None:
        raise NonFiniteCheckpoint(f"{path}: tensor {found!r} holds NaN or Inf values; the weights are not usable "
                        "(a diverged or damaged checkpoint)")


def load_weights(model, state_dict, path, name, renamed=False):
    """model.load_state_dict(state_dict) (a dict of named tensors), a mismatch raising UserError that names
    the missing, unexpected and differently shaped tensors (by our names: renamed says the state_dict is an
    authors' one converted by convert_state_dict)."""
    expected = model.state_dict()
    missing, unexpected = expected.keys() - state_dict.keys(), state_dict.keys() - expected.keys()
    reshaped = [k for k in expected.keys() & state_dict.keys() if expected[k].shape != state_dict[k].shape]
    problems = [f"{what}: {_name_list(keys)}" for what, keys in
                (("missing", missing), ("unexpected", unexpected), ("other shapes", reshaped)) if keys]
    if problems:
        names = " in this project's names" if renamed else ""
        raise UserError(f"{path}: weights do not fit the {name} model ({'; '.join(problems)}{names})")
    try:
        model.load_state_dict(state_dict)
    except RuntimeError as e:
        raise UserError(f"{path}: weights do not fit the {name} model ({str(e).strip().splitlines()[0]})") from None


def build_model(state, path, model_class, name, convert_reference=None):
    """A model from a loaded checkpoint dict: ours (keys "model", "model_config") or, given convert_reference,
    the authors' (a dict whose "state_dict" uses their names, converted by convert_reference -> (state_dict,
    config)).  A file of another kind, or whose weights do not fit, raises UserError."""
    expected = f"expected a checkpoint of the {name} model" + (" (ours or the authors' .pth)" if convert_reference
                                                               else "")
    kind = checkpoint_kind(state)
    if kind is not None and kind[1] != name:
        raise UserError(f"{path} holds {kind[0]} {kind[1]} model; {expected}")
    if "model" in state:
        if "model_config" not in state:
            raise UserError(f"{path}: no 'model_config' beside 'model'; {expected}")
        state_dict, config = state["model"], state["model_config"]
        _check_tensor_dict(state_dict, path, "model")
    elif "state_dict" in state and convert_reference is not None:
        _check_tensor_dict(state["state_dict"], path, "state_dict")
        try:
            state_dict, config = convert_reference(state["state_dict"])
        except UserError as e:
            raise UserError(f"{path}: not the authors' {name} model ({e})") from None
        except KeyError as e:
            raise UserError(f"{path}: not the authors' {name} model (no tensor {e.args[0]!r})") from None
        except IndexError:
            raise UserError(f"{path}: not the authors' {name} model (tensors of other shapes)") from None
    else:
        raise UserError(f"{path}: neither a 'model' nor a 'state_dict' key; {expected}")
    if not isinstance(config, dict) or not all(isinstance(k, str) for k in config):
        raise UserError(f"{path}: 'model_config' is not a dict of settings; {expected}")
    try:
        model = model_class(**config)
    except Exception as e:  # the settings come from the file: any failure is the file's
        raise UserError(f"{path}: model_config {config} does not build the {name} model ({e})") from None
    load_weights(model, state_dict, path, name, renamed="model" not in state)
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
CONFIG = "config.json"
LOCK_FILE = ".lock"
# What a training run writes in its folder, as glob patterns; beside them --eval-only --save-dir writes
# eval_results.json.  These, and nothing else, are removed when a run is replaced.
TRAINING_FILES = (CONFIG, "metrics.csv", "results.json", LAST_CHECKPOINT, "best_*.pt", "figures/*.png")
RUN_FILES = (*TRAINING_FILES, "eval_results.json")
PID_WAIT_S = 1.0  # how long a refused process waits for the lock holder to have written its PID


def _read_pid(fd):
    """The PID that the holder of the lock file `fd` wrote, or None if it wrote none within PID_WAIT_S."""
    deadline = time.monotonic() + PID_WAIT_S
    while True:
        text = os.pread(fd, 32, 0).decode(errors="replace").strip()
        if text.isdigit() or time.monotonic() > deadline:
            return int(text) if text.isdigit() else None
        time.sleep(0.01)


class RunDir:
    """config.json, metrics.csv, checkpoints (*.pt), results.json and figures/ of one run."""

    def __init__(self, path):
        self.path = Path(path)

    @contextmanager
    def locked(self):
        """Hold the folder (created if missing) for the block: an exclusive flock on its .lock file, which
        holds this process's PID.  The OS drops a flock with its process, so a run killed even by SIGKILL
        leaves no lock behind.  A folder that another process holds raises UserError naming that PID."""
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            fd = self._lock()
        except OSError as e:
            raise UserError(f"cannot write to --save-dir {self.path}: {e.strerror or e}") from None
        try:
            yield
        finally:
            (self.path / LOCK_FILE).unlink(missing_ok=True)  # while still held: no other process holds this file
            os.close(fd)

    def _lock(self):
        """Open and flock the lock file, write our PID; returns its descriptor."""
        path = self.path / LOCK_FILE
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                pid = _read_pid(fd)
                os.close(fd)
                holder = "another process" if pid is None else f"another process (PID {pid})"
                raise UserError(f"--save-dir {self.path} is in use: {holder} is training in it; wait for it "
                                "to end or choose another --save-dir") from None
            try:
                current = os.path.samestat(os.fstat(fd), os.stat(path))
            except FileNotFoundError:
                current = False
            if current:  # else its holder removed the file as we opened it: lock the one now there
                os.ftruncate(fd, 0)
                os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
                return fd
            os.close(fd)

    def _glob(self, patterns):
        return sorted({p for pattern in patterns for p in self.path.glob(pattern) if p.is_file()})

    def _names(self, paths):
        return _name_list(str(p.relative_to(self.path)) for p in paths)

    def check_resumable(self):
        """Refuse --resume unless the folder has a last.pt, saying what to do instead."""
        if not self.path.is_dir():
            raise UserError(f"--resume: {self.path} does not exist; run without --resume to start a run there")
        if not self.last_checkpoint.is_file():
            raise UserError(f"--resume: {self.path} holds no {LAST_CHECKPOINT} (the run wrote no checkpoint yet)"
                            + self.instead_of_last("run without --resume to start the run anew"))

    def instead_of_last(self, otherwise):
        """The end of a message about an absent or unreadable last.pt: the best_*.pt checkpoints that could be
        resumed from instead, if any, else `otherwise` (what to do)."""
        best = self._glob(["best_*.pt"])
        if best:
            hold = "hold checkpoints" if len(best) > 1 else "holds a checkpoint"
            return f"; {self._names(best)} in {self.path} {hold} of this run: copy one to {LAST_CHECKPOINT} to resume"
        return f"; {otherwise}"

    def prepare(self, config, resume=False, overwrite=False):
        """Make the folder ready and write config.json; returns the names of the files kept beside the
        files of a run that were removed, as text ("" if none were removed).

        A new run (not resume) refuses a folder holding a run, one with a last.pt, unless overwrite, and a
        folder holding files of our names without the config.json of a run of ours.  It then removes the files
        of the old run (RUN_FILES; the files of a run that never wrote a checkpoint too), nothing else."""
        removed, kept = [], ()
        if not resume:
            taken = self._glob(TRAINING_FILES)
            if taken and not (self.path / CONFIG).is_file():
                raise UserError(f"{self.path} holds {self._names(taken)} but no {CONFIG}, so no run of this "
                                "project; a run would replace them: move them or choose another --save-dir")
            if self.last_checkpoint.exists() and not overwrite:
                raise UserError(f"{self.path} already holds a run; pass --resume to continue it, --overwrite to "
                                "replace it (only the run's files are removed), or choose another --save-dir")
            removed = self._glob([*RUN_FILES, *map(temporary_pattern, RUN_FILES)]) if taken else []
        try:
            for old in removed:
                old.unlink()
            if removed and self.figures.is_dir() and not any(self.figures.iterdir()):
                self.figures.rmdir()
            write_json(self.path / CONFIG, config)
        except OSError as e:
            raise UserError(f"cannot write to --save-dir {self.path}: {e.strerror or e}") from None
        if removed:
            kept = [p.name + "/" * p.is_dir() for p in self.path.iterdir() if p.name not in (LOCK_FILE, CONFIG)]
        return _name_list(kept)

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
        """Rows of metrics.csv (as strings) whose `key` column is <= up_to, those a checkpoint at up_to has
        seen, the last being up_to's.  A missing file, one that is not a table of numbers with a `key` column,
        or one without up_to's row raises UserError: --resume would lose or garble the run's history."""
        fix = "restore it, or start the run anew with --overwrite"
        if not self.metrics.is_file():
            raise UserError(f"--resume: {self.metrics} is missing (it holds the run's rows up to {key} {up_to} "
                            f"of {LAST_CHECKPOINT}); {fix}")
        try:
            with self.metrics.open(newline="") as f:
                rows = list(csv.DictReader(f))
            for row in rows:
                for value in row.values():
                    if value != "":  # an empty cell is a column that other rows have
                        float(value)  # raises on a cell that is not a number (None: a short row)
            steps = [int(row[key]) for row in rows]
        except (OSError, UnicodeDecodeError, csv.Error, ValueError, TypeError, KeyError) as e:
            if isinstance(e, OSError):
                raise UserError(f"--resume: cannot read {self.metrics} ({e.strerror or e}); {fix}") from None
            reason = f"no {key!r} column" if isinstance(e, KeyError) else "not a table of numbers"
            raise UserError(f"--resume: {self.metrics} is damaged ({reason}); {fix}") from None
        seen = [row for row, step in zip(rows, steps) if step <= up_to]
        if not seen or int(seen[-1][key]) != up_to:
            raise UserError(f"--resume: {self.metrics} has no row for {key} {up_to} of {LAST_CHECKPOINT}; {fix}")
        return seen

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


def check_writable_folder(path, flag):
    """Refuse `path`, the value of `flag`, unless it is a folder this process may write in or may create."""
    path = Path(path)
    existing = next(p for p in (path, *path.absolute().parents) if p.exists())
    if not existing.is_dir():
        raise UserError(f"cannot write to {flag} {path}: {existing} is not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"cannot write to {flag} {path}: {existing} is not writable")


def check_run_checkpoint(state, path, keys, name):
    """Refuse to resume from `path` unless it is the last.pt of a run of the `name` model (a dict with `keys`)."""
    kind = checkpoint_kind(state)
    expected = f"--resume expects a last.pt written by training the {name} model"
    if kind is not None and kind != (OURS, name):
        raise UserError(f"{path} holds {kind[0]} {kind[1]} model; {expected}")
    missing = [k for k in keys if k not in state]
    if missing:
        raise UserError(f"{path}: not a run checkpoint (no {', '.join(map(repr, missing))}); {expected}")
    _check_tensor_dict(state["model"], path, "model")
    _check_finite(state["optimizer"], path, "optimizer")


def check_same_flags(saved_config, config, flags):
    """Refuse to resume a run whose saved config differs from `config` (a dict of flags) in any of `flags`."""
    differing = [f for f in flags if saved_config.get(f) != config[f]]
    if differing:
        raise UserError("--resume with different settings than the saved run: " + ", ".join(
            f"--{f.replace('_', '-')} {config[f]} (saved {saved_config.get(f)})" for f in differing))
