"""Grouping unlabeled folders of unseen classes, beside k-means: Omniglot and the synthetic Mini-ImageNet.

Omniglot: an omniglot/main.py run on the training characters of the Omniglot sample (the official
images_background_small1/2.zip; trained here at the authors' reduced CPU configuration unless
--omniglot-checkpoint names a run's checkpoint) groups --drawings drawings of each of K unseen test
characters (unrotated), K = 5 and 20, over --draws random draws of characters; every draw is written as a
folder of PNGs in character folders and grouped by omniglot/cluster.py (k-means on raw pixels beside it).
Mini-ImageNet: the pipeline of benchmarks/mimgnet_synthetic.py at a smaller size (synthetic images ->
prepare -> SimCLR train + export -> mimgnet/main.py), then mimgnet/cluster.py groups --drawings images of
each of 5 test classes over --draws draws (k-means on the SimCLR features beside it).
Prints a Markdown table of ARI and NMI (mean ± standard deviation over the draws) and writes
<out>/summary.json.

    OMP_NUM_THREADS=1 python benchmarks/own_data_grouping.py --out runs/own-data-grouping \
        --zips images_background_small1.zip images_background_small2.zip
"""
import argparse
import csv
import shlex
import shutil
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.mimgnet_synthetic import run, shown  # noqa: E402
from mimgnet import cluster as mimgnet_cluster  # noqa: E402
from omniglot import cluster as omniglot_cluster  # noqa: E402
from metagmvae.folders import OutputFolder  # noqa: E402
from metagmvae.runfiles import UserError, exit_on_user_error  # noqa: E402
from omniglot.dataset import load_split  # noqa: E402

ROTATIONS = 4  # test.npy class 4c + r is character c rotated by 90r degrees (data/omniglot_build.py)
OMNIGLOT_TRAIN_FLAGS = ["--way", "5", "--sample-size", "100", "--batch-size", "1", "--train-mc-sample-size", "8",
                        "--test-mc-sample-size", "32", "--select-by", "last", "--eval-episodes", "100"]
MIMGNET_WAY = 5
METHODS = ("Meta-GMVAE", "k-means")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "own-data-grouping", help="folder for everything")
    p.add_argument("--zips", type=Path, nargs="+",
                   help="images_background_small1.zip and small2.zip (not needed with --omniglot-data)")
    p.add_argument("--omniglot-checkpoint", type=Path,
                   help="an omniglot/main.py checkpoint trained on --omniglot-data (None: train one here)")
    p.add_argument("--omniglot-data", type=Path,
                   help="the arrays built from --zips (None: build them in <out>/omniglot)")
    p.add_argument("--train-iters", type=int, default=1000, help="Omniglot training steps")
    p.add_argument("--ways", type=int, nargs="+", default=[5, 20], help="Omniglot characters per folder K")
    p.add_argument("--draws", type=int, default=5, help="random folders per K")
    p.add_argument("--drawings", type=int, default=20, help="images per character or class in a folder")
    p.add_argument("--restarts", type=int, default=10, help="EM and k-means starts")
    p.add_argument("--per-class", type=int, default=40, help="synthetic Mini-ImageNet images per class")
    p.add_argument("--simclr-hidden-size", type=int, default=32, help="SimCLR conv channels")
    p.add_argument("--simclr-epochs", type=int, default=10, help="SimCLR epochs")
    p.add_argument("--mimgnet-steps", type=int, default=1000, help="Meta-GMVAE steps on the SimCLR features")
    p.add_argument("--seed", type=int, default=0, help="seeds the data, the trainings, the draws and the grouping")
    args = p.parse_args(argv)
    if args.zips is None and args.omniglot_data is None:
        p.error("give --zips, or --omniglot-data built from them")
    return args


def group(command, main, flags, commands):
    """Run a cluster command in this process (printed as the user would type it); returns its scores."""
    commands.append(shlex.join(["python", command, *map(str, flags)]))
    print(f"\n$ {commands[-1]}", flush=True)
    return main(list(map(str, flags)))["scores"]


def scores_by_method(scores):
    """{"Meta-GMVAE": {"ari", "nmi"}, "k-means": {...}} from a command's {long name: scores}."""
    return dict(zip(METHODS, scores.values()))


def omniglot_draws(args, data_dir, checkpoint, commands):
    """{K: [scores of each draw]}: folders of K unrotated test characters grouped by omniglot/cluster.py."""
    test = load_split(data_dir, "test")[::ROTATIONS, :args.drawings, 0].numpy()  # (characters, drawings, 28, 28)
    rng = np.random.default_rng([args.seed, 1])
    results = {}
    for way in args.ways:
        results[way] = []
        for draw in range(args.draws):
            folder = args.out / "folders" / f"omniglot-{way}way-draw{draw}"
            for c in rng.permutation(len(test))[:way]:
                (folder / f"character{c:03d}").mkdir(parents=True)
                for i, drawing in enumerate(test[c]):
                    Image.fromarray(np.rint((1 - drawing) * 255).astype(np.uint8)).save(
                        folder / f"character{c:03d}" / f"{i:02d}.png")
            scores = group("omniglot/cluster.py", omniglot_cluster.main,
                           ["--checkpoint", shown(checkpoint), "--images", shown(folder), "--clusters", way,
                            "--restarts", args.restarts, "--out", shown(folder) + "-clusters", "--seed", args.seed],
                           commands)
            results[way].append(scores_by_method(scores))
    return results


def train_omniglot(args, timings, commands):
    """Build the sample arrays and train; returns (data folder, checkpoint)."""
    data_dir = args.omniglot_data or args.out / "omniglot"
    if args.omniglot_data is None:
        run("omniglot_build", "data/prepare_omniglot.py", "--out", shown(data_dir), "--source", *map(shown, args.zips),
            timings=timings, commands=commands)
    if args.omniglot_checkpoint is not None:
        return data_dir, args.omniglot_checkpoint
    save_dir = args.out / "omniglot-run"
    run("omniglot_train", "omniglot/main.py", "--data-dir", shown(data_dir), *OMNIGLOT_TRAIN_FLAGS,
        "--train-iters", args.train_iters, "--freq-iters", args.train_iters, "--seed", args.seed,
        "--save-dir", shown(save_dir), "--overwrite", timings=timings, commands=commands)
    return data_dir, save_dir / "last.pt"


def train_mimgnet(args, timings, commands):
    """The synthetic Mini-ImageNet pipeline; returns (data folder, SimCLR checkpoint, Meta-GMVAE checkpoint)."""
    data, features = args.out / "mimgnet-data", args.out / "mimgnet-features"
    steps = dict(timings=timings, commands=commands)
    run("mimgnet_generate", "data/synthetic_mimgnet.py", "--out", shown(data), "--train-classes", 16,
        "--val-classes", 8, "--test-classes", 8, "--per-class", args.per_class, "--seed", args.seed, **steps)
    run("mimgnet_prepare", "data/prepare_mimgnet.py", "--images", shown(data / "images"), "--splits", shown(data),
        "--out", shown(args.out / "mimgnet-arrays"), **steps)
    run("simclr", "simclr/main.py", "--data-dir", shown(args.out / "mimgnet-arrays"), "--batch-size", 64, "--save-dir",
        shown(args.out / "simclr"), "--feature-save-dir", shown(features), "--hidden-size", args.simclr_hidden_size,
        "--train-epochs", args.simclr_epochs, "--seed", args.seed, "--overwrite", **steps)
    run("mimgnet_train", "mimgnet/main.py", "--data-dir", shown(features), "--save-dir", shown(args.out / "mimgnet"),
        "--train-iters", args.mimgnet_steps, "--freq-iters", args.mimgnet_steps, "--eval-episodes", 100,
        "--train-mc-sample-size", 8, "--test-mc-sample-size", 32, "--way", MIMGNET_WAY, "--select-by", "last",
        "--eval-shots", 1, 5,
        "--seed", args.seed, "--overwrite", **steps)
    return data, args.out / "simclr" / "last.pt", args.out / "mimgnet" / "last.pt"


def mimgnet_draws(args, data, encoder, checkpoint, commands):
    """[scores of each draw]: folders of 5 test classes of the synthetic set grouped by mimgnet/cluster.py."""
    with open(data / "test.csv", newline="") as f:
        classes = {}
        for name, synset in list(csv.reader(f))[1:]:
            classes.setdefault(synset, []).append(name)
    synsets = sorted(classes)
    rng = np.random.default_rng([args.seed, 2])
    results = []
    for draw in range(args.draws):
        folder = args.out / "folders" / f"mimgnet-{MIMGNET_WAY}way-draw{draw}"
        for c in rng.permutation(len(synsets))[:MIMGNET_WAY]:
            (folder / synsets[c]).mkdir(parents=True)
            for name in classes[synsets[c]][:args.drawings]:
                shutil.copy(data / "images" / name, folder / synsets[c] / name)
        scores = group("mimgnet/cluster.py", mimgnet_cluster.main,
                       ["--encoder", shown(encoder), "--checkpoint", shown(checkpoint), "--images", shown(folder),
                        "--clusters", MIMGNET_WAY, "--restarts", args.restarts, "--out", shown(folder) + "-clusters",
                        "--seed", args.seed], commands)
        results.append(scores_by_method(scores))
    return results


def cell(draws, method, score):
    values = np.array([d[method][score] for d in draws])
    return f"{values.mean():.3f} ± {values.std():.3f}"


def markdown_table(rows, args):
    """rows: {(data, K, baseline): [scores of each draw]}."""
    lines = ["| data | K | images | Meta-GMVAE ARI | Meta-GMVAE NMI | k-means ARI | k-means NMI | k-means on |",
             "|---|---|---|---|---|---|---|---|"]
    for (data, way, baseline), draws in rows.items():
        lines.append(f"| {data} | {way} | {way * args.drawings} | {cell(draws, 'Meta-GMVAE', 'ari')} | "
                     f"{cell(draws, 'Meta-GMVAE', 'nmi')} | {cell(draws, 'k-means', 'ari')} | "
                     f"{cell(draws, 'k-means', 'nmi')} | {baseline} |")
    return "\n".join(lines)


def main(argv=None):
    args = parse_args(argv)
    args.out = args.out.resolve()
    timings, commands = {}, []
    start = time.perf_counter()
    with exit_on_user_error("own_data_grouping.py"), \
            OutputFolder(args.out, "own-data grouping benchmark", "--out") as folder:
        if (args.out / "folders").exists():  # its files may be the user's by now: never deleted here
            raise UserError(f"--out {args.out} holds folders/ of an earlier run: delete or move it yourself, or "
                            "choose another --out")
        folder.claim()  # the draws' folders are its own
        data_dir, checkpoint = train_omniglot(args, timings, commands)
        mimgnet_data, encoder, mimgnet_checkpoint = train_mimgnet(args, timings, commands)
        grouping_start = time.perf_counter()
        rows = {("Omniglot sample", way, "pixels"): draws
                for way, draws in omniglot_draws(args, data_dir, checkpoint, commands).items()}
        rows[("synthetic Mini-ImageNet", MIMGNET_WAY, "SimCLR features")] = mimgnet_draws(
            args, mimgnet_data, encoder, mimgnet_checkpoint, commands)
        timings["grouping"] = time.perf_counter() - grouping_start
        timings["total"] = time.perf_counter() - start
        summary = {"config": {k: str(v) for k, v in vars(args).items()}, "wall_time_s": timings,
                   "commands": commands, "draws": {" ".join(map(str, key)): draws for key, draws in rows.items()}}
        folder.write_json("summary.json", summary)
    print(f"\nARI and NMI against the true classes, mean ± standard deviation over {args.draws} draws, "
          f"{args.restarts} restarts each:\n")
    print(markdown_table(rows, args))
    print("\n| stage | wall time |\n|---|---|")
    for stage, seconds in timings.items():
        print(f"| {stage} | {seconds / 60:.1f} min |")
    print(f"\nwrote {args.out / 'summary.json'}")


if __name__ == "__main__":
    main()
