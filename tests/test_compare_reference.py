"""benchmarks/compare_reference.py: our models equal the authors' in float64 (needs their code), and a
folder that is not their code is refused in one line."""
import os
import subprocess
import sys

import pytest

from .conftest import REPO_ROOT
from .test_hostile_inputs import check_refusal

SCRIPT = "benchmarks/compare_reference.py"
REFERENCE_DIR = os.environ.get("METAGMVAE_REFERENCE_DIR")
needs_reference = pytest.mark.skipif(not REFERENCE_DIR, reason="set METAGMVAE_REFERENCE_DIR to a checkout of the "
                                     "authors' code (git clone https://github.com/db-Lee/Meta-GMVAE)")


def run_script(*args):
    return subprocess.run([sys.executable, SCRIPT, *map(str, args)], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=600)


@needs_reference
def test_equivalence_with_the_authors_code():
    """Losses, gradients, the Adam step, BatchNorm statistics, predictions and NT-Xent within 1e-10 (~20 s)."""
    result = run_script("--reference", REFERENCE_DIR, "--only", "equivalence")
    assert result.returncode == 0, result.stdout + result.stderr
    rows = [line for line in result.stdout.splitlines() if line.startswith("| ") and "largest" not in line]
    assert len(rows) == 14 and not any("beyond tolerance" in row for row in rows), result.stdout
    assert "300/300 queries agree" in result.stdout


@needs_reference
def test_equivalence_fails_beyond_tolerance():
    """A tolerance no float64 computation meets makes the script exit 1 and name the failures."""
    result = run_script("--reference", REFERENCE_DIR, "--only", "equivalence", "--tolerance", "1e-30")
    assert result.returncode == 1
    assert "beyond tolerance" in result.stdout and "differ beyond tolerance" in result.stderr


def fake_checkout(folder):
    """The authors' file names holding other code."""
    for name in ("omniglot/model.py", "omniglot/module.py", "mimgnet/model.py", "mimgnet/module.py", "simclr/utils.py"):
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text("import a_module_that_does_not_exist\n")


@pytest.mark.parametrize("fake, text", [(False, "is not a checkout of the authors' code"),
                                        (True, "cannot import the authors' models")])
def test_bad_reference_is_refused_in_one_line(tmp_path, fake, text):
    if fake:
        fake_checkout(tmp_path)
    result = run_script("--reference", tmp_path, "--only", "equivalence")
    check_refusal(result.returncode, result.stderr, text, argparse_error=False)


@needs_reference
def test_speed_table_times_every_column_in_its_own_process():
    """--quick --rounds 1 (about a minute): one row per configuration, each ratio the quotient of its
    columns, and the three workers gone afterwards."""
    result = run_script("--reference", REFERENCE_DIR, "--only", "speed", "--quick", "--rounds", "1")
    assert result.returncode == 0, result.stdout + result.stderr
    table = result.stdout.split("Speed in float32")[1].split("Peak resident memory")[0]
    rows = [line.strip("| ").split(" | ") for line in table.splitlines()
            if line.startswith("| ") and not line.startswith("| configuration")]

    def seconds(cell):
        value, unit = cell.split()
        return float(value) / (1000 if unit == "ms" else 1)

    assert len(rows) == 5, result.stdout
    for name, theirs, theirs_pages, ours, ratio, ratio_pages in rows:
        assert float(ratio.rstrip("x")) == pytest.approx(seconds(theirs) / seconds(ours), rel=0.02), name
        assert float(ratio_pages.rstrip("x")) == pytest.approx(seconds(theirs_pages) / seconds(ours), rel=0.02), name
    processes = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout.splitlines()
    assert not [p for p in processes if SCRIPT in p and "--worker" in p]
