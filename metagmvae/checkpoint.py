"""Checkpoints: plain dicts (state_dicts, constructor arguments, step, RNG), written atomically."""
import pickle
import zipfile
from pathlib import Path

import numpy as np
import torch

from .errors import UserError
from .fileio import atomic_path

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
