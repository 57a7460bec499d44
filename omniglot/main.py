"""Meta-GMVAE on Omniglot: `python main.py --way 5 --sample-size 200 --save-dir runs/5way`.

Flags keep the names and defaults of the authors' omniglot/main.py; see README.md for the experiments.
"""
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from metagmvae import cli  # noqa: E402
from omniglot.trainer import OMNIGLOT  # noqa: E402

DEFAULT_DATA_DIR = Path(__file__).resolve().parents[1] / "data" / "omniglot"
REFERENCE_DEFAULTS = dict(latent_size=64, train_mc_sample_size=32, test_mc_sample_size=32, batch_size=4,
                          sample_size=300, train_iters=60000, way=20, lr=1e-3, weight_decay=1e-6, seed=0,
                          eval_shots=[1, 5])


def parse_args(argv=None):
    parser = cli.experiment_parser(__doc__, DEFAULT_DATA_DIR, **REFERENCE_DEFAULTS)
    parser.add_argument("--hidden-size", type=int, default=64, help="conv channels h")
    return cli.finish_args(parser.parse_args(argv))


def main(argv=None):
    return cli.run(OMNIGLOT, parse_args(argv), "omniglot/main.py", positive=["hidden_size"])


if __name__ == "__main__":
    main()
