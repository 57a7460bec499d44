"""The command line that omniglot/main.py and mimgnet/main.py share (the reference's flag names), its
checks, and the printed results."""
import argparse
import math
from pathlib import Path

from . import distributed
from .episodes import STREAM_BYTES
from .evaluation import MIN_EPISODES
from .folders import EVAL_RESULTS, FIGURES, RunDir, check_outside_inputs
from .runfiles import UserError, check_fits_in_memory, check_writable_folder

# Flags that define the model, the objective or the validation scores that select a checkpoint (scores of
# two tasks are not comparable): a resumed run must keep them.
# Flags that only training reads: --eval-only records the checkpoint's run's instead (evaluation_config)
TRAINING_FLAGS = ("way", "sample_size", "train_mc_sample_size", "train_iters", "freq_iters", "lr", "weight_decay",
                  "unsupervised_em_iters", "fix_pi", "select_by", "val_elbo_sets", "grad_clip", "resume", "overwrite",
                  "debug")
RESUME_INVARIANT_FLAGS = ("latent_size", "way", "batch_size", "sample_size", "train_mc_sample_size",
                          "unsupervised_em_iters", "fix_pi", "lr", "weight_decay", "seed", "select_by",
                          "eval_way", "query", "eval_episodes", "eval_shots", "test_mc_sample_size",
                          "semisupervised_em_iters", "val_elbo_sets")


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """argparse help with defaults shown, except a None whose meaning the help states."""

    def _get_help_string(self, action):
        return action.help if action.default is None else super()._get_help_string(action)


def experiment_parser(description, data_dir, **defaults):
    """A parser with every flag both datasets share; `defaults` are the dataset's reference defaults
    (latent_size, train_mc_sample_size, test_mc_sample_size, batch_size, sample_size, train_iters, way, lr,
    weight_decay, seed, eval_shots)."""
    p = argparse.ArgumentParser(description=description, formatter_class=HelpFormatter)
    d = defaults
    p.add_argument("--data-dir", default=str(data_dir), help="folder with the train/val/test arrays")
    p.add_argument("--save-dir", help="run folder: config, metrics, checkpoints, results (required to train)")
    p.add_argument("--unsupervised-em-iters", type=int, default=10, help="EM iterations of the training prior")
    p.add_argument("--semisupervised-em-iters", type=int, default=10, help="EM iterations at prediction")
    p.add_argument("--fix-pi", action="store_true", help="keep the training mixture weights uniform")
    p.add_argument("--latent-size", type=int, default=d["latent_size"],
                   help="latent size D; with --eval-only, the checkpoint's")
    p.add_argument("--train-mc-sample-size", type=int, default=d["train_mc_sample_size"],
                   help="MC samples S per item in training")
    p.add_argument("--test-mc-sample-size", type=int, default=d["test_mc_sample_size"],
                   help="MC samples S per item at prediction")
    p.add_argument("--batch-size", type=int, default=d["batch_size"],
                   help="episodes per step, split over the torchrun processes, and per evaluation pass")
    p.add_argument("--sample-size", type=int, default=d["sample_size"], help="unlabeled items M per training episode")
    p.add_argument("--train-iters", type=int, default=d["train_iters"], help="training steps")
    p.add_argument("--freq-iters", type=int, default=1000, help="validate every this many steps")
    p.add_argument("--eval-episodes", type=int, default=1000, help="episodes per validation and per test")
    p.add_argument("--way", type=int, default=d["way"], help="mixture components K of the training prior")
    p.add_argument("--query", type=int, default=15, help="query items per class in evaluation episodes")
    p.add_argument("--lr", type=float, default=d["lr"], help="Adam learning rate")
    p.add_argument("--weight-decay", type=float, default=d["weight_decay"],
                   help="L2 added to the gradient (Adam, not AdamW)")
    p.add_argument("--debug", action="store_true", help="smoke run: 20 steps, validation every 10 on 20 episodes "
                                                        "(--train-iters, --freq-iters, --eval-episodes are its own)")
    p.add_argument("--gpu-id", type=int, default=0, help="CUDA device index (under torchrun: LOCAL_RANK)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="auto = cuda when available")
    p.add_argument("--seed", type=int, default=d["seed"], help="seeds python, numpy, torch and the episode draws")
    p.add_argument("--eval-shots", type=int, nargs="+", default=d["eval_shots"], help="shots to test")
    p.add_argument("--eval-way", type=int, help="classes per evaluation episode (default: --way)")
    p.add_argument("--select-by", default="val-acc", choices=["val-acc", "val-elbo", "last"],
                   help="model selection: labeled validation accuracy (the reference), the training objective on "
                        "unlabeled validation sets (no label read before the test), or the last step")
    p.add_argument("--val-elbo-sets", type=int, default=32, help="unlabeled validation sets for --select-by val-elbo")
    p.add_argument("--amp", action="store_true",
                   help="bf16 autocast for the networks (meant for GPUs); EM, densities and losses stay float32")
    p.add_argument("--grad-clip", type=float, default=0.0, help="clip the gradient norm to this (0 = off)")
    p.add_argument("--resume", action="store_true", help="continue the run in --save-dir from last.pt")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the run in --save-dir (only its files are removed; others are kept)")
    p.add_argument("--eval-only", action="store_true", help="only test --checkpoint on the test split")
    p.add_argument("--checkpoint", help="checkpoint for --eval-only (ours or the authors' .pth)")
    return p


DEBUG_SETTINGS = dict(train_iters=20, freq_iters=10, eval_episodes=20)


def finish_args(parser, args, model_flags=("latent_size",)):
    """Fill derived defaults after parsing; returns args.  --debug sets DEBUG_SETTINGS: a value given for one
    of them is refused (argparse's error), as it would not be used.  With --eval-only, `model_flags` left at
    their defaults become None: the checkpoint's (take_checkpoint_sizes)."""
    if args.eval_way is None:
        args.eval_way = args.way
    if args.eval_only:
        for name in model_flags:
            if getattr(args, name) == parser.get_default(name):
                setattr(args, name, None)
    if args.debug:
        refuse_overridden(parser, args, "--debug", DEBUG_SETTINGS)
        vars(args).update(DEBUG_SETTINGS)
    return args


def refuse_overridden(parser, args, flag, settings):
    """argparse's error (exit code 2) if args holds, for a flag that `flag` sets to `settings`, a value other
    than its default: the user gave it, and it would be ignored."""
    given = [name for name in settings if getattr(args, name) != parser.get_default(name)]
    if given:
        parser.error(f"{flag} sets " + ", ".join(f"--{n.replace('_', '-')} {settings[n]}" for n in settings)
                     + ": leave out " + ", ".join(f"--{n.replace('_', '-')} {getattr(args, n)}" for n in given))


SEED_LIMIT = 2 ** 32  # numpy's global seed (seed_everything) takes 0 <= seed < 2**32
LATENT_BYTES = 4  # float32


MIN_WAY = 2  # an N-way task with N = 1 is always right
# Adam moves every weight by about lr per step whatever the gradient's size: above 1 a single step throws the
# weights out of any meaningful range (and overflows float32 on the way).  Adam's L2 term (weight decay x
# weight) outweighs the objective's gradient from far smaller coefficients than 1; above 1 the weights only decay.
MAX_LR = 1.0
# Adam moves a weight by about lr a step; float32 rounds a weight of 1e-3 to steps of 1.2e-10, so below
# MIN_LR no step would change the weights that matter
MIN_LR = 1e-10
MAX_WEIGHT_DECAY = 1.0
# Adam divides each gradient by its running magnitude + 1e-8 (eps): gradients clipped to a total norm below
# MIN_GRAD_CLIP are mostly eps in every coordinate, and the steps shrink toward 0
MIN_GRAD_CLIP = 1e-6
FLOAT_BYTES = 4  # an item's pixels or features, float32
INDEX_BYTES = 8  # an item index, int64


def check_number(value, flag, allow_zero=False, at_most=None, reason="", at_least=None, low_reason=""):
    """Refuse a float flag that is NaN, infinite, negative, zero unless allow_zero, above at_most (for
    `reason`, a phrase) or, other than 0, below at_least (for `low_reason`)."""
    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        raise UserError(f"--{flag} must be a finite number {'>= 0' if allow_zero else '> 0'} (got {value})")
    if at_most is not None and value > at_most:
        raise UserError(f"--{flag} {value} is above {at_most:g}: {reason}")
    if at_least is not None and 0 < value < at_least:
        raise UserError(f"--{flag} {value} is below {at_least:g}: {low_reason}")


def check_lr(lr):
    """Refuse an Adam learning rate outside [MIN_LR, MAX_LR]."""
    check_number(lr, "lr", at_most=MAX_LR, reason="Adam moves every weight by about lr per step, so a step "
                                                   "would throw the weights out of any meaningful range",
                 at_least=MIN_LR, low_reason="Adam moves every weight by about lr per step, less than float32 "
                                             "rounding changes a weight of 1e-3: the run would train nothing")


def check_way(way, given="--eval-way {}"):
    """Refuse an evaluation way below MIN_WAY: a 1-way episode is scored 100 % whatever the model.  `given`
    says where the way came from ({} is the way)."""
    if way < MIN_WAY:
        raise UserError(f"{given.format(way)}: an N-way episode needs N >= {MIN_WAY} classes (with one class "
                        "every prediction is right, so the accuracy says nothing)")


def check_seed(seed):
    if not 0 <= seed < SEED_LIMIT:
        raise UserError(f"--seed must be in [0, 2**32) (numpy's seed range; got {seed})")


def check_latents_fit(args):
    """Refuse MC sample counts whose latent samples z of one batch (batch, items, samples, latent size) alone,
    a lower bound of what the batch needs, exceed this machine's memory."""
    items = {"train_mc_sample_size": args.sample_size,
             "test_mc_sample_size": args.eval_way * (max(args.eval_shots) + args.query)}
    for name, per_episode in items.items():
        samples = getattr(args, name)
        size = LATENT_BYTES * args.batch_size * per_episode * samples * (args.latent_size or 1)  # None: not yet read
        check_fits_in_memory(size, f"--{name.replace('_', '-')} {samples}: the latent samples of one batch "
                                   f"({args.batch_size} episodes x {per_episode} items x {samples} samples x "
                                   f"{args.latent_size} floats)")


def check_batches_fit(args, item_floats):
    """Refuse counts whose items (item_floats float32 values each: 784 pixels, F features) of one batch alone,
    a lower bound of what the batch needs, exceed this machine's memory: a training batch and a val-elbo
    batch (--batch-size sets of --sample-size items) and an evaluation batch (--batch-size episodes of
    --eval-way x (largest --eval-shots + --query) items)."""
    batches = {"--sample-size": (args.sample_size, "a training batch"),
               "--eval-way": (args.eval_way * (max(args.eval_shots) + args.query), "an evaluation batch")}
    for flag, (items, what) in batches.items():
        check_fits_in_memory(FLOAT_BYTES * args.batch_size * items * item_floats,
                             f"{flag} {getattr(args, flag[2:].replace('-', '_'))}: the items of {what} "
                             f"({args.batch_size} episodes x {items} items x {item_floats} floats)")


def check_episode_counts(args):
    """Refuse --eval-episodes and --val-elbo-sets whose random streams (one per episode or set) and item
    indices (int64) alone exceed this machine's memory: the fixed evaluation episodes (episodes x --eval-way x
    (largest --eval-shots + --query) items) and the unlabeled validation sets (sets x --sample-size items)
    are drawn before training starts."""
    per_episode = args.eval_way * (max(args.eval_shots) + args.query)
    check_fits_in_memory(args.eval_episodes * (STREAM_BYTES + INDEX_BYTES * per_episode),
                         f"--eval-episodes {args.eval_episodes}: the random streams and item indices of the "
                         f"evaluation episodes ({args.eval_episodes} episodes x {per_episode} items)")
    if args.select_by == "val-elbo":
        check_fits_in_memory(args.val_elbo_sets * (STREAM_BYTES + INDEX_BYTES * args.sample_size),
                             f"--val-elbo-sets {args.val_elbo_sets}: the random streams and item indices of the "
                             f"validation sets ({args.val_elbo_sets} sets x {args.sample_size} items)")


def take_checkpoint_sizes(args, model_config, checkpoint):
    """A checkpoint decides its model's sizes: each flag of args named in model_config ({"hidden_size": 64,
    ...}) that is None (not given) takes the checkpoint's value, so that the results record it; a value given
    that differs is refused, as it would be ignored."""
    for name, value in model_config.items():
        given = getattr(args, name, value)
        if given is not None and given != value:
            raise UserError(f"--{name.replace('_', '-')} {given}: {checkpoint} holds a model of {name} {value}, which "
                            f"is tested as it is; leave --{name.replace('_', '-')} out")
        if hasattr(args, name):
            setattr(args, name, value)


def evaluation_config(args, trained_config):
    """The "config" of --eval-only's results: its flags but those only training reads (TRAINING_FLAGS, at their
    defaults here, which no one used), and under "trained" the run config saved in the checkpoint, those
    flags as its training used them (trained_config; {} for the authors' checkpoints)."""
    return {**{k: v for k, v in vars(args).items() if k not in TRAINING_FLAGS},
            "trained": {k: v for k, v in trained_config.items() if k in TRAINING_FLAGS} or None}


def check_positive(args, names):
    """Refuse an integer flag among `names` (attributes of args) below 1; None (a checkpoint's, not yet read)
    passes."""
    for name in names:
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be positive (got {getattr(args, name)})")


def check_args(args, model, positive=(), item_floats=None):
    """Refuse flag combinations that cannot work, and a --save-dir that is not a run folder of `model`
    ("Omniglot") or a new one, before anything is read or written; item_floats (the values of one item,
    when known before the data are read) bounds the batches (check_batches_fit)."""
    check_positive(args, ["latent_size", "train_mc_sample_size", "test_mc_sample_size", "batch_size", "sample_size",
                          "train_iters", "freq_iters", "eval_episodes", "way", "eval_way", "query", "val_elbo_sets",
                          "unsupervised_em_iters", "semisupervised_em_iters", *positive])
    if min(args.eval_shots) < 1:
        raise UserError(f"--eval-shots must be positive (got {args.eval_shots})")
    if args.eval_episodes < MIN_EPISODES:
        raise UserError(f"--eval-episodes {args.eval_episodes}: the accuracies are reported with a 95% confidence "
                        f"interval, which needs at least {MIN_EPISODES} episodes (from one it is 0 whatever the "
                        "model)")
    check_way(args.eval_way, "--way {} (which --eval-way defaults to)" if args.eval_way == args.way
              else "--eval-way {}")
    if args.sample_size < args.way:
        raise UserError(f"--sample-size {args.sample_size} is smaller than --way {args.way}: "
                        "the training prior needs at least one item per component")
    check_lr(args.lr)
    check_number(args.weight_decay, "weight-decay", allow_zero=True, at_most=MAX_WEIGHT_DECAY,
                 reason="Adam adds weight decay x weight to every gradient; above 1 that term, not the objective, "
                        "drives the weights")
    check_number(args.grad_clip, "grad-clip", allow_zero=True, at_least=MIN_GRAD_CLIP,
                 low_reason="Adam divides each gradient by its magnitude + 1e-8, so gradients clipped to a norm "
                            "this small are mostly that 1e-8 and the steps nearly 0: the run would train nothing "
                            "(0 turns clipping off)")
    check_seed(args.seed)
    check_latents_fit(args)
    check_episode_counts(args)
    if item_floats is not None:
        check_batches_fit(args, item_floats)
    if args.eval_only and args.checkpoint is None:
        raise UserError("--eval-only needs --checkpoint PATH")
    if not args.eval_only and args.save_dir is None:
        raise UserError("--save-dir is required for training")
    if args.resume and args.overwrite:
        raise UserError("--resume and --overwrite exclude each other")
    if args.save_dir is not None:
        check_writable_folder(args.save_dir, "--save-dir")
        if not args.eval_only and (Path(args.save_dir) / FIGURES).is_dir():  # written at every validation
            check_writable_folder(Path(args.save_dir) / FIGURES, "--save-dir")
        check_outside_inputs(args.save_dir, "--save-dir", [("--data-dir", args.data_dir)])
        if args.eval_only:
            RunDir(args.save_dir, model).check([EVAL_RESULTS])


def finish(results, model, eval_results_dir=None):
    """Rank 0 prints the test accuracies and the baselines', in %; with eval_results_dir (--eval-only
    --save-dir) it also writes them to eval_results.json there, a run folder of `model` ("Omniglot")."""
    if not distributed.is_main():
        return
    if eval_results_dir is not None:
        with RunDir(eval_results_dir, model).opened() as run:
            run.write_results(results, EVAL_RESULTS)
    for key, res in results["test"].items():
        print(f"{key}: {100 * res['mean']:.2f} +- {100 * res['ci95']:.2f} % over {res['episodes']} episodes")
    for name, tests in results["baselines"].items():
        print(f"baseline {name}: " + ", ".join(f"{key} {100 * res['mean']:.2f} +- {100 * res['ci95']:.2f} %"
                                             for key, res in tests.items()))
