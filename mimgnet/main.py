"""Meta-GMVAE on Mini-ImageNet SimCLR features: `python main.py --save-dir runs/mimgnet`.

Flags keep the names and defaults of the authors' mimgnet/main.py; see README.md for the pipeline
(data/prepare_mimgnet.py -> simclr/main.py -> this script).
"""
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from metagmvae.startup import quiet_ctrl_c  # noqa: E402  (torch-free: first)
quiet_ctrl_c(__name__, "mimgnet/main.py")  # a Ctrl-C from here on: one line, exit code 130

from metagmvae import cli, cpu_memory, distributed  # noqa: E402
from metagmvae.runfiles import exit_on_user_error, seed_everything  # noqa: E402
from mimgnet import trainer  # noqa: E402
from mimgnet.model import MODEL_NAME  # noqa: E402

DEFAULT_DATA_DIR = Path(__file__).resolve().parents[1] / "data" / "imgnet" / "features"
REFERENCE_DEFAULTS = dict(latent_size=32, train_mc_sample_size=256, test_mc_sample_size=256, batch_size=16,
                          sample_size=5, train_iters=15000, way=5, lr=1e-4, weight_decay=5e-2, seed=15,
                          eval_shots=[1, 5, 20, 50])


def parse_args(argv=None):
    parser = cli.experiment_parser(__doc__, DEFAULT_DATA_DIR, **REFERENCE_DEFAULTS)
    parser.add_argument("--shot", type=int, default=1, help="shot whose validation accuracy selects the checkpoint")
    return cli.finish_args(parser, parser.parse_args(argv))


def main(argv=None):
    cpu_memory.set_up()
    args = parse_args(argv)
    with exit_on_user_error("mimgnet/main.py"):
        cli.check_args(args, MODEL_NAME, positive=["shot"])
        with distributed.process_group(args.device, args.gpu_id) as device:
            seed_everything(args.seed)
            results = trainer.evaluate(args, device) if args.eval_only else trainer.train(args, device)
        cli.finish(results, MODEL_NAME, args.save_dir if args.eval_only else None)
    return results


if __name__ == "__main__":
    main()
