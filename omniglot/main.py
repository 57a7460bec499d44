"""Meta-GMVAE on Omniglot: `python main.py --way 5 --sample-size 200 --save-dir runs/5way`.

Flags keep the names and defaults of the authors' omniglot/main.py; see README.md for the experiments.
`--demo` trains for about 5 CPU minutes on a procedural Omniglot-like set, with no download.
"""
import math
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from metagmvae.startup import quiet_ctrl_c  # noqa: E402  (torch-free: first)
quiet_ctrl_c(__name__, "omniglot/main.py")  # a Ctrl-C from here on: one line, exit code 130

from data.omniglot_build import check_build_folder  # noqa: E402
from data.synthetic_omniglot import build_synthetic_omniglot  # noqa: E402
from metagmvae import cli, cpu_memory, distributed  # noqa: E402
from metagmvae.folders import RunDir  # noqa: E402
from metagmvae.runfiles import exit_on_user_error, seed_everything  # noqa: E402
from omniglot import trainer  # noqa: E402
from omniglot.dataset import IMAGE_SHAPE  # noqa: E402
from omniglot.model import MODEL_NAME  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA_DIR = ROOT / "data" / "omniglot"
REFERENCE_DEFAULTS = dict(latent_size=64, train_mc_sample_size=32, test_mc_sample_size=32, batch_size=4,
                          sample_size=300, train_iters=60000, way=20, lr=1e-3, weight_decay=1e-6, seed=0,
                          eval_shots=[1, 5])
# --demo: the authors' reduced CPU configuration on 300 procedural characters (data/synthetic_omniglot.py)
DEMO_DATA_DIR, DEMO_SAVE_DIR, DEMO_CHARACTERS = ROOT / "data" / "omniglot-synthetic", ROOT / "runs" / "demo", 300
DEMO_DATA_FLAG = "--demo's data folder"  # how messages name DEMO_DATA_DIR
DEMO_SETTINGS = dict(way=5, eval_way=5, sample_size=100, batch_size=1, train_mc_sample_size=8,
                     test_mc_sample_size=16, train_iters=1000, freq_iters=500, eval_episodes=300, eval_shots=[1, 5])


def parse_args(argv=None):
    parser = cli.experiment_parser(__doc__, DEFAULT_DATA_DIR, **REFERENCE_DEFAULTS)
    parser.add_argument("--hidden-size", type=int, default=64, help="conv channels h; with --eval-only, the checkpoint's")
    parser.add_argument("--demo", action="store_true",
                        help=f"about 5 CPU minutes on a procedural Omniglot-like set built in {DEMO_DATA_DIR} "
                             f"(no download); --save-dir defaults to {DEMO_SAVE_DIR}")
    args = parser.parse_args(argv)
    if args.demo and args.debug:
        parser.error("--demo and --debug exclude each other: the demo is a run of its own settings")
    if args.demo:
        vars(args).update(DEMO_SETTINGS)
        if args.data_dir == str(DEFAULT_DATA_DIR):
            args.data_dir = str(DEMO_DATA_DIR)
        args.save_dir = args.save_dir or str(DEMO_SAVE_DIR)
    return cli.finish_args(parser, args, model_flags=("latent_size", "hidden_size"))


def main(argv=None):
    cpu_memory.set_up()
    args = parse_args(argv)
    with exit_on_user_error("omniglot/main.py"):
        cli.check_args(args, MODEL_NAME, positive=["hidden_size"], item_floats=math.prod(IMAGE_SHAPE))
        if args.demo and not args.resume:  # a demo run replaces an earlier demo run, nothing else
            earlier = RunDir(args.save_dir, MODEL_NAME).earlier_config() or {}
            args.overwrite = args.overwrite or earlier.get("demo") is True
        # the demo builds its own data folder once; a --data-dir of the user's is only read
        if args.demo and args.data_dir == str(DEMO_DATA_DIR) and not (DEMO_DATA_DIR / "test.npy").exists():
            RunDir(args.save_dir, MODEL_NAME).check()  # a --save-dir that the run would refuse: before any write
            check_build_folder(args.data_dir, DEMO_DATA_FLAG)
            print(f"building {DEMO_CHARACTERS} procedural characters in {args.data_dir}")
            build_synthetic_omniglot(args.data_dir, DEMO_CHARACTERS, seed=0, flag=DEMO_DATA_FLAG)
        with distributed.process_group(args.device, args.gpu_id) as device:
            seed_everything(args.seed)
            results = trainer.evaluate(args, device) if args.eval_only else trainer.train(args, device)
        cli.finish(results, MODEL_NAME, args.save_dir if args.eval_only else None)
    if distributed.is_main() and not args.eval_only:
        print(f"run files in {args.save_dir}; figures in {Path(args.save_dir) / 'figures'}")
    return results


if __name__ == "__main__":
    main()
