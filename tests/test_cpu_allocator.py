"""The CPU block arena (metagmvae/cpu_memory.py, cpu_arena.cpp): on by default for runs on the CPU, off with
METAGMVAE_CPU_ALLOCATOR=torch, the same numbers either way, blocks that never overlap, resident memory
within the most its blocks needed at once, and a run that goes on with a note where it cannot be built
(docs/performance.md, "Page faults")."""
import os
import subprocess
import sys

import pytest
import torch

from metagmvae import cpu_memory

from .conftest import REPO_ROOT
from .test_hostile_inputs import check_refusal

BLOCK_PAGES = 2 ** 26 // 4096  # a 64 MiB tensor in 4 KB pages
on_linux = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the arena is built on Linux only")

# Fills and frees a 64 MiB tensor twice, then prints the page faults of four more: about 16384 each when
# every block is handed back to the kernel (glibc maps blocks this large afresh), few when the arena
# serves them from the pages of the first.
FAULTS_OF_FOUR_BLOCKS = """
import resource
import torch
torch.ones(2 ** 24)
torch.ones(2 ** 24)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(4):
    torch.ones(2 ** 24)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def environment(**env):
    """This environment without the two settings, 4 KB pages (so that faults count pages), and `env`."""
    keep = {k: v for k, v in os.environ.items() if k not in ("METAGMVAE_CPU_ALLOCATOR", "THP_MEM_ALLOC_ENABLE")}
    return keep | {"THP_MEM_ALLOC_ENABLE": "0", "OMP_NUM_THREADS": "1"} | env


def run_python(code, *args, **env):
    result = subprocess.run([sys.executable, "-c", code, *map(str, args)], cwd=REPO_ROOT, env=environment(**env),
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return result


def faults_after(prologue, *args, **env):
    """(page faults of four 64 MiB tensors after `prologue` ran in a fresh process, its stderr)."""
    result = run_python(prologue + FAULTS_OF_FOUR_BLOCKS, *args, **env)
    return int(result.stdout.split()[-1]), result.stderr


RESOLVE_DEVICE = """
import sys
from metagmvae import cpu_memory, distributed
cpu_memory.set_up()
distributed.resolve_device(sys.argv[1])
"""


@on_linux
@pytest.mark.parametrize("device", ["auto", "cpu"])
def test_a_cpu_run_uses_the_arena_unless_asked_not_to(device):
    if device == "auto" and torch.cuda.is_available():
        pytest.skip("auto resolves to the GPU here")
    faults, stderr = faults_after(RESOLVE_DEVICE, device)
    assert faults < BLOCK_PAGES // 2 and stderr == ""
    assert faults_after(RESOLVE_DEVICE, device, METAGMVAE_CPU_ALLOCATOR="torch")[0] > 3 * BLOCK_PAGES


@on_linux
@pytest.mark.parametrize("compiler", ["/nonexistent/c++", "false"])
def test_without_a_working_compiler_a_run_goes_on_after_a_note(compiler, tmp_path):
    """No cached build, and a compiler that is missing or fails: one note, torch's allocator, exit code 0."""
    faults, stderr = faults_after(RESOLVE_DEVICE, "cpu", CXX=compiler, XDG_CACHE_HOME=tmp_path)
    assert faults > 3 * BLOCK_PAGES
    lines = stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("note: CPU block arena not in use ("), stderr
    assert "torch's allocator serves this run" in lines[0]
    assert not any(tmp_path.rglob("*.so")) and not any(tmp_path.rglob("*.partial"))


@on_linux
def test_what_stands_at_the_arenas_cached_name_is_never_replaced(tmp_path):
    """A cached build is loaded; a FIFO put in its place is named in the note and left as it is."""
    faults, stderr = faults_after(RESOLVE_DEVICE, "cpu", XDG_CACHE_HOME=tmp_path)
    assert faults < BLOCK_PAGES // 2 and stderr == ""
    [library] = (tmp_path / "meta-gmvae").iterdir()
    library.unlink()
    os.mkfifo(library)
    faults, stderr = faults_after(RESOLVE_DEVICE, "cpu", XDG_CACHE_HOME=tmp_path)
    assert faults > 3 * BLOCK_PAGES
    assert stderr.startswith(f"note: CPU block arena not in use ({library} exists and is not a file)")
    assert library.is_fifo() and list((tmp_path / "meta-gmvae").iterdir()) == [library]


# Under a limit on the address space (ulimit -v) that leaves room for the arena's reserved range, the run
# must still be able to take the address space it could take with torch's allocator: the arena stays off.
ADDRESS_SPACE_UNDER_ULIMIT = """
import os, resource
import numpy as np
from metagmvae import cpu_memory, distributed

def address_space():
    return next(int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith("VmSize:"))

physical_memory = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
resource.setrlimit(resource.RLIMIT_AS, (address_space() + physical_memory + 2 ** 31, resource.RLIM_INFINITY))
cpu_memory.set_up()
distributed.resolve_device("cpu")
np.empty(3 * 2 ** 30, dtype=np.uint8)  # 3 GiB of address space: more than the range would have left
"""


@on_linux
def test_under_ulimit_v_the_arena_stays_off_and_the_run_keeps_its_address_space():
    stderr = run_python(ADDRESS_SPACE_UNDER_ULIMIT).stderr
    assert stderr.startswith("note: CPU block arena not in use (the process's address space is limited: ulimit -v)")
    assert len(stderr.splitlines()) == 1


@on_linux
@pytest.mark.parametrize("mode", ["0", "2"])
def test_strict_overcommit_keeps_the_arena_off(mode, tmp_path, monkeypatch):
    """With vm.overcommit_memory=2 the pages the arena keeps would count against every other allocation."""
    (tmp_path / "overcommit_memory").write_text(mode + "\n")
    monkeypatch.setattr(cpu_memory, "OVERCOMMIT_MODE", tmp_path / "overcommit_memory")
    reason = cpu_memory._memory_limit() or ""
    assert ("vm.overcommit_memory=2" in reason) == (mode == "2")


@on_linux
def test_a_relative_cache_folder_is_not_used(tmp_path):
    """A relative XDG_CACHE_HOME and HOME (or none) would put the build into the working folder: a note,
    torch's allocator, and nothing written there."""
    result = subprocess.run([sys.executable, "-c", RESOLVE_DEVICE, "cpu"], cwd=tmp_path, capture_output=True, text=True,
                            env=environment(XDG_CACHE_HOME="cache", HOME="home", PYTHONPATH=REPO_ROOT), timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stderr.startswith("note: CPU block arena not in use (no folder for the build: set XDG_CACHE_HOME "
                                    "or HOME to an absolute path)")
    assert list(tmp_path.iterdir()) == []


def test_an_unknown_value_is_refused_in_one_line(tmp_path):
    result = subprocess.run([sys.executable, "omniglot/main.py", "--data-dir", tmp_path,
                             "--save-dir", tmp_path / "run"], cwd=REPO_ROOT, capture_output=True, text=True,
                            env=environment(METAGMVAE_CPU_ALLOCATOR="fast"), timeout=120)
    check_refusal(result.returncode, result.stderr, "METAGMVAE_CPU_ALLOCATOR='fast': expected one of arena, torch",
                  argparse_error=False)
    assert list(tmp_path.iterdir()) == []


# Random blocks of 128 KiB to 48 MiB, each filled with its own number, freed in random order while new
# ones are taken: every live block must still hold its number (no two blocks overlap, none is given back
# to the kernel while in use), and the process's resident memory must stay within the most memory the
# blocks needed at one time, plus what it held before the first block and a few MiB of Python objects
# (an arena that kept every freed page would exceed it by the holes best fit leaves).
# Checks use min and max, whose results are too small for the arena: a temporary block would raise the
# arena's peak need unseen.
ARENA_UNDER_CHURN = """
import os, random
import torch
from metagmvae import cpu_memory
cpu_memory.set_up()
assert cpu_memory.use_arena()

def resident_mib():
    return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20

def holds(block, number):
    return block.min().item() == block.max().item() == number

before = resident_mib()
rng = random.Random(0)
live, live_mib, most_mib, most_over = {}, 0.0, 0.0, 0.0
for number in range(3000):
    if live and (len(live) > 40 or rng.random() < 0.45):
        old = rng.choice(list(live))
        block = live.pop(old)
        assert holds(block, old), f"block {old} was overwritten"
        live_mib -= block.numel() * 4 / 2 ** 20
        del block
    else:
        floats = rng.choice([2 ** 15, rng.randrange(2 ** 15, 2 ** 22), rng.randrange(2 ** 15, 3 * 2 ** 22)])
        live[number] = torch.full((floats,), float(number))
        live_mib += floats * 4 / 2 ** 20
        most_mib = max(most_mib, live_mib)
        most_over = max(most_over, resident_mib() - before - most_mib)
assert all(holds(block, number) for number, block in live.items())
print(most_mib, most_over)
"""


@on_linux
def test_arena_blocks_never_overlap_and_memory_stays_within_the_peak_need():
    most_mib, most_over = map(float, run_python(ARENA_UNDER_CHURN).stdout.split())
    assert most_mib > 200
    assert most_over < 8, f"resident memory exceeded the most the blocks needed at once by {most_over:.0f} MiB"


def train_and_count_faults(data, run, allocator):
    """Train 4 Omniglot steps with two validations through omniglot/main.py's main in a fresh process, then
    count the faults of four 64 MiB tensors in it."""
    flags = ["--data-dir", data, "--save-dir", run, "--way", 5, "--eval-way", 5, "--sample-size", 20,
             "--batch-size", 2, "--train-mc-sample-size", 4, "--test-mc-sample-size", 4, "--train-iters", 4,
             "--freq-iters", 2, "--eval-episodes", 4, "--eval-shots", 1]
    train = f"from omniglot import main\nmain.main({list(map(str, flags))!r})\n"
    return faults_after(train, METAGMVAE_CPU_ALLOCATOR=allocator)[0]


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


@on_linux
def test_a_run_uses_the_arena_and_is_bit_identical_without_it(omniglot_sample, tmp_path):
    """omniglot/main.py trains on the arena by default (few faults afterwards) and on torch's allocator when
    asked (a fault per page); the same last.pt (every tensor torch.equal) and metrics.csv but for the
    wall-time column."""
    faults = {a: train_and_count_faults(omniglot_sample, tmp_path / a, a) for a in ("arena", "torch")}
    assert faults["arena"] < BLOCK_PAGES // 2 and faults["torch"] > 3 * BLOCK_PAGES, faults
    arena, plain = (tensors(torch.load(tmp_path / a / "last.pt", weights_only=False)) for a in ("arena", "torch"))
    assert arena.keys() == plain.keys()
    for name, value in arena.items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(value, plain[name]), name
        else:
            assert value == plain[name] or (value != value and plain[name] != plain[name]), name
    assert metrics_but_wall_time(tmp_path / "arena") == metrics_but_wall_time(tmp_path / "torch")
