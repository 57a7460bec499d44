"""Accuracy run on the real Omniglot sample (the official images_background_small1/2.zip), sized for a
2-core CPU.

Builds the sample dataset, trains with omniglot/main.py at the authors' reduced CPU configuration
(5-way prior, B=1, M=100, S=8), first for --steps-a steps, then resumes to --steps-b (0: no second
stage), and after each stage tests the checkpoints --select-by keeps on 1000 test episodes beside a
pixel-space nearest-class-mean baseline on the very same episodes.  Prints a Markdown table.

    OMP_NUM_THREADS=1 taskset -c 0 python benchmarks/omniglot_sample_accuracy.py --out runs/sample-accuracy
    OMP_NUM_THREADS=1 taskset -c 1 python benchmarks/omniglot_sample_accuracy.py --out runs/sample-elbo \
        --select-by val-elbo --steps-b 0 --zips images_background_small1.zip images_background_small2.zip

Without --zips the two zips are downloaded from the official Omniglot repository into <out>/downloads.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from data.prepare_omniglot import SAMPLE_ARCHIVES, URL_BASE, build_omniglot, download_archives  # noqa: E402
from metagmvae.episodes import make_eval_set  # noqa: E402
from metagmvae.evaluation import nearest_class_mean_accuracies, summarize  # noqa: E402
from metagmvae.folders import OutputFolder  # noqa: E402
from metagmvae.runfiles import UserError, exit_on_user_error  # noqa: E402
from omniglot.dataset import load_split  # noqa: E402

TRAIN_FLAGS = ["--way", "5", "--sample-size", "100", "--batch-size", "1", "--train-mc-sample-size", "8",
               "--test-mc-sample-size", "32", "--freq-iters", "1000", "--eval-episodes", "200"]


def run(cmd):
    print("$", " ".join(map(str, cmd)), flush=True)
    start = time.perf_counter()
    subprocess.run([str(c) for c in cmd], check=True, cwd=ROOT)
    return time.perf_counter() - start


# --select-by -> {name in the table: checkpoint tested at each shot}
CHECKPOINTS = {"val-acc": {"val-acc": "best_{shot}shot"},
               "val-elbo": {"val-elbo": "best_elbo", "last": "last"}}


def test_checkpoints(run_dir, data_dir, seed, episodes, checkpoint):
    """{"5way-<shot>shot": summary} of checkpoint.format(shot=shot) tested at 1 and 5 shots."""
    results = {}
    for shot in (1, 5):
        name = checkpoint.format(shot=shot)
        out = run_dir / f"test_{name}_{shot}shot"
        run([sys.executable, "omniglot/main.py", "--data-dir", data_dir, "--eval-only", "--checkpoint",
             run_dir / f"{name}.pt", "--eval-shots", shot, "--eval-way", 5, "--eval-episodes", episodes,
             "--seed", seed, "--save-dir", out])
        results.update(json.loads((out / "eval_results.json").read_text())["test"])
    return results


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "sample-accuracy")
    p.add_argument("--zips", type=Path, nargs="+",
                   help="images_background_small1.zip and small2.zip (None: download them into <out>/downloads)")
    p.add_argument("--steps-a", type=int, default=2500,
                   help="first stage (about the 16 CPU minutes of the authors' 1000 steps)")
    p.add_argument("--steps-b", type=int, default=5000, help="second stage, resumed from the first (0: none)")
    p.add_argument("--select-by", default="val-acc", choices=list(CHECKPOINTS),
                   help="val-elbo also tests the last checkpoint")
    p.add_argument("--test-episodes", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()

    stages = [args.out / f"run-{steps}" for steps in (args.steps_a, args.steps_b) if steps]
    with exit_on_user_error(p.prog), OutputFolder(args.out, "Omniglot sample benchmark", "--out") as folder:
        earlier = [stage.name for stage in stages if os.path.lexists(stage)]
        if earlier:  # its files may be the user's by now: never deleted here
            raise UserError(f"--out {args.out} holds {', '.join(earlier)} of an earlier run: delete or move it "
                            "yourself, or choose another --out")
        folder.claim()  # the runs in it are its own
        sources = args.zips or download_archives(URL_BASE, args.out / "downloads", SAMPLE_ARCHIVES)
        data_dir = args.out / "data"
        build_omniglot(sources, data_dir, seed=0)
        test = load_split(data_dir, "test")
        baseline = {f"5way-{shot}shot": summarize(nearest_class_mean_accuracies(
            make_eval_set(test, 5, shot, 15, args.test_episodes, args.seed, "test"))) for shot in (1, 5)}

        common = [sys.executable, "omniglot/main.py", "--data-dir", data_dir, *TRAIN_FLAGS, "--seed", args.seed,
                  "--select-by", args.select_by]
        run([*common, "--save-dir", stages[0], "--train-iters", args.steps_a])
        if len(stages) == 2:
            shutil.copytree(stages[0], stages[1])
            run([*common, "--save-dir", stages[1], "--train-iters", args.steps_b, "--resume"])
        tests = {stage.name: {name: test_checkpoints(stage, data_dir, args.seed, args.test_episodes, checkpoint)
                              for name, checkpoint in CHECKPOINTS[args.select_by].items()} for stage in stages}
        wall = {stage.name: json.loads((stage / "results.json").read_text())["wall_time_s"] for stage in stages}
        summary = {"config": TRAIN_FLAGS, "seed": args.seed, "select_by": args.select_by, "pixel_ncm": baseline,
                   "test": tests, "train_wall_time_s": wall}
        folder.write_json("summary.json", summary)

    def cell(res):
        return f"{100 * res['mean']:.2f} ± {100 * res['ci95']:.2f}"
    print("\n| method | train steps | train wall time | 5-way 1-shot | 5-way 5-shot |\n|---|---|---|---|---|")
    print(f"| pixel nearest class mean | - | - | {cell(baseline['5way-1shot'])} | {cell(baseline['5way-5shot'])} |")
    for stage in stages:
        for name, res in tests[stage.name].items():
            print(f"| Meta-GMVAE (ours), {name} | {stage.name[4:]} | {wall[stage.name] / 60:.1f} min | "
                  f"{cell(res['5way-1shot'])} | {cell(res['5way-5shot'])} |")

if __name__ == "__main__":
    main()
