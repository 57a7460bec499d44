"""A run directory: config.json, metrics.csv, checkpoints (*.pt) and results.json."""
import csv
import io
import shutil
from pathlib import Path

from .errors import UserError
from .fileio import write_json, write_text

LAST_CHECKPOINT = "last.pt"
RUN_FILES = ("config.json", "metrics.csv", "results.json", "eval_results.json")  # besides *.pt and figures/


class RunDir:
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

    def checkpoint(self, name):
        return self.path / f"{name}.pt"

    def read_metrics(self, up_to, key="step"):
        """Rows of metrics.csv (as strings) whose `key` column is <= up_to: those a checkpoint has seen."""
        path = self.path / "metrics.csv"
        if not path.exists():
            return []
        return [r for r in csv.DictReader(path.open()) if int(r[key]) <= up_to]

    def write_metrics(self, rows):
        """Rewrite metrics.csv atomically; the columns are the union of the rows' keys, in order."""
        fields = list(dict.fromkeys(k for row in rows for k in row))
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
        write_text(self.path / "metrics.csv", buffer.getvalue())

    def write_results(self, results):
        write_json(self.path / "results.json", results)


def check_same_flags(saved_config, args, flags):
    """Refuse to resume a run whose saved config differs from `args` in any of `flags`."""
    differing = [f for f in flags if saved_config.get(f) != getattr(args, f)]
    if differing:
        raise UserError("--resume with different settings than the saved run: " + ", ".join(
            f"--{f.replace('_', '-')} {getattr(args, f)} (saved {saved_config.get(f)})" for f in differing))
