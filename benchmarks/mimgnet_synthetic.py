"""The whole Mini-ImageNet pipeline on a synthetic image set, about 20 minutes of an idle 2-core CPU by default.

Each step is the command a user runs (printed, then run from the repository root):
data/synthetic_mimgnet.py -> data/prepare_mimgnet.py -> simclr/main.py (train + export) -> simclr/main.py
--export-only on the same encoder with random weights (the SimCLR run's own initial weights: same seed)
-> mimgnet/main.py on the SimCLR features. Between the last two, a 5-way nearest-class-mean classifier
scores the test features of both encoders on the same episodes as mimgnet/main.py's test, so that the table
shows what SimCLR training adds over its initial weights and what Meta-GMVAE adds over the features.
Prints a Markdown table (5-way accuracy, % with 95% CI) and the wall time of every stage, and writes
<out>/summary.json.

    python benchmarks/mimgnet_synthetic.py --out runs/mimgnet-synthetic
"""
import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from metagmvae.episodes import make_eval_set  # noqa: E402
from metagmvae.evaluation import nearest_class_mean_accuracies, summarize  # noqa: E402
from metagmvae.folders import OutputFolder  # noqa: E402
from metagmvae.runfiles import checkpoint_bytes  # noqa: E402
from mimgnet.dataset import load_features  # noqa: E402
from simclr.model import SimCLR  # noqa: E402
from simclr.trainer import IMAGE_SIZE  # noqa: E402

WAY, QUERY = 5, 15  # evaluation episodes, as mimgnet/main.py's defaults
SHOTS = (1, 5, 20)  # those that per-class images allow (shot + QUERY) are tested
ROWS = {"random_ncm": "random-weight encoder, nearest class mean",
        "simclr_ncm": "SimCLR encoder, nearest class mean",
        "simclr_logreg": "SimCLR encoder, logistic regression",
        "metagmvae": "Meta-GMVAE on SimCLR features"}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "mimgnet-synthetic",
                   help="folder for the data, the runs, the features and summary.json")
    p.add_argument("--train-classes", type=int, default=16, help="synthetic classes for SimCLR and Meta-GMVAE training")
    p.add_argument("--val-classes", type=int, default=8, help="synthetic classes for checkpoint selection")
    p.add_argument("--test-classes", type=int, default=8, help="synthetic classes for the test")
    p.add_argument("--per-class", type=int, default=60, help="images per class")
    p.add_argument("--simclr-hidden-size", type=int, default=64, help="SimCLR conv channels (features 4x this)")
    p.add_argument("--simclr-epochs", type=int, default=30, help="SimCLR training epochs")
    p.add_argument("--simclr-batch-size", type=int, default=64, help="SimCLR images per step")
    p.add_argument("--mimgnet-steps", type=int, default=3000, help="Meta-GMVAE training steps")
    p.add_argument("--mimgnet-freq", type=int, default=1000, help="Meta-GMVAE validation every this many steps")
    p.add_argument("--train-mc-sample-size", type=int, default=32, help="Meta-GMVAE MC samples in training")
    p.add_argument("--test-mc-sample-size", type=int, default=64, help="Meta-GMVAE MC samples at prediction")
    p.add_argument("--eval-episodes", type=int, default=1000, help="episodes per shot for validation and test")
    p.add_argument("--seed", type=int, default=0, help="seeds the data, both trainings and the episodes")
    args = p.parse_args(argv)
    if min(args.val_classes, args.test_classes) < WAY or args.per_class < 1 + QUERY:
        p.error(f"{WAY}-way episodes with {QUERY} queries need --val-classes and --test-classes >= {WAY} "
                f"and --per-class >= {1 + QUERY}")
    return args


def shown(path):
    """A path as the commands take it: relative to the repository root (their working folder) when inside."""
    path = Path(path).resolve()
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def run(stage, script, *flags, timings, commands):
    """Run `python script flags` from the repository root; record its wall time; stop if it fails."""
    cmd = [sys.executable, script, *map(str, flags)]
    print(f"\n$ {shlex.join(cmd)}", flush=True)
    start = time.perf_counter()
    result = subprocess.run(cmd, cwd=ROOT)
    timings[stage] = time.perf_counter() - start
    commands.append(shlex.join(cmd))
    if result.returncode:
        sys.exit(f"{script} exited with code {result.returncode}; the benchmark stops here")


def save_random_checkpoint(folder, name, hidden_size, seed):
    """A SimCLR checkpoint `name` in the opened OutputFolder, with the weights simclr/main.py --seed `seed` starts
    from (seeded, then built)."""
    torch.manual_seed(seed)
    model = SimCLR(hidden_size=hidden_size, image_size=IMAGE_SIZE)
    folder.write_bytes(name, checkpoint_bytes({"model": model.state_dict(),
                                               "model_config": {"hidden_size": hidden_size, "image_size": IMAGE_SIZE}}))


def ncm_accuracies(feature_dir, shots, episodes, seed):
    """{"5way-<shot>shot": summary} of nearest class mean on the test features, episodes as mimgnet/main.py's."""
    test = load_features(feature_dir, ("test",))["test"]  # (C, I, F)
    return {f"{WAY}way-{shot}shot": summarize(nearest_class_mean_accuracies(
        make_eval_set(test, WAY, shot, QUERY, episodes, seed, "test"))) for shot in shots}


def run_pipeline(args, folder, shots, timings, commands):
    """Every stage, in subfolders of the opened OutputFolder; returns {row: {"5way-<shot>shot": summary}}."""
    out = folder.path
    data, features = out / "data", {name: out / "features" / name for name in ("simclr", "random")}
    steps = dict(timings=timings, commands=commands)
    run("generate", "data/synthetic_mimgnet.py", "--out", shown(data), "--train-classes", args.train_classes,
        "--val-classes", args.val_classes, "--test-classes", args.test_classes, "--per-class", args.per_class,
        "--seed", args.seed, **steps)
    run("prepare", "data/prepare_mimgnet.py", "--images", shown(data / "images"), "--splits", shown(data), "--out",
        shown(out / "arrays"), **steps)
    simclr = ["simclr/main.py", "--data-dir", shown(out / "arrays"), "--batch-size", args.simclr_batch_size]
    run("simclr_train_export", *simclr, "--save-dir", shown(out / "simclr"), "--feature-save-dir",
        shown(features["simclr"]), "--hidden-size", args.simclr_hidden_size, "--train-epochs", args.simclr_epochs,
        "--seed", args.seed, "--overwrite", **steps)
    save_random_checkpoint(folder, "random_init.pt", args.simclr_hidden_size, args.seed)
    run("random_init_export", *simclr, "--feature-save-dir", shown(features["random"]), "--export-only",
        "--checkpoint", shown(out / "random_init.pt"), **steps)
    start = time.perf_counter()
    results = {f"{name}_ncm": ncm_accuracies(path, shots, args.eval_episodes, args.seed)
               for name, path in features.items()}
    timings["nearest_class_mean"] = time.perf_counter() - start
    run("mimgnet", "mimgnet/main.py", "--data-dir", shown(features["simclr"]), "--save-dir", shown(out / "mimgnet"),
        "--train-iters", args.mimgnet_steps, "--freq-iters", args.mimgnet_freq, "--eval-episodes",
        args.eval_episodes, "--train-mc-sample-size", args.train_mc_sample_size, "--test-mc-sample-size",
        args.test_mc_sample_size, "--way", WAY, "--query", QUERY, "--eval-shots", *shots, "--seed", args.seed,
        "--overwrite", **steps)
    mimgnet = json.loads((out / "mimgnet" / "results.json").read_text())
    results["simclr_logreg"] = mimgnet["baselines"]["feature_logistic_regression"]
    results["metagmvae"] = {key: {k: v for k, v in res.items() if k != "checkpoint"}
                            for key, res in mimgnet["test"].items()}
    # The same episodes give the same nearest-class-mean accuracies in both places.
    results["simclr_ncm_matches_mimgnet"] = results["simclr_ncm"] == mimgnet["baselines"]["feature_nearest_class_mean"]
    return results


def markdown_table(results, shots):
    """One row per ROWS entry, one column per shot; cells "mean ± ci95" in %."""

    def cell(res):
        return f"{100 * res['mean']:.2f} ± {100 * res['ci95']:.2f}"

    keys = [f"{WAY}way-{shot}shot" for shot in shots]
    lines = ["| method | " + " | ".join(f"{WAY}-way {shot}-shot" for shot in shots) + " |",
             "|---|" + "---|" * len(shots)]
    lines += [f"| {label} | " + " | ".join(cell(results[row][k]) for k in keys) + " |" for row, label in ROWS.items()]
    return "\n".join(lines)


def print_report(summary):
    """The config, the accuracy table and the wall time of every stage."""
    results = summary["results"]
    print(f"\nconfig: {json.dumps(summary['config'])}")
    print(f"{WAY}-way accuracy, % (mean ± 95% CI over {summary['config']['eval_episodes']} test episodes, the same "
          f"in every row; SimCLR nearest class mean equal to mimgnet/main.py's: "
          f"{results['simclr_ncm_matches_mimgnet']})\n")
    print(markdown_table(results, summary["shots"]))
    print("\n| stage | wall time |\n|---|---|")
    for stage, seconds in summary["wall_time_s"].items():
        print(f"| {stage} | {seconds / 60:.1f} min ({seconds:.0f} s) |")


def main(argv=None):
    args = parse_args(argv)
    out = args.out.resolve()
    shots = [shot for shot in SHOTS if shot + QUERY <= args.per_class]
    timings, commands = {}, []
    start = time.perf_counter()
    with OutputFolder(out, "synthetic Mini-ImageNet benchmark", "--out") as folder:
        folder.claim()
        results = run_pipeline(args, folder, shots, timings, commands)
        timings["total"] = time.perf_counter() - start
        config = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
        summary = {"config": config, "way": WAY, "query": QUERY, "shots": shots, "results": results,
                   "wall_time_s": timings, "commands": commands}
        folder.write_json("summary.json", summary)
    print_report(summary)
    print(f"\nwrote {out / 'summary.json'}")


if __name__ == "__main__":
    main()
