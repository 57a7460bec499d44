"""One Meta-GMVAE experiment from parsed flags: data -> model -> meta-training -> selection -> test.

A dataset folder describes itself with an `Experiment` (its model, data loader, reference-checkpoint
names and model-selection rule); everything else is shared here.
"""
from dataclasses import dataclass, field
from functools import partial
from typing import Callable

from . import distributed
from .checkpoint import load_checkpoint
from .episodes import sample_unlabeled_sets
from .errors import UserError
from .evaluation import make_eval_set, summarize
from .keyed_random import VALIDATION_SETS, EpisodeRandom
from .rundir import RunDir, check_same_flags
from .training import evaluate_model, evaluate_selected_checkpoints, fit, make_optimizer, validate, validation_loss

# Flags that define the model or the objective: a resumed run must keep them.
RESUME_INVARIANT_FLAGS = ("latent_size", "way", "batch_size", "sample_size", "train_mc_sample_size",
                          "unsupervised_em_iters", "fix_pi", "lr", "weight_decay", "seed", "select_by")


@dataclass
class Experiment:
    name: str
    model_class: type                   # SetGMVAE subclass, built from its `config` dict
    model_config: Callable              # (args, data) -> constructor arguments of a new model
    load_data: Callable                 # (args, splits) -> {split: (C, I, *item_shape) tensor}
    convert_reference: Callable         # authors' state_dict -> (state_dict, constructor arguments)
    selection_shots: Callable           # args -> shots whose best validation checkpoint is kept
    checkpoint_for_test_shot: Callable  # (args, shot) -> the selection shot whose checkpoint is tested
    resume_invariant_flags: tuple = RESUME_INVARIANT_FLAGS
    baselines: dict = field(default_factory=dict)  # name -> EvalSet -> per-episode accuracies
    write_figures: Callable = None      # (model, data, folder, metrics_csv, args) -> paths, after each validation


def check_flags_against_data(args, split, array, shots):
    """Refuse evaluation episodes a split (C, I, ...) cannot provide."""
    classes, instances = array.shape[:2]
    if args.eval_way > classes:
        raise UserError(f"--eval-way {args.eval_way} is larger than the {classes} classes of the {split} split")
    for shot in shots:
        if shot + args.query > instances:
            raise UserError(f"shot {shot} + --query {args.query} is larger than the {instances} items per class "
                            f"of the {split} split")


def load_model_checkpoint(experiment, path, device):
    """A model from our checkpoint or the authors' (a dict whose "state_dict" uses their names)."""
    state = distributed.from_main(lambda: load_checkpoint(path))
    if "model" in state:
        state_dict, config = state["model"], state["model_config"]
    elif "state_dict" in state:
        try:
            state_dict, config = experiment.convert_reference(state["state_dict"])
        except KeyError as e:
            raise UserError(f"{path}: not a {experiment.name} Meta-GMVAE checkpoint ({e.args[0]})") from None
    else:
        raise UserError(f"{path}: neither our checkpoint (key 'model') nor the authors' (key 'state_dict')")
    try:
        model = experiment.model_class(**config).to(device)
        model.load_state_dict(state_dict)
    except (RuntimeError, TypeError) as e:
        raise UserError(f"{path}: weights do not fit the {experiment.name} model: {str(e).splitlines()[0]}") from None
    return model


def eval_sets(array, args, shots):
    return {shot: make_eval_set(array, args.eval_way, shot, args.query, args.eval_episodes, args.seed)
            for shot in shots}


def score_baselines(experiment, test_sets):
    """{baseline: {"<way>way-<shot>shot": summary}} on the same test episodes as the model."""
    return {name: {f"{s.way}way-{shot}shot": summarize(accuracies(s)) for shot, s in test_sets.items()}
            for name, accuracies in experiment.baselines.items()}


def make_validation(experiment, args, val, device):
    """validation(model) -> (scores, metrics fields) for --select-by, and the checkpoint name each test
    shot uses.  val-acc: accuracy on labeled validation episodes (the reference); val-elbo: the training
    objective on fixed unlabeled validation sets, so no label is read before the final test; last: none."""
    if args.select_by == "val-acc":
        sets = eval_sets(val, args, experiment.selection_shots(args))

        def validation(model):
            results = validate(model, sets, args, device)
            fields = {f"val_{shot}shot{suffix}": r[key] for shot, r in results.items()
                      for suffix, key in (("", "mean"), ("_ci95", "ci95"))}
            return {f"{shot}shot": r["mean"] for shot, r in results.items()}, fields
        return validation, lambda shot: f"best_{experiment.checkpoint_for_test_shot(args, shot)}shot"
    if args.select_by == "val-elbo":
        pool = val.flatten(0, 1)
        set_rng = EpisodeRandom.for_episodes(range(args.val_elbo_sets), args.seed, VALIDATION_SETS)
        unlabeled = sample_unlabeled_sets(len(pool), args.sample_size, set_rng)

        def validation(model):
            loss = validation_loss(model, pool, unlabeled, args, device)
            return {"elbo": -loss}, {"val_loss": loss}
        return validation, lambda shot: "best_elbo"
    return (lambda model: ({}, {})), lambda shot: "last"


def train_and_test(experiment, args, device):
    """Meta-train, keep the checkpoints --select-by picks, test them; returns results.json's content."""
    data = experiment.load_data(args, ("train", "val", "test"))
    if args.select_by == "val-acc":  # the only mode that reads validation labels
        check_flags_against_data(args, "val", data["val"], experiment.selection_shots(args))
    check_flags_against_data(args, "test", data["test"], args.eval_shots)
    distributed.check_batch_divides(args.batch_size)
    run = RunDir(args.save_dir)
    if args.resume:
        config = distributed.from_main(lambda: load_checkpoint(run.last_checkpoint)["config"])
        check_same_flags(config, args, experiment.resume_invariant_flags)
    distributed.from_main(lambda: run.prepare(vars(args), resume=args.resume, overwrite=args.overwrite))
    model = experiment.model_class(**experiment.model_config(args, data)).to(device)
    optimizer = make_optimizer(model, args)
    train_pool = data["train"].flatten(0, 1)  # (C * I, *item_shape): classes are never used in training
    validation, checkpoint_name = make_validation(experiment, args, data["val"], device)
    figures = None
    if experiment.write_figures is not None:
        figures = partial(experiment.write_figures, data=data, folder=run.path / "figures",
                          metrics_csv=run.path / "metrics.csv", args=args)
    wall_time = fit(model, optimizer, train_pool, validation, run, args, device, figures)
    checkpoints = {shot: run.checkpoint(checkpoint_name(shot)) for shot in args.eval_shots}
    test_sets = eval_sets(data["test"], args, args.eval_shots)
    results = {"test": evaluate_selected_checkpoints(model, test_sets, checkpoints, args, device),
               "baselines": score_baselines(experiment, test_sets), "select_by": args.select_by,
               "train_iters": args.train_iters, "wall_time_s": wall_time, "config": vars(args)}
    if distributed.is_main():
        run.write_results(results)
    return results


def evaluate_checkpoint(experiment, args, device):
    """--eval-only: test one checkpoint (ours or the authors') at every --eval-shots."""
    data = experiment.load_data(args, ("test",))
    check_flags_against_data(args, "test", data["test"], args.eval_shots)
    model = load_model_checkpoint(experiment, args.checkpoint, device)
    test_sets = eval_sets(data["test"], args, args.eval_shots)
    test = evaluate_model(model, test_sets, args, device)
    return {"test": {k: {**v, "checkpoint": str(args.checkpoint)} for k, v in test.items()},
            "baselines": score_baselines(experiment, test_sets), "config": vars(args)}
