"""Seeding, device choice and RNG state capture."""
import random

import numpy as np
import torch

from .errors import UserError


def seed_everything(seed):
    """Seed python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def resolve_device(name="auto", gpu_id=0):
    """'auto' -> cuda:gpu_id when available, else cpu; asking for cuda without one is an error."""
    if name not in ("auto", "cpu", "cuda"):
        raise UserError(f"unknown device {name!r} (use auto, cpu or cuda)")
    if name == "cpu" or (name == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise UserError("--device cuda was asked for but no CUDA GPU is available")
    if gpu_id >= torch.cuda.device_count():
        raise UserError(f"--gpu-id {gpu_id} does not exist ({torch.cuda.device_count()} GPUs visible)")
    return torch.device("cuda", gpu_id)


def autocast(device, enabled):
    """bf16 autocast for the networks when `enabled` (--amp); a no-op context otherwise."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled)


def full_precision(t):
    """t as float32 when --amp made it bfloat16; float32 and float64 tensors unchanged."""
    return t.float() if t.dtype == torch.bfloat16 else t


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
