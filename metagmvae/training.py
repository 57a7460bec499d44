"""The meta-training loop shared by the datasets: unlabeled sets -> loss -> Adam; periodic validation,
best checkpoint per selection score, final test of the selected checkpoints.

`args` is the parsed command line of a dataset's main.py (flag names as the reference's).  Under torchrun
each process trains on its share of the step's episodes and evaluates its share of the episodes
(distributed.py); rank 0 writes the files.
"""
import math
import os
import signal
import time

import torch
from tqdm import tqdm

from . import distributed
from .checkpoint import load_checkpoint, save_checkpoint
from .episodes import sample_unlabeled_sets
from .errors import UserError
from .evaluation import episode_accuracies, seeded_eval, summarize
from .keyed_random import TRAINING, VALIDATION_NOISE, EpisodeRandom
from .runtime import autocast, rng_state, set_rng_state


# Read by the resume tests only: SIGKILL this process right after the given training step.
CRASH_AT_STEP = "METAGMVAE_TEST_CRASH_AT_STEP"


class TrainingDiverged(UserError):
    """The loss became NaN or Inf; the last good checkpoint is kept."""


def make_optimizer(model, args):
    # L2 added to the gradient (torch Adam's weight_decay), as the reference; not AdamW.
    return torch.optim.Adam(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)


def train_step(model, optimizer, x, rng, args, step):
    """One update on x: (b, M, *item_shape), this process's b episodes; rng: their EpisodeRandom.

    Returns the losses averaged over all processes, as floats.
    """
    with autocast(x.device, args.amp):
        out = model(x, args.way, args.train_mc_sample_size, args.unsupervised_em_iters, args.fix_pi, rng=rng)
    names = list(out)
    stats = dict(zip(names, distributed.mean_over_processes(torch.stack([out[k] for k in names])).tolist()))
    if not math.isfinite(stats["loss"]):  # the same on every process, so all of them stop
        raise TrainingDiverged(f"loss is {stats['loss']} at step {step + 1}; the last good checkpoint is kept")
    optimizer.zero_grad(set_to_none=True)
    out["loss"].backward()
    if args.grad_clip:
        torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip)
    optimizer.step()
    return stats


def validate(model, eval_sets, args, device):
    """{shot: {"mean", "ci95", "episodes"}} on fixed episodes ({shot: EvalSet})."""
    return {shot: summarize(episode_accuracies(model, eval_set, args.test_mc_sample_size,
                                               args.semisupervised_em_iters, args.batch_size, device, args.amp))
            for shot, eval_set in eval_sets.items()}


@torch.inference_mode()
def validation_loss(model, pool, sets, args, device):
    """Mean training objective (rec + kl) on fixed unlabeled sets, in evaluation mode: no label is read.

    pool: (N, *item_shape) validation items; sets: (E, M) indices into it.  Each process scores its share.
    """
    mine = distributed.share(len(sets))
    total = torch.zeros((), device=device)
    with seeded_eval(model, device, args.seed):
        for start in range(mine.start, mine.stop, args.batch_size):
            rows = range(start, min(start + args.batch_size, mine.stop))
            rng = EpisodeRandom.for_episodes(rows, args.seed, VALIDATION_NOISE)
            with autocast(device, args.amp):
                out = model(pool[sets[rows.start:rows.stop]].to(device), args.way, args.train_mc_sample_size,
                            args.unsupervised_em_iters, args.fix_pi, rng=rng)
            total += out["loss"] * len(rows)
    return distributed.sum_over_processes(total).item() / len(sets)


def checkpoint_state(model, optimizer, step, best, args, wall_time):
    return {"model": model.state_dict(), "model_config": model.config, "optimizer": optimizer.state_dict(),
            "step": step, "best": best, "rng": rng_state(), "config": vars(args), "wall_time_s": wall_time}


def draw_training_sets(train_pool, step, args):
    """This process's episodes of a step: their unlabeled sets (b, M, *item_shape) and their EpisodeRandom,
    keyed (seed, TRAINING, step, global episode), which then draws their MC noise and EM start."""
    rng = EpisodeRandom.for_episodes(distributed.share(args.batch_size).rows, args.seed, TRAINING, step)
    return train_pool[sample_unlabeled_sets(len(train_pool), args.sample_size, rng)], rng


def fit(model, optimizer, train_pool, validation, run, args, device, after_validation=None):
    """Meta-train until args.train_iters, validating every args.freq_iters (and at the last step).

    train_pool: (N, *item_shape) unlabeled training items.  validation(model) -> (scores, fields):
    scores {name: value, higher is better} select best_{name}.pt, fields go into metrics.csv.
    Keeps those and last.pt (for --resume) in `run`, then calls after_validation(model) if given
    (figures).  Step t's draws depend on (seed, t) only, so a resumed run continues exactly.
    Returns the total wall time in seconds.
    """
    step, best, wall_time, rows = 0, {}, 0.0, []
    if args.resume:
        state = distributed.from_main(lambda: load_checkpoint(run.last_checkpoint))
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        set_rng_state(state["rng"])
        step, best, wall_time = state["step"], state["best"], state["wall_time_s"]
        rows = distributed.from_main(lambda: run.read_metrics(up_to=step))
    trained = distributed.wrap_for_training(model, device)
    model.train()
    crash_at = int(os.environ.get(CRASH_AT_STEP, 0))
    totals, count, start = {}, 0, time.perf_counter()
    progress = tqdm(range(step, args.train_iters), initial=step, total=args.train_iters, desc="train",
                    dynamic_ncols=True, disable=not distributed.is_main())
    for step in progress:
        x, rng = draw_training_sets(train_pool, step, args)
        stats = train_step(trained, optimizer, x.to(device, non_blocking=True), rng, args, step)
        totals = {k: totals.get(k, 0.0) + v for k, v in stats.items()}
        count += 1
        progress.set_postfix(rec=f"{stats['rec']:.2f}", kl=f"{stats['kl']:.2f}")
        if step + 1 == crash_at:
            os.kill(os.getpid(), signal.SIGKILL)
        if (step + 1) % args.freq_iters and step + 1 != args.train_iters:
            continue
        scores, fields = validation(model)
        wall_time += time.perf_counter() - start
        start = time.perf_counter()
        row = {"step": step + 1, **{k: v / count for k, v in totals.items()}, "wall_time_s": wall_time, **fields}
        rows.append(row)
        totals, count = {}, 0
        improved = [name for name, score in scores.items() if name not in best or score > best[name]]
        best.update((name, scores[name]) for name in improved)
        if not distributed.is_main():
            continue
        state = checkpoint_state(model, optimizer, step + 1, best, args, wall_time)
        for name in improved:
            save_checkpoint(run.checkpoint(f"best_{name}"), state)
        run.write_metrics(rows)
        save_checkpoint(run.last_checkpoint, state)
        progress.write(f"step {step + 1}: " + ", ".join(
            f"{k} {v:.4f}" for k, v in row.items() if k not in ("step", "wall_time_s")))
        if after_validation is not None:
            after_validation(model)
    return wall_time


def evaluate_model(model, test_sets, args, device):
    """{"<way>way-<shot>shot": {"mean", "ci95", "episodes"}} of one model on each shot's test episodes."""
    return {f"{test_sets[shot].way}way-{shot}shot": summary
            for shot, summary in validate(model, test_sets, args, device).items()}


def evaluate_selected_checkpoints(model, test_sets, checkpoint_for_shot, args, device):
    """Load each shot's selected checkpoint (ours) and test it on that shot's episodes.

    test_sets: {shot: EvalSet}; checkpoint_for_shot: {shot: path}.  Returns results.json's "test" dict.
    """
    results = {}
    for shot, eval_set in test_sets.items():
        path = checkpoint_for_shot[shot]
        model.load_state_dict(distributed.from_main(lambda: load_checkpoint(path)["model"]))
        for key, summary in evaluate_model(model, {shot: eval_set}, args, device).items():
            results[key] = {**summary, "checkpoint": str(path)}
    return results
