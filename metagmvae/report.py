"""A Markdown table of the test results of runs: `python -m metagmvae.report RUN_DIR [RUN_DIR ...]`.

Each RUN_DIR is a run folder holding results.json (or eval_results.json, written by --eval-only), or one
of those files itself. One row per test entry ("<way>way-<shot>shot") and per baseline entry, with the
accuracy as mean +- 95% CI in %; the dataset is Omniglot when the config has hidden_size, Mini-ImageNet
when it has shot (else as its data_dir says).  A | in a cell is escaped, a line break shown as \\x0a.
"""
import argparse
import json
import math
import re
import sys
from pathlib import Path

from .startup import quiet_ctrl_c

quiet_ctrl_c(__name__, "python -m metagmvae.report")  # before torch loads: a Ctrl-C is one line, exit code 130

from .evaluation import MIN_EPISODES  # noqa: E402
from .runfiles import UserError, check_regular_file, exit_on_user_error, shortened  # noqa: E402

RESULT_FILES = ("results.json", "eval_results.json")
KEY = re.compile(r"([1-9][0-9]{0,17})way-([1-9][0-9]{0,17})shot")  # as a run writes: ASCII digits, no leading 0
MAX_COUNT = 2 ** 63 - 1  # counts are int64 in a run: more steps or episodes cannot come from one
COLUMNS = ("run", "dataset", "method", "way", "shot", "accuracy (%)", "episodes", "train iterations", "wall time")


def results_file(path):
    """The results file of a run folder (results.json, else eval_results.json), or `path` itself."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        return path
    for name in RESULT_FILES:
        if (path / name).exists():
            return path / name
    raise UserError(f"{path}: no {' or '.join(RESULT_FILES)}")


def _number(value):
    """A finite JSON number that a float holds (true and false are not numbers)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and abs(value) <= sys.float_info.max


def _count(value):
    return isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= MAX_COUNT


class LongInteger(str):
    """A JSON integer of more digits than any count a run writes, kept as its text (Python refuses to turn
    more than 4300 digits into an int)."""


def _json_int(text):
    return int(text) if len(text) <= len(str(MAX_COUNT)) + 1 else LongInteger(text)


def _shown(value):
    """`value` as the file has it, cut to 40 characters."""
    return shortened(value if isinstance(value, LongInteger) else json.dumps(value))


class DuplicateKey(Exception):
    """A key that a JSON object holds twice (json keeps the last value without a word)."""


def _object_of_unique_keys(pairs):
    keys = [key for key, _ in pairs]
    if len(set(keys)) < len(keys):
        raise DuplicateKey(next(key for i, key in enumerate(keys) if key in keys[:i]))
    return dict(pairs)


def possible_ci95(mean, episodes):
    """The largest 95% half-width 1.96 * std / sqrt(E) (evaluation.mean_confidence_interval) of `episodes`
    accuracies in [0, 1] whose mean is `mean`: their variance is at most mean * (1 - mean)."""
    return 1.96 * math.sqrt(mean * (1 - mean) / episodes)


# What the table reads, each field with the check of its value and what it should be: a run's fields
# (optional: eval_results.json has no training) and every "<way>way-<shot>shot" entry's (required).
RUN_FIELDS = {
    "config": (lambda v: isinstance(v, dict), "a dict of the run's flags"),
    "train_iters": (_count, "a positive integer"),
    "wall_time_s": (lambda v: _number(v) and v >= 0, "a finite number of seconds >= 0"),
}
ENTRY_FIELDS = {
    "mean": (lambda v: _number(v) and 0 <= v <= 1, "an accuracy, a finite number in [0, 1]"),
    "ci95": (lambda v: _number(v) and 0 <= v <= 1, "a 95% CI half-width, a finite number in [0, 1]"),
    "episodes": (lambda v: _count(v) and v >= MIN_EPISODES,
                 f"an integer >= {MIN_EPISODES} (the 95% CI of one episode is 0 whatever the model)"),
}


def check_results(results, path):
    """Refuse results whose fields the table reads have values that give no meaningful row (see RUN_FIELDS
    and ENTRY_FIELDS) or that no run writes: an entry of another way or shot than the config's --eval-way and
    --eval-shots or of another number of episodes than its --eval-episodes, a 95% CI wider than accuracies in
    [0, 1] of that mean allow.  Names the file and the first bad field."""
    def refuse(field, expected):
        raise UserError(f"{path}: malformed {field}, expected {expected}")

    if not isinstance(results, dict):
        refuse("results", "a JSON object")
    for field, (valid, expected) in RUN_FIELDS.items():
        if results.get(field) is not None and not valid(results[field]):
            refuse(f"\"{field}\" ({_shown(results[field])})", expected)
    if not isinstance(results.get("test"), dict) or not results["test"]:
        refuse("\"test\"", "a non-empty dict")
    if not isinstance(results.get("baselines", {}), dict):
        refuse("\"baselines\"", "a dict")
    config = results.get("config") or {}
    for name, entries in {"test": results["test"], **results.get("baselines", {})}.items():
        if not isinstance(entries, dict):
            refuse(f"entry {shortened(name)}", "a dict of \"<way>way-<shot>shot\" entries")
        for key, res in entries.items():
            match = KEY.fullmatch(key)
            if not match or int(match[1]) < 2 or not isinstance(res, dict):
                refuse(f"entry {name}/{shortened(key)}", "\"<way>way-<shot>shot\" (way >= 2, shot >= 1, written "
                       "without leading zeros): {\"mean\", \"ci95\", \"episodes\"}")
            way, shot = map(int, match.groups())
            if config.get("eval_way", way) != way or shot not in config.get("eval_shots", [shot]):
                refuse(f"entry {name}/{key}", f"the {config.get('eval_way')}-way episodes at --eval-shots "
                       f"{config.get('eval_shots')} that its \"config\" tested")
            for field, (valid, expected) in ENTRY_FIELDS.items():
                if not valid(res.get(field)):
                    refuse(f"{name}/{key}/{field} ({_shown(res.get(field))})", expected)
            if config.get("eval_episodes", res["episodes"]) != res["episodes"]:
                refuse(f"{name}/{key}/episodes ({_shown(res['episodes'])})",
                       f"the --eval-episodes {_shown(config['eval_episodes'])} that its \"config\" tested")
            if res["ci95"] > possible_ci95(res["mean"], res["episodes"]) * (1 + 1e-9) + 1e-12:
                refuse(f"{name}/{key}/ci95 ({_shown(res['ci95'])})",
                       f"at most {possible_ci95(res['mean'], res['episodes']):.4g}, the widest 95% CI of "
                       f"{res['episodes']} accuracies in [0, 1] with mean {res['mean']:.4g}")


def load_results(path):
    """The parsed and checked (check_results) results dict; unreadable or malformed files raise UserError
    naming the file."""
    check_regular_file(path)
    try:
        results = json.loads(path.read_text(), parse_int=_json_int, object_pairs_hook=_object_of_unique_keys)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{path}: not a readable JSON file ({e})") from None
    except DuplicateKey as e:
        raise UserError(f"{path}: malformed results, the key {_shown(str(e))} twice in one object (which of its "
                        "values would the table show?); a run writes each key once") from None
    except RecursionError:
        raise UserError(f"{path}: not a results file (JSON nested too deeply to read)") from None
    check_results(results, path)
    return results


def dataset_name(config):
    """Omniglot's runs save --hidden-size and Mini-ImageNet's --shot; a config with neither (written by
    hand) is named by its data_dir."""
    if "hidden_size" in config:
        return "Omniglot"
    if "shot" in config:
        return "Mini-ImageNet"
    if "omniglot" in str(config.get("data_dir", "")).lower():
        return "Omniglot"
    return "Mini-ImageNet" if config else "?"


def table_cell(text):
    """`text` as one Markdown table cell: | escaped, line breaks and other control characters as \\xNN."""
    return "".join(f"\\x{ord(c):02x}" if ord(c) < 32 or ord(c) == 127 else c for c in text).replace("|", "\\|")


def format_wall_time(seconds):
    if seconds is None:
        return "-"
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h" if seconds < 3600e5 else f"{seconds / 3600:.3e} h"
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
    return "\n".join(lines + ["| " + " | ".join(map(table_cell, row)) + " |" for row in rows])


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
