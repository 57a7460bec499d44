"""Several processes under torchrun (DistributedDataParallel); plain `python main.py` is one process and
sets nothing up.

Under torchrun each process takes a contiguous share of the episodes of a step (of SimCLR's batch, of
the evaluation episodes); DDP averages the gradients, BatchNorm statistics are taken over all
processes, draws are keyed per episode (keyed_random.py), and only rank 0 writes files and prints.
So the same flags give the same run, within float rounding, on any number of processes.
"""
import io
import os
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from . import cpu_memory
from .runfiles import UserError


def resolve_device(name="auto", gpu_id=0):
    """'auto' -> cuda:gpu_id when available, else cpu; asking for cuda without one is an error.  On the
    CPU, the block arena serves the run's tensors from here on (cpu_memory.use_arena)."""
    if name not in ("auto", "cpu", "cuda"):
        raise UserError(f"unknown device {name!r} (use auto, cpu or cuda)")
    if name == "cpu" or (name == "auto" and not torch.cuda.is_available()):
        cpu_memory.use_arena()
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise UserError("--device cuda was asked for but no CUDA GPU is available")
    if gpu_id >= torch.cuda.device_count():
        raise UserError(f"--gpu-id {gpu_id} does not exist ({torch.cuda.device_count()} GPUs visible)")
    return torch.device("cuda", gpu_id)


def is_distributed():
    return dist.is_available() and dist.is_initialized()


def rank():
    return dist.get_rank() if is_distributed() else 0


def world_size():
    return dist.get_world_size() if is_distributed() else 1


def is_main():
    """True in the process that writes files and prints: torchrun's RANK 0, or the only process."""
    return int(os.environ.get("RANK", "0")) == 0


@contextmanager
def process_group(device_name, gpu_id):
    """Yield this process's device.  Under torchrun (which sets RANK, LOCAL_RANK and WORLD_SIZE) join the
    process group for the block: NCCL with GPU cuda:LOCAL_RANK, or gloo on CPU; --gpu-id is then ignored."""
    if not all(name in os.environ for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE")):
        yield resolve_device(device_name, gpu_id)
        return
    device, local_rank = resolve_device(device_name), int(os.environ["LOCAL_RANK"])
    if device.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise UserError(f"torchrun started more processes per node than the {torch.cuda.device_count()} "
                            "GPUs visible")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    try:
        yield device
    finally:
        dist.destroy_process_group()


@dataclass(frozen=True)
class Share:
    """This process's rows [start, stop) of a batch of `total` rows."""
    start: int
    stop: int
    total: int

    @property
    def rows(self):
        return range(self.start, self.stop)


def share(total):
    """This process's contiguous share of `total` rows (all of them in one process)."""
    r, n = rank(), world_size()
    return Share(total * r // n, total * (r + 1) // n, total)


def check_batch_divides(batch_size):
    """Refuse a training batch that the processes cannot split evenly (their losses are averaged)."""
    if batch_size % world_size():
        raise UserError(f"--batch-size {batch_size} is not a multiple of the {world_size()} processes: "
                        "each process takes an equal share of a step")


def mean_over_processes(values):
    """values: (n,) float tensor of this process's means -> their mean over the processes (no gradient)."""
    values = values.detach().clone()
    if is_distributed():
        dist.all_reduce(values)
        values /= world_size()
    return values


def sum_over_processes(values):
    """values: a float tensor -> its elementwise sum over the processes (no gradient)."""
    values = values.detach().clone()
    if is_distributed():
        dist.all_reduce(values)
    return values


def gather_rows(array):
    """Concatenate each process's numpy rows in rank order (the rows of `share`) -> the whole array."""
    if not is_distributed():
        return array
    parts = [None] * world_size()
    dist.all_gather_object(parts, array)
    return np.concatenate(parts)


def from_main(task):
    """task() run by rank 0 alone, its result sent to every process: files are read and written by rank 0
    only, so nodes need not share a filesystem for the run folder.  A UserError it raises is raised in
    every process, so all of them stop with the same message."""
    if not is_distributed():
        return task()
    box = [None]
    if rank() == 0:
        try:
            outcome = (None, task())
        except UserError as e:
            outcome = (str(e), None)
        buffer = io.BytesIO()
        torch.save(outcome, buffer)  # broadcast_object_list's own pickling fails on checkpoint tensors
        box = [buffer.getvalue()]
    dist.broadcast_object_list(box, src=0)
    error, result = torch.load(io.BytesIO(box[0]), weights_only=False)  # written by rank 0 just now
    if error is not None:
        raise UserError(error)
    return result


class _AllReduceSum(torch.autograd.Function):
    """Sum over the processes; the gradient of each input is the sum of the output's gradients."""

    @staticmethod
    def forward(ctx, x):
        x = x.clone()
        dist.all_reduce(x)
        return x

    @staticmethod
    def backward(ctx, grad):
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


class _AllGather(torch.autograd.Function):
    """Concatenate the equal-size rows of every process; each process's rows get the summed gradient."""

    @staticmethod
    def forward(ctx, x):
        parts = [torch.empty_like(x) for _ in range(world_size())]
        dist.all_gather(parts, x.contiguous())
        ctx.rows = slice(rank() * len(x), (rank() + 1) * len(x))
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        return grad[ctx.rows]


def all_reduce_sum_with_grad(x):
    return _AllReduceSum.apply(x) if is_distributed() else x


def all_gather_with_grad(x):
    """(n, ...) per process -> (world_size * n, ...) in rank order, differentiable (SimCLR's negatives)."""
    return _AllGather.apply(x) if is_distributed() else x


class GlobalBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics are those of the whole batch over all processes: the
    per-channel sums are all-reduced with a differentiable collective, which gloo (CPU) supports,
    unlike torch's SyncBatchNorm.  Same parameters, buffers and state_dict as nn.BatchNorm2d."""

    def forward(self, x):
        """(N, C, H, W) -> (N, C, H, W)."""
        if not (self.training and is_distributed()):
            return super().forward(x)
        dims, shape = (0, 2, 3), (1, -1, 1, 1)
        # one collective for the sums and the item count: (C + 1,)
        totals = all_reduce_sum_with_grad(torch.cat([x.sum(dims), x.new_tensor([x.numel() // x.shape[1]])]))
        count = totals[-1].item()
        mean = totals[:-1] / count
        centred = x - mean.view(shape)
        var = all_reduce_sum_with_grad(centred.square().sum(dims)) / count
        scale = self.weight * (var + self.eps).rsqrt()
        with torch.no_grad():
            self.num_batches_tracked += 1
            momentum = 1 / self.num_batches_tracked.item() if self.momentum is None else self.momentum
            self.running_mean.lerp_(mean, momentum)
            self.running_var.lerp_(var * count / (count - 1), momentum)  # unbiased, as nn.BatchNorm2d
        return torch.addcmul(self.bias.view(shape), centred, scale.view(shape))


def use_global_batchnorm(module):
    """Replace every nn.BatchNorm2d inside `module` by a GlobalBatchNorm2d holding the same parameters
    and buffers (so an optimiser built before keeps working).  Returns `module`."""
    for name, child in module.named_children():
        if type(child) is nn.BatchNorm2d:
            if not (child.affine and child.track_running_stats):
                raise ValueError("GlobalBatchNorm2d needs affine=True and track_running_stats=True")
            new = GlobalBatchNorm2d(child.num_features, child.eps, child.momentum)
            new.weight, new.bias = child.weight, child.bias
            for buffer in ("running_mean", "running_var", "num_batches_tracked"):
                setattr(new, buffer, getattr(child, buffer))
            setattr(module, name, new)
        else:
            use_global_batchnorm(child)
    return module


def wrap_for_training(model, device):
    """What this process trains: `model` itself in one process.  Under torchrun, its BatchNorms take
    statistics over all processes (torch's SyncBatchNorm on GPUs, GlobalBatchNorm2d on CPU) and DDP
    averages the gradients.  Parameters are shared with `model`, whose state_dict stays the same."""
    if not is_distributed():
        return model
    if device.type == "cuda":
        return DistributedDataParallel(nn.SyncBatchNorm.convert_sync_batchnorm(model), device_ids=[device.index])
    return DistributedDataParallel(use_global_batchnorm(model))
