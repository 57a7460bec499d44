"""Figures of a checkpoint (ours or the authors'): reconstructions, the mixture of one episode, a test
episode and, given a metrics.csv, the learning curves.

    python omniglot/draw_figures.py --checkpoint runs/omniglot-5way/best_1shot.pt --out figures/
"""
import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from metagmvae.startup import quiet_ctrl_c  # noqa: E402  (torch-free: first)
quiet_ctrl_c(__name__, "omniglot/draw_figures.py")  # a Ctrl-C from here on: one line, exit code 130

from metagmvae import cpu_memory  # noqa: E402
from metagmvae.cli import check_positive, check_seed, check_way  # noqa: E402
from metagmvae.distributed import resolve_device  # noqa: E402
from metagmvae.folders import OutputFolder, check_outside_inputs  # noqa: E402
from metagmvae.imagefolders import check_samples_fit, remove_earlier_result  # noqa: E402
from metagmvae.runfiles import UserError, exit_on_user_error, load_checkpoint  # noqa: E402
from metagmvae.training import check_not_trained_on  # noqa: E402
from omniglot.dataset import load_omniglot, load_split  # noqa: E402
from omniglot.figures import (FIGURE_NAMES, FIGURE_QUERIES, check_run_figures, read_metrics_table,  # noqa: E402
                              write_run_figures)
from omniglot.model import load_model  # noqa: E402


FIGURES_KIND = "Omniglot figures"  # the kind of folder --out is, in its record (metagmvae/folders.py)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="checkpoint to draw")
    p.add_argument("--data-dir", default=str(Path(__file__).resolve().parents[1] / "data" / "omniglot"),
                   help="folder with train/val/test.npy")
    p.add_argument("--out", required=True, help="folder for the PNG files (a new folder, or one it wrote before)")
    p.add_argument("--metrics", help="a run's metrics.csv, for the learning curves")
    p.add_argument("--way", type=int, default=5, help="mixture components of the episode figure")
    p.add_argument("--eval-way", type=int, default=5, help="classes of the test-episode figure (of the val split)")
    p.add_argument("--sample-size", type=int, default=60, help="items of the episode figure (at most 60)")
    p.add_argument("--query", type=int, default=3,
                   help=f"queries per class of the test-episode figure (at most {FIGURE_QUERIES} are drawn)")
    p.add_argument("--unsupervised-em-iters", type=int, default=10, help="EM iterations of the episode figure")
    p.add_argument("--semisupervised-em-iters", type=int, default=10, help="EM iterations at prediction")
    p.add_argument("--test-mc-sample-size", type=int, default=32, help="MC samples at prediction")
    p.add_argument("--seed", type=int, default=0, help="seeds the images drawn")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="auto = cuda when available")
    return p.parse_args(argv)


def main(argv=None):
    cpu_memory.set_up()
    args = parse_args(argv)
    with exit_on_user_error("omniglot/draw_figures.py"):
        check_positive(args, ["way", "eval_way", "sample_size", "query", "unsupervised_em_iters",
                              "semisupervised_em_iters", "test_mc_sample_size"])
        check_way(args.eval_way)
        check_seed(args.seed)
        if args.metrics is not None and not Path(args.metrics).exists():
            raise UserError(f"--metrics {args.metrics}: no such file")
        metrics = read_metrics_table(args.metrics) if args.metrics is not None else None  # before any work
        step = load_checkpoint(args.checkpoint).get("step")  # a run checkpoint's; the authors' have none
        if metrics is not None and isinstance(step, int) and step not in metrics["step"]:
            raise UserError(f"--metrics {args.metrics} has no row for step {step}, at which --checkpoint "
                            f"{args.checkpoint} was saved: the curves of another run? Give that run's metrics.csv")
        check_outside_inputs(args.out, "--out", [("--data-dir", args.data_dir)])
        out = OutputFolder(args.out, FIGURES_KIND, "--out")
        out.check(FIGURE_NAMES)
        device = resolve_device(args.device)
        model = load_model(args.checkpoint, device)
        check_samples_fit(args.eval_way * (1 + min(args.query, FIGURE_QUERIES)), args.test_mc_sample_size,
                          model.config["latent_size"], "--test-mc-sample-size")
        data = load_omniglot(args.data_dir, ("train", "val"))
        check_run_figures(data, args.way, args.eval_way, args.sample_size, args.query)
        # its test-episode figure is drawn on the val split: not on classes the checkpoint trained on
        check_not_trained_on(args.checkpoint, "val", data["val"], args.data_dir, load_split, "draw_figures.py")
        with out:
            paths = write_run_figures(model, data, out, metrics, args.way, args.eval_way, args.sample_size,
                                      args.query, args.unsupervised_em_iters, args.semisupervised_em_iters,
                                      args.test_mc_sample_size, args.seed)
            removed = remove_earlier_result(out, [Path(path).name for path in paths])  # curves.png of an earlier call
    for path in paths:
        print(path)
    if removed:
        print(f"removed the figures of the earlier call there that this one does not draw: {', '.join(removed)}")


if __name__ == "__main__":
    main()
