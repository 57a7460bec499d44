"""SimCLR features for Meta-GMVAE on Mini-ImageNet:
`python simclr/main.py --save-dir runs/simclr --feature-save-dir data/imgnet/features`.

Trains the Conv5 encoder on the 64 train classes (built by data/prepare_mimgnet.py), then writes
train/val/test_features.npy. Flags keep the names and defaults of the authors' simclr/main.py.
"""
import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from metagmvae.startup import quiet_ctrl_c  # noqa: E402  (torch-free: first)
quiet_ctrl_c(__name__, "simclr/main.py")  # a Ctrl-C from here on: one line, exit code 130

from metagmvae import distributed  # noqa: E402
from metagmvae import cpu_memory  # noqa: E402
from metagmvae.cli import check_lr, check_number, check_positive, check_seed, refuse_overridden  # noqa: E402
from metagmvae.folders import OutputFolder, check_outside_inputs  # noqa: E402
from metagmvae.runfiles import UserError, check_writable_folder, exit_on_user_error, seed_everything  # noqa: E402
from simclr.trainer import (DEBUG_BATCHES, FEATURE_FILES, FEATURES_KIND, export_checkpoint,  # noqa: E402
                            train_and_export)

DEFAULT_DATA_DIR = Path(__file__).resolve().parents[1] / "data" / "imgnet" / "arrays"
DEBUG_EPOCHS = 2
MIN_TEMPERATURE, MAX_TEMPERATURE = 1e-3, 1e3  # NT-Xent temperatures that train (the reference's 0.5)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data-dir", default=str(DEFAULT_DATA_DIR), help="folder with <split>_images.npy and manifest.json")
    p.add_argument("--save-dir", help="run folder: config, metrics, last.pt (required to train)")
    p.add_argument("--feature-save-dir", required=True, help="where to write <split>_features.npy and labels")
    p.add_argument("--hidden-size", type=int, default=64, help="conv channels h (features F = 4h); with --export-only, the checkpoint's")
    p.add_argument("--batch-size", type=int, default=512,
                   help="images per step, split over the torchrun processes (and per export pass)")
    p.add_argument("--train-epochs", type=int, default=400, help="epochs; the cosine decay spans all of them")
    p.add_argument("--lr", type=float, default=1e-3, help="initial Adam learning rate")
    p.add_argument("--temperature", type=float, default=0.5, help="NT-Xent temperature")
    p.add_argument("--debug", action="store_true",
                   help=f"smoke run: {DEBUG_EPOCHS} epochs of at most {DEBUG_BATCHES} batches each")
    p.add_argument("--gpu-id", type=int, default=0, help="CUDA device index (under torchrun: LOCAL_RANK)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="auto = cuda when available")
    p.add_argument("--seed", type=int, default=0, help="seeds the weights, the shuffling and the augmentations")
    p.add_argument("--resume", action="store_true", help="continue the run in --save-dir from last.pt")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the run in --save-dir (only its files are removed; others are kept)")
    p.add_argument("--export-only", action="store_true", help="only export the features of --checkpoint")
    p.add_argument("--checkpoint", help="checkpoint for --export-only")
    args = p.parse_args(argv)
    if args.export_only and args.hidden_size == p.get_default("hidden_size"):
        args.hidden_size = None  # the checkpoint's (trainer.export_checkpoint)
    if args.debug:
        refuse_overridden(p, args, "--debug", {"train_epochs": DEBUG_EPOCHS})
        args.train_epochs = DEBUG_EPOCHS
    return args


def check_args(args):
    """Refuse flag combinations that cannot work, before anything is read or written."""
    check_positive(args, ["hidden_size", "batch_size", "train_epochs"])
    if args.batch_size < 2:
        raise UserError("--batch-size must be at least 2: NT-Xent needs other images as negatives")
    check_lr(args.lr)
    check_number(args.temperature, "temperature", at_most=MAX_TEMPERATURE, at_least=MIN_TEMPERATURE,
                 reason="cosine similarities divided by it differ by at most 2 / T, so NT-Xent is flat and the "
                        "encoder would learn nothing",
                 low_reason="cosine similarities divided by it reach 1 / T, beyond what float32 softmax and its "
                            "gradients hold")
    check_seed(args.seed)
    if args.export_only and args.checkpoint is None:
        raise UserError("--export-only needs --checkpoint PATH")
    if args.checkpoint is not None and not args.export_only:
        raise UserError("--checkpoint is only read with --export-only (use --resume to continue a run)")
    if not args.export_only and args.save_dir is None:
        raise UserError("--save-dir is required for training")
    if args.resume and args.overwrite:
        raise UserError("--resume and --overwrite exclude each other")
    if not args.export_only:
        check_writable_folder(args.save_dir, "--save-dir")
        check_outside_inputs(args.save_dir, "--save-dir", [("--data-dir", args.data_dir),
                                                           ("--feature-save-dir", args.feature_save_dir)])
    others = [("--data-dir", args.data_dir)] + ([] if args.export_only else [("--save-dir", args.save_dir)])
    check_outside_inputs(args.feature_save_dir, "--feature-save-dir", others)
    OutputFolder(args.feature_save_dir, FEATURES_KIND, "--feature-save-dir").check(FEATURE_FILES)


def main(argv=None):
    cpu_memory.set_up()
    args = parse_args(argv)
    with exit_on_user_error("simclr/main.py"):
        check_args(args)
        with distributed.process_group(args.device, args.gpu_id) as device:
            seed_everything(args.seed)
            if args.export_only and not distributed.is_main():
                return
            run = export_checkpoint if args.export_only else train_and_export
            manifest = run(args, device)
    if not distributed.is_main():
        return
    for split, info in manifest["splits"].items():
        print(f"{split}: {info['count']} x {manifest['feature_size']} features of {len(info['classes'])} classes")
    print(f"wrote {args.feature_save_dir}")


if __name__ == "__main__":
    main()
