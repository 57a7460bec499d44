"""A Markdown table of the test results of runs: `python -m metagmvae.report RUN_DIR [RUN_DIR ...]`.

Each RUN_DIR is a run folder holding results.json (or eval_results.json, written by --eval-only), or one
of those files itself. One row per test entry ("<way>way-<shot>shot") and per baseline entry, with the
accuracy as mean +- 95% CI in %; the dataset is Omniglot when the config has hidden_size (or its
data_dir names omniglot), else Mini-ImageNet.
"""
import argparse
import json
import re
from pathlib import Path

from .startup import quiet_ctrl_c

quiet_ctrl_c(__name__, "python -m metagmvae.report")  # before torch loads: a Ctrl-C is one line, exit code 130

from .runfiles import UserError, exit_on_user_error  # noqa: E402

RESULT_FILES = ("results.json", "eval_results.json")
KEY = re.compile(r"(\d+)way-(\d+)shot")
COLUMNS = ("run", "dataset", "method", "way", "shot", "accuracy (%)", "episodes", "train iterations", "wall time")


def results_file(path):
    """The results file of a run folder (results.json, else eval_results.json), or `path` itself."""
    path = Path(path)
    if path.is_file():
        return path
    for name in RESULT_FILES:
        if (path / name).is_file():
            return path / name
    raise UserError(f"{path}: no {' or '.join(RESULT_FILES)}")


def load_results(path):
    """The parsed results dict; unreadable or malformed files raise UserError naming the file."""
    try:
        results = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{path}: not a readable JSON file ({e})") from None
    if not isinstance(results, dict) or not isinstance(results.get("test"), dict) or not results["test"]:
        raise UserError(f"{path}: malformed results, expected a non-empty \"test\" dict")
    if not isinstance(results.get("baselines", {}), dict):
        raise UserError(f"{path}: malformed \"baselines\", expected a dict")
    for name, entries in {"test": results["test"], **results.get("baselines", {})}.items():
        if not isinstance(entries, dict):
            raise UserError(f"{path}: malformed entry {name!r}")
        for key, res in entries.items():
            if not KEY.fullmatch(key) or not isinstance(res, dict) or not all(
                    isinstance(res.get(k), (int, float)) for k in ("mean", "ci95", "episodes")):
                raise UserError(f"{path}: malformed entry {name}/{key}, expected "
                                "\"<way>way-<shot>shot\": {\"mean\", \"ci95\", \"episodes\"}")
    return results


def dataset_name(config):
    if "hidden_size" in config or "omniglot" in str(config.get("data_dir", "")).lower():
        return "Omniglot"
    return "Mini-ImageNet" if config else "?"


def format_wall_time(seconds):
    if seconds is None:
        return "-"
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.0f} s"


def table_rows(run, results):
    """Table rows (lists of cells) of one run: its test entries, then its baselines."""
    config = results.get("config") or {}
    common = [run, dataset_name(config)]
    train = [str(results.get("train_iters", "-")), format_wall_time(results.get("wall_time_s"))]
    methods = {"Meta-GMVAE": results["test"], **results.get("baselines", {})}
    rows = []
    for method, entries in methods.items():
        # results.json sorts its keys as text (5way-20shot before 5way-5shot): order by number instead
        for key, res in sorted(entries.items(), key=lambda item: tuple(map(int, KEY.fullmatch(item[0]).groups()))):
            way, shot = KEY.fullmatch(key).groups()
            accuracy = f"{100 * res['mean']:.2f} +- {100 * res['ci95']:.2f}"
            rows.append([*common, method, way, shot, accuracy, str(res["episodes"]),
                         *(train if method == "Meta-GMVAE" else ["-", "-"])])
    return rows


def markdown_table(rows):
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m metagmvae.report", description=__doc__.split("\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path, metavar="RUN_DIR",
                        help="run folders (with results.json or eval_results.json) or such files")
    args = parser.parse_args(argv)
    with exit_on_user_error(parser.prog):
        rows = []
        for run in args.runs:
            path = results_file(run)
            rows += table_rows(str(run), load_results(path))
    print(markdown_table(rows))


if __name__ == "__main__":
    main()
