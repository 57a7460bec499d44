"""METAGMVAE_CPU_ALLOCATOR (metagmvae.cli.use_huge_pages): off by default, glibc keeps freed memory when
asked (keep-freed), an unknown value is refused in one line, and the numbers of a run are the same either
way (docs/performance.md, "Page faults")."""
import os
import subprocess
import sys

import pytest
import torch

from .conftest import REPO_ROOT
from .test_hostile_inputs import check_refusal

# Runs `main(["--help"])` of a command (its first statement is use_huge_pages), then fills and frees a
# 64 MiB tensor six times and prints the page faults of the last four: 16384 each (4 KB pages) when every
# block was handed back to the kernel, few when glibc kept them.  (glibc 2.36 serves torch's 64-byte aligned
# request from a freed block only once a neighbour has joined it, which depends on the heap the imports
# left: one of the later rounds may still fault.)
CHILD = """
import contextlib, importlib, io, resource, sys
import torch

command = importlib.import_module(sys.argv[1])
with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):
    command.main(["--help"])
torch.ones(2 ** 24)
torch.ones(2 ** 24)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(4):
    torch.ones(2 ** 24)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""
BLOCK_PAGES = 2 ** 26 // 4096
glibc = "CS_GNU_LIBC_VERSION" in getattr(os, "confstr_names", {}) and os.confstr("CS_GNU_LIBC_VERSION")
needs_glibc = pytest.mark.skipif(not glibc, reason="keep-freed is a glibc setting")


def environment(**env):
    """This environment without the two settings, 4 KB pages (an exported 0 wins), and `env`."""
    keep = {k: v for k, v in os.environ.items() if k not in ("METAGMVAE_CPU_ALLOCATOR", "THP_MEM_ALLOC_ENABLE")}
    return keep | {"THP_MEM_ALLOC_ENABLE": "0", "OMP_NUM_THREADS": "1"} | env


def faults_of_four_blocks(command, **env):
    result = subprocess.run([sys.executable, "-c", CHILD, command], cwd=REPO_ROOT, env=environment(**env),
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return int(result.stdout.split()[-1])


@needs_glibc
@pytest.mark.parametrize("command", ["omniglot.main", "omniglot.evaluate"])
def test_off_by_default_and_on_when_asked(command):
    assert faults_of_four_blocks(command) > 3 * BLOCK_PAGES
    assert faults_of_four_blocks(command, METAGMVAE_CPU_ALLOCATOR="default") > 3 * BLOCK_PAGES
    assert faults_of_four_blocks(command, METAGMVAE_CPU_ALLOCATOR="keep-freed") < 1.5 * BLOCK_PAGES


def test_an_unknown_value_is_refused_in_one_line(tmp_path):
    result = subprocess.run([sys.executable, "omniglot/main.py", "--data-dir", tmp_path, "--save-dir", tmp_path / "run"],
                            cwd=REPO_ROOT, env=environment(METAGMVAE_CPU_ALLOCATOR="fast"), capture_output=True,
                            text=True, timeout=120)
    check_refusal(result.returncode, result.stderr, "METAGMVAE_CPU_ALLOCATOR='fast': expected one of default, "
                  "keep-freed", argparse_error=False)
    assert list(tmp_path.iterdir()) == []


def train(data, run, allocator):
    flags = ["--data-dir", data, "--save-dir", run, "--way", 5, "--eval-way", 5, "--sample-size", 20,
             "--batch-size", 2, "--train-mc-sample-size", 4, "--test-mc-sample-size", 4, "--train-iters", 4,
             "--freq-iters", 2, "--eval-episodes", 4, "--eval-shots", 1]
    result = subprocess.run([sys.executable, "omniglot/main.py", *map(str, flags)], cwd=REPO_ROOT,
                            env=environment(METAGMVAE_CPU_ALLOCATOR=allocator), capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr


def metrics_but_wall_time(run):
    lines = (run / "metrics.csv").read_text().splitlines()
    wall = lines[0].split(",").index("wall_time_s")
    return [[cell for i, cell in enumerate(line.split(",")) if i != wall] for line in lines]


def tensors(value, prefix=""):
    """{path: tensor} of every tensor in a nested checkpoint, and {path: value} of the rest but the wall
    time and the run folder's name."""
    if isinstance(value, dict):
        return {k: v for key, item in value.items() if key not in ("wall_time_s", "save_dir")
                for k, v in tensors(item, f"{prefix}/{key}").items()}
    if isinstance(value, (list, tuple)):
        return {k: v for i, item in enumerate(value) for k, v in tensors(item, f"{prefix}/{i}").items()}
    return {prefix: value}


@needs_glibc
def test_a_run_is_bit_identical_with_and_without_keep_freed(omniglot_sample, tmp_path):
    """Four Omniglot steps with two validations: the same last.pt (every tensor torch.equal) and metrics.csv
    but for the wall-time column."""
    for allocator in ("default", "keep-freed"):
        train(omniglot_sample, tmp_path / allocator, allocator)
    default, kept = (torch.load(tmp_path / a / "last.pt", weights_only=False) for a in ("default", "keep-freed"))
    default, kept = tensors(default), tensors(kept)
    assert default.keys() == kept.keys()
    for name, value in default.items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(value, kept[name]), name
        else:
            assert value == kept[name] or (value != value and kept[name] != kept[name]), name
    assert metrics_but_wall_time(tmp_path / "default") == metrics_but_wall_time(tmp_path / "keep-freed")
