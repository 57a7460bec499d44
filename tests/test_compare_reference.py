"""benchmarks/compare_reference.py: our models equal the authors' in float64 (needs their code), a
folder that is not their code is refused in one line, a comparison that did not happen never exits 0, and
nothing is written into the --reference folder."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import REPO_ROOT
from .test_hostile_inputs import check_refusal, snapshot

SCRIPT = "benchmarks/compare_reference.py"
REFERENCE_DIR = os.environ.get("METAGMVAE_REFERENCE_DIR")
needs_reference = pytest.mark.skipif(not REFERENCE_DIR, reason="set METAGMVAE_REFERENCE_DIR to a checkout of the "
                                     "authors' code (git clone https://github.com/db-Lee/Meta-GMVAE)")


def run_script(*args, timeout=600):
    return subprocess.run([sys.executable, SCRIPT, *map(str, args)], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=timeout)


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


REFERENCE_FILES = ("omniglot/model.py", "omniglot/module.py", "mimgnet/model.py", "mimgnet/module.py",
                   "simclr/utils.py")


def fake_checkout(folder, code="import a_module_that_does_not_exist\n"):
    """The authors' file names holding other code."""
    for name in REFERENCE_FILES:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(code)


@pytest.mark.parametrize("fake, text", [(None, "is not a checkout of the authors' code"),
                                        ("import a_module_that_does_not_exist\n", "cannot import the authors' models"),
                                        ("import sys\nsys.exit(0)\n", "SystemExit: 0"),
                                        ("class GMVAE:\n    pass\n\nNTXentLoss = GMVAE\n", "TypeError")])
@pytest.mark.parametrize("only", ["equivalence", "speed"])
def test_bad_reference_is_refused_in_one_line_and_left_as_it_was(tmp_path, fake, text, only):
    """Code that exits when imported (exit code 0) or is not the authors' classes compares nothing: exit
    code 2, one line; no __pycache__ written into the folder."""
    if fake:
        fake_checkout(tmp_path, fake)
    before = snapshot(tmp_path)
    result = run_script("--reference", tmp_path, "--only", only)
    check_refusal(result.returncode, result.stderr, text, argparse_error=False)
    assert snapshot(tmp_path) == before and not list(tmp_path.rglob("__pycache__"))


def copy_of_the_reference(folder, appended=""):
    """The authors' files that the script imports, copied into `folder`, `appended` added to their
    omniglot/model.py."""
    for name in REFERENCE_FILES:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(Path(REFERENCE_DIR) / name, folder / name)
    with open(folder / "omniglot" / "model.py", "a") as model:
        model.write(appended)
    return folder


@needs_reference
def test_reference_code_that_exits_mid_comparison_is_never_a_success(tmp_path):
    """The authors' Omniglot forward replaced by sys.exit(0): the equivalence part refuses it (exit code 2,
    one line); the speed part's worker stops, and the script says so in one line with exit code 1."""
    reference = copy_of_the_reference(tmp_path, "\nimport sys\nGMVAE.forward = lambda *args: sys.exit(0)\n")
    result = run_script("--reference", reference, "--only", "equivalence")
    check_refusal(result.returncode, result.stderr, "exited (SystemExit: 0) during the comparison",
                  argparse_error=False)
    result = run_script("--reference", reference, "--only", "speed", "--quick", "--rounds", "1")
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.splitlines() == [f"{SCRIPT}: error: the worker timing the authors' code stopped with exit "
                                          "code 0 before the comparison ended"]


@needs_reference
def test_speed_table_times_every_column_in_its_own_process(tmp_path):
    """--quick --rounds 1 (two minutes on an idle 2-core machine, ten times that under heavy load): one row
    per configuration, each ratio the quotient of its columns, the goals table, the four workers gone
    afterwards, and nothing written into the --reference folder."""
    reference = copy_of_the_reference(tmp_path)
    before = snapshot(reference)
    result = run_script("--reference", reference, "--only", "speed", "--quick", "--rounds", "1", timeout=3000)
    assert result.returncode == 0, result.stdout + result.stderr
    assert snapshot(reference) == before
    table = result.stdout.split("Speed in float32")[1].split("Peak resident memory")[0]
    rows = [line.strip("| ").split(" | ") for line in table.splitlines()
            if line.startswith("| ") and not line.startswith("| configuration")]

    def seconds(cell):
        value, unit = cell.split()
        return float(value) / (1000 if unit == "ms" else 1)

    assert len(rows) == 5, result.stdout
    for name, theirs, theirs_pages, ours, ours_kept, ratio, ratio_pages, ratio_kept in rows:
        assert float(ratio.rstrip("x")) == pytest.approx(seconds(theirs) / seconds(ours), rel=0.02), name
        assert float(ratio_pages.rstrip("x")) == pytest.approx(seconds(theirs_pages) / seconds(ours), rel=0.02), name
        assert float(ratio_kept.rstrip("x")) == pytest.approx(seconds(theirs) / seconds(ours_kept), rel=0.02), name
    goals = result.stdout.split("Issue 23's goals")[1]
    assert "Omniglot train step, reduced B=1 M=100 S=8: ratio" in goals
    processes = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout.splitlines()
    assert not [p for p in processes if SCRIPT in p and "--worker" in p]
