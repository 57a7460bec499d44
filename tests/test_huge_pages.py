"""Every command backs large CPU tensors with 2 MB pages (metagmvae.cpu_memory.set_up), unless the user
exported THP_MEM_ALLOC_ENABLE=0 (docs/performance.md, "Page faults")."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import REPO_ROOT

THP_MODE = Path("/sys/kernel/mm/transparent_hugepage/enabled")
COMMANDS = ["omniglot.main", "mimgnet.main", "simclr.main", "omniglot.evaluate", "mimgnet.evaluate",
            "omniglot.cluster", "mimgnet.cluster", "omniglot.draw_figures"]

# Runs `main(["--help"])` of a command (its first statement is cpu_memory.set_up), then allocates 64 MiB and
# prints how many KiB of the process's anonymous memory that added in huge pages.
CHILD = """
import contextlib, importlib, io, sys
from pathlib import Path
import torch

def huge_kib():
    rollup = Path("/proc/self/smaps_rollup").read_text().splitlines()
    return next(int(line.split()[1]) for line in rollup if line.startswith("AnonHugePages:"))

command = importlib.import_module(sys.argv[1])
with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):
    command.main(["--help"])
before = huge_kib()
x = torch.ones(2 ** 24)
print(huge_kib() - before)
"""

pytestmark = pytest.mark.skipif(not THP_MODE.exists() or "[madvise]" not in THP_MODE.read_text(),
                                reason="needs Linux transparent huge pages in madvise mode (with 'always' every "
                                       "process gets them, with 'never' none does)")


def huge_kib_added(command, **env):
    environ = {k: v for k, v in os.environ.items() if k != "THP_MEM_ALLOC_ENABLE"} | env
    result = subprocess.run([sys.executable, "-c", CHILD, command], cwd=REPO_ROOT, env=environ, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return int(result.stdout.split()[-1])


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_backs_large_tensors_with_huge_pages(command):
    assert huge_kib_added(command) >= 32 * 1024


def test_the_users_setting_wins():
    assert huge_kib_added("omniglot.main", THP_MEM_ALLOC_ENABLE="0") == 0
