"""Omniglot experiment: data -> model -> meta-training -> model selection per shot -> test."""
import torch

from metagmvae.checkpoint import load_checkpoint
from metagmvae.errors import UserError
from metagmvae.evaluation import make_eval_set
from metagmvae.rundir import RunDir
from metagmvae.training import fit, make_optimizer, test_checkpoints, test_model

from .dataset import load_omniglot
from .model import OmniglotGMVAE, convert_reference_state_dict

# Flags that define the model or the objective: a resumed run must keep them.
RESUME_INVARIANT_FLAGS = ("hidden_size", "latent_size", "way", "batch_size", "sample_size", "train_mc_sample_size",
                          "unsupervised_em_iters", "fix_pi", "lr", "weight_decay", "seed")


def check_flags_against_data(args, data):
    """Refuse episode shapes the splits cannot provide."""
    for split, array in data.items():
        if split == "train":
            continue
        classes, instances = array.shape[:2]
        if args.eval_way > classes:
            raise UserError(f"--eval-way {args.eval_way} is larger than the {classes} classes of the {split} split")
        for shot in args.eval_shots:
            if shot + args.query > instances:
                raise UserError(f"shot {shot} + --query {args.query} is larger than the {instances} drawings per class "
                                f"of the {split} split")


def load_model_checkpoint(path, device):
    """A model from our checkpoint or the authors' (a dict with "state_dict" in their names)."""
    state = load_checkpoint(path, map_location=device)
    if "model" in state:
        state_dict, config = state["model"], state["model_config"]
    elif "state_dict" in state:
        try:
            state_dict, config = convert_reference_state_dict(state["state_dict"])
        except KeyError as e:
            raise UserError(f"{path}: not an Omniglot Meta-GMVAE checkpoint ({e.args[0]})") from None
    else:
        raise UserError(f"{path}: neither our checkpoint (key 'model') nor the authors' (key 'state_dict')")
    model = OmniglotGMVAE(**config).to(device)
    try:
        model.load_state_dict(state_dict)
    except RuntimeError as e:
        raise UserError(f"{path}: weights do not fit the Omniglot model: {str(e).splitlines()[0]}") from None
    return model


def check_resume(run, args):
    saved = load_checkpoint(run.last_checkpoint)["config"]
    differing = [f for f in RESUME_INVARIANT_FLAGS if saved.get(f) != getattr(args, f)]
    if differing:
        raise UserError("--resume with different settings than the saved run: " + ", ".join(
            f"--{f.replace('_', '-')} {getattr(args, f)} (saved {saved.get(f)})" for f in differing))


def eval_sets(array, args):
    return {shot: make_eval_set(array, args.eval_way, shot, args.query, args.eval_episodes, args.seed)
            for shot in args.eval_shots}


def train_and_test(args, device):
    """Meta-train, keep the best validation checkpoint per shot, test each; returns results.json's content."""
    data = load_omniglot(args.data_dir)
    check_flags_against_data(args, data)
    run = RunDir(args.save_dir)
    if args.resume:
        check_resume(run, args)
    run.prepare(vars(args), resume=args.resume, overwrite=args.overwrite)
    model = OmniglotGMVAE(args.hidden_size, args.latent_size).to(device)
    optimizer = make_optimizer(model, args)
    train_pool = data["train"].flatten(0, 1)  # (C * I, 1, 28, 28): labels and classes are never used
    wall_time = fit(model, optimizer, train_pool, eval_sets(data["val"], args), run, args, device)
    checkpoints = {shot: run.checkpoint(f"best_{shot}shot") for shot in args.eval_shots}
    results = {"test": test_checkpoints(model, eval_sets(data["test"], args), checkpoints, args, device),
               "train_iters": args.train_iters, "wall_time_s": wall_time, "config": vars(args)}
    run.write_results(results)
    return results


def evaluate_checkpoint(args, device):
    """--eval-only: test one checkpoint (ours or the authors') at every --eval-shots."""
    data = load_omniglot(args.data_dir, ("test",))
    check_flags_against_data(args, data)
    model = load_model_checkpoint(args.checkpoint, device)
    test = test_model(model, eval_sets(data["test"], args), args, device)
    return {"test": {k: {**v, "checkpoint": str(args.checkpoint)} for k, v in test.items()}, "config": vars(args)}
