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
# (optional: eval_results.json has no training), its config's (optional, a config written by hand may lack
# them) and every "<way>way-<shot>shot" entry's (required).
RUN_FIELDS = {
    "config": (lambda v: isinstance(v, dict), "a dict of the run's flags"),
    "train_iters": (_count, "a positive integer"),
    "wall_time_s": (lambda v: _number(v) and v >= 0, "a finite number of seconds >= 0"),
}
CONFIG_FIELDS = {
    "eval_way": (lambda v: _count(v) and v >= 2, "an integer >= 2 (--eval-way)"),
    "eval_shots": (lambda v: isinstance(v, list) and len(v) > 0 and all(map(_count, v)),
                   "a non-empty list of positive integers (--eval-shots; true is not a shot)"),
    "eval_episodes": (lambda v: _count(v) and v >= MIN_EPISODES, f"an integer >= {MIN_EPISODES} (--eval-episodes)"),
    "train_iters": (_count, "a positive integer (--train-iters)"),
    "hidden_size": (_count, "a positive integer (Omniglot's --hidden-size)"),
    "shot": (_count, "a positive integer (Mini-ImageNet's --shot)"),
    "data_dir": (lambda v: isinstance(v, str) and not isinstance(v, LongInteger), "a folder, a string (--data-dir)"),
}
ENTRY_FIELDS = {
    "mean": (lambda v: _number(v) and 0 <= v <= 1, "an accuracy, a finite number in [0, 1]"),
    "ci95": (lambda v: _number(v) and 0 <= v <= 1, "a 95% CI half-width, a finite number in [0, 1]"),
    "episodes": (lambda v: _count(v) and v >= MIN_EPISODES,
                 f"an integer >= {MIN_EPISODES} (the 95% CI of one episode is 0 whatever the model)"),
}
MODEL_ROWS = "Meta-GMVAE"  # the method column of the "test" entries
# a baseline's name as a run writes it (evaluation's baselines: pixel_nearest_class_mean, ...): nothing that reads
# as the model's rows (Meta-GMVAE, with any case or spaces) or as its "test" entries
BASELINE_NAME = re.compile(r"[a-z][a-z0-9_]{0,63}")


def check_results(results, path):
    """Refuse results whose fields the table reads have values that give no meaningful row (see RUN_FIELDS,
    CONFIG_FIELDS and ENTRY_FIELDS) or that no run writes: a train_iters other than its config's, an entry of
    another way or shot than the config's --eval-way and --eval-shots or of another number of episodes than its
    --eval-episodes, "test" entries of several ways or missing one of --eval-shots, a baseline named as no run
    names one or with entries the test has not, a 95% CI wider than accuracies in [0, 1] of that mean allow.
    Names the file and the first bad field."""
    def refuse(field, expected):
        raise UserError(f"{path}: malformed {field}, expected {expected}")

    if not isinstance(results, dict):
        refuse("results", "a JSON object")
    for field, (valid, expected) in RUN_FIELDS.items():
        if results.get(field) is not None and not valid(results[field]):
            refuse(f"\"{field}\" ({_shown(results[field])})", expected)
    config = results.get("config") or {}
    for field, (valid, expected) in CONFIG_FIELDS.items():
        if field in config and not valid(config[field]):
            refuse(f"config/{field} ({_shown(config[field])})", expected)
    if "hidden_size" in config and "shot" in config:
        refuse("\"config\" (both hidden_size and shot)", "the flags of one dataset's run (Omniglot's have "
               "hidden_size, Mini-ImageNet's shot)")
    iters = results.get("train_iters")
    if iters is not None and config.get("train_iters", iters) != iters:
        refuse(f"\"train_iters\" ({_shown(iters)})",
               f"the --train-iters {_shown(config['train_iters'])} that its \"config\" ran")
    test, baselines = results.get("test"), results.get("baselines", {})
    if not isinstance(test, dict) or not test:
        refuse("\"test\"", "a non-empty dict")
    if not isinstance(baselines, dict):
        refuse("\"baselines\"", "a dict")
    check_entries(test, "test", config, refuse)
    ways = {int(KEY.fullmatch(key)[1]) for key in test}
    missing = set(config.get("eval_shots", [])) - {int(KEY.fullmatch(key)[2]) for key in test}
    if len(ways) > 1:
        refuse(f"\"test\" ({shortened(', '.join(test))})", "entries of one way (a run tests one --eval-way)")
    if missing:
        refuse(f"\"test\" ({shortened(', '.join(test))})", f"an entry at each --eval-shots {config['eval_shots']} "
               f"that its \"config\" tested (none at shot {', '.join(map(str, sorted(missing)))})")
    for name, entries in baselines.items():
        if not BASELINE_NAME.fullmatch(name) or name == "test":
            refuse(f"baseline name {_shown(name)}", "a name as a run writes it (lowercase a-z, 0-9, _, up to 64), "
                   f"other than \"test\": the model's entries are \"test\", its rows {MODEL_ROWS}")
        check_entries(entries, f"baselines/{name}", config, refuse)
        if not set(entries) <= set(test):
            refuse(f"baselines/{name} ({shortened(', '.join(entries))})",
                   f"keys among those of \"test\" ({shortened(', '.join(test))}): a baseline is scored on the "
                   "model's episodes")
        for key, res in entries.items():
            if res["episodes"] != test[key]["episodes"]:
                refuse(f"baselines/{name}/{key}/episodes ({_shown(res['episodes'])})",
                       f"the {test[key]['episodes']} episodes of test/{key}, on which the baseline is scored")


def check_entries(entries, name, config, refuse):
    """Refuse `entries` ({"<way>way-<shot>shot": {"mean", "ci95", "episodes"}}, named `name` in messages) that
    are not what a run of `config` writes (see check_results)."""
    if not isinstance(entries, dict):
        refuse(f"entry {shortened(name)}", "a dict of \"<way>way-<shot>shot\" entries")
    for key, res in entries.items():
        match = KEY.fullmatch(key)
        if not match or int(match[1]) < 2 or not isinstance(res, dict):
            refuse(f"entry {name}/{shortened(key)}", "\"<way>way-<shot>shot\" (way >= 2, shot >= 1, written "
                   "without leading zeros): {\"mean\", \"ci95\", \"episodes\"}")
        way, shot = map(int, match.groups())
        if config.get("eval_way", way) != way or shot not in config.get("eval_shots", [shot]):
            refuse(f"entry {name}/{key}", f"the {config.get('eval_way', way)}-way episodes at --eval-shots "
                   f"{config.get('eval_shots', [shot])} that its \"config\" tested")
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
    methods = [(MODEL_ROWS, results["test"]), *results.get("baselines", {}).items()]  # names checked: none is another's
    rows = []
    for method, entries in methods:
        # results.json sorts its keys as text (5way-20shot before 5way-5shot): order by number instead
        for key, res in sorted(entries.items(), key=lambda item: tuple(map(int, KEY.fullmatch(item[0]).groups()))):
            way, shot = KEY.fullmatch(key).groups()
            accuracy = f"{100 * res['mean']:.2f} +- {100 * res['ci95']:.2f}"
            rows.append([*common, method, way, shot, accuracy, str(res["episodes"]),
                         *(train if method == MODEL_ROWS else ["-", "-"])])
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
        rows, read = [], {}  # read: resolved results file -> the RUN_DIR that named it
        for run in args.runs:
            path = results_file(run)
            earlier = read.setdefault(path.resolve(), run)
            if earlier is not run:
                raise UserError(f"{run} and {earlier} are one results file ({path.resolve()}): its rows would be "
                                "in the table twice, as two runs")
            rows += table_rows(str(run), load_results(path))
    print(markdown_table(rows))


if __name__ == "__main__":
    main()
