"""Meta-training pieces that omniglot/trainer.py and mimgnet/trainer.py call, in this order: draw a step's
unlabeled sets, one Adam step on the objective, validate for model selection, log and checkpoint, and
finally test the selected checkpoints.

Under torchrun each process trains on its share of a step's episodes and evaluates its share of the
evaluation episodes (distributed.py); rank 0 writes the files.
"""
import math
import os
import re
import time
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from . import distributed
from .episodes import (TRAINING, VALIDATION_NOISE, VALIDATION_SETS, EpisodeRandom, check_episodes_fit, make_eval_sets,
                       sample_unlabeled_sets)
from .evaluation import evaluate_shots, result_key, seeded_eval, with_baselines
from .gmvae import ItemsAlike, autocast
from .folders import LAST_CHECKPOINT, RECORD, RunDir
from .runfiles import (DATA_DIGEST, DATA_FOLDER, FLOAT32_MAX, SPLIT_DIGESTS, Interrupted, NonFiniteCheckpoint,
                       Unreadable, UserError, build_model, check_distinct_classes, check_finite_result,
                       check_run_checkpoint, check_same_data, check_same_flags, data_and_split_sha256, data_sha256,
                       load_checkpoint, load_weights, rng_state, set_rng_state, shortened)


class TrainingDiverged(UserError):
    """The loss became NaN or Inf."""


@dataclass(frozen=True)
class Objective:
    """Settings of the training objective: an EM prior of `num_components` Gaussians fitted with `em_iters`
    iterations to `mc_samples` latent samples per item (--way, --train-mc-sample-size,
    --unsupervised-em-iters, --fix-pi)."""
    num_components: int
    mc_samples: int
    em_iters: int
    fix_pi: bool = False

    def __call__(self, model, x, rng):
        """The model's losses {"loss", "rec", "kl"} on x: (b, M, *item_shape), noise and EM starts from rng."""
        return model(x, self.num_components, self.mc_samples, self.em_iters, self.fix_pi, rng=rng)


def draw_training_sets(pool, step, batch_size, sample_size, seed):
    """This process's episodes of a step: unlabeled sets (b, M, *item_shape) drawn with replacement from
    pool (N, *item_shape), and their EpisodeRandom keyed (seed, TRAINING, step, global episode), which
    then draws their MC noise and EM start.  So step t's draws depend on (seed, t) only."""
    rng = EpisodeRandom.for_episodes(distributed.share(batch_size).rows, seed, TRAINING, step)
    return pool[sample_unlabeled_sets(len(pool), sample_size, rng)], rng


def train_step(model, optimizer, x, rng, objective, step, amp=False, grad_clip=0.0):
    """Training step `step` (1-based): one update on x (b, M, *item_shape), this process's episodes;
    rng: their EpisodeRandom.

    Returns the losses averaged over all processes, as floats; a NaN or Inf loss raises TrainingDiverged
    in every process, before the update.
    """
    with autocast(x.device, amp):
        out = objective(model, x, rng)
    names = list(out)
    stats = dict(zip(names, distributed.mean_over_processes(torch.stack([out[k] for k in names])).tolist()))
    if not math.isfinite(stats["loss"]):
        raise TrainingDiverged(f"loss is {stats['loss']} at step {step}")
    optimizer.zero_grad(set_to_none=True)
    out["loss"].backward()
    if grad_clip:
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
    return stats


def step_progress(log, train_iters):
    """A tqdm progress bar over the steps left, log.step to train_iters (shown by rank 0); use it in a `with`,
    which closes it when training stops, so that a last message starts on a line of its own."""
    return tqdm(range(log.step, train_iters), initial=log.step, total=train_iters, desc="train", dynamic_ncols=True,
                disable=not distributed.is_main())


def validation_due(step, freq_iters, train_iters):
    """Validate after every freq_iters-th step and after the last one."""
    return step % freq_iters == 0 or step == train_iters


@dataclass
class UnlabeledSets:
    """Fixed unlabeled validation sets for --select-by val-elbo: indices (E, M) into pool (N, *item_shape)."""
    pool: torch.Tensor
    sets: torch.Tensor

    @classmethod
    def draw(cls, data, num_sets, sample_size, seed):
        """num_sets sets of sample_size items of data (C, I, *item_shape), labels dropped."""
        pool = data.flatten(0, 1)
        rng = EpisodeRandom.for_episodes(range(num_sets), seed, VALIDATION_SETS)
        return cls(pool, sample_unlabeled_sets(len(pool), sample_size, rng))


@torch.inference_mode()
def validation_loss(model, unlabeled, objective, batch_size, seed, device, amp=False):
    """Mean training objective (rec + kl) on fixed UnlabeledSets, in evaluation mode: no label is read.
    Each process scores its share of the sets."""
    mine = distributed.share(len(unlabeled.sets))
    total = torch.zeros((), device=device)
    with seeded_eval(model, device, seed):
        for start in range(mine.start, mine.stop, batch_size):
            rows = range(start, min(start + batch_size, mine.stop))
            x = unlabeled.pool[unlabeled.sets[rows.start:rows.stop]].to(device)
            with autocast(device, amp):
                out = objective(model, x, EpisodeRandom.for_episodes(rows, seed, VALIDATION_NOISE))
            total += out["loss"] * len(rows)
    total = distributed.sum_over_processes(total)
    check_finite_result(total, "validation losses")
    return total.item() / len(unlabeled.sets)


def validation_episodes(select_by, data, shots, way, query, num_episodes, num_sets, sample_size, seed):
    """What --select-by validates on, from the validation split data (C, I, *item_shape): {shot: EvalSet}
    of labeled way-way episodes (val-acc), num_sets UnlabeledSets (val-elbo), or None (last)."""
    if select_by == "val-acc":
        return make_eval_sets(data, way, shots, query, num_episodes, seed, "val")
    if select_by == "val-elbo":
        return UnlabeledSets.draw(data, num_sets, sample_size, seed)
    return None


def validate(model, val, objective, mc_samples, em_iters, batch_size, seed, device, amp=False):
    """Scores for model selection and their metrics.csv fields, by what `val` holds (--select-by):
    {shot: EvalSet} labeled episodes -> accuracy per shot (the reference's rule); UnlabeledSets -> the
    training objective (no label read before the test); None (last) -> nothing.

    Returns ({name: score, higher is better}, {metrics field: value}); name n selects best_{n}.pt.
    """
    if isinstance(val, UnlabeledSets):
        loss = validation_loss(model, val, objective, batch_size, seed, device, amp)
        return {"elbo": -loss}, {"val_loss": loss}
    if val is None:
        return {}, {}
    results = evaluate_shots(model, val, mc_samples, em_iters, batch_size, device, amp)
    fields = {f"val_{shot}shot{suffix}": r[key] for shot, r in results.items()
              for suffix, key in (("", "mean"), ("_ci95", "ci95"))}
    return {f"{shot}shot": r["mean"] for shot, r in results.items()}, fields


def selected_checkpoint(select_by, shot):
    """Name of the checkpoint --select-by keeps for a selection shot."""
    return {"val-acc": f"best_{shot}shot", "val-elbo": "best_elbo", "last": "last"}[select_by]


RUN_CHECKPOINT_KEYS = ("model", "model_config", "optimizer", "step", "best", "rng", "config", "wall_time_s")


class RunLog:
    """A run's progress: the step, running sums of the step losses since the last validation, one metrics
    row per validation, the best score of each selection name, and the wall time of training and
    validation (checkpoint writing excluded)."""

    def __init__(self, step=0, best=None, wall_time=0.0, rows=()):
        self.step, self.best, self.wall_time, self.rows = step, dict(best or {}), wall_time, list(rows)
        self.totals, self.count, self.started = {}, 0, time.perf_counter()
        self.improved = []

    @classmethod
    def resume(cls, state, rows):
        """The progress of a run checkpoint state; rows: its metrics."""
        return cls(state["step"], state["best"], state["wall_time_s"], rows)

    def add(self, step, stats):
        """The losses of training step `step` (1-based)."""
        self.step = step
        self.totals = {k: self.totals.get(k, 0.0) + v for k, v in stats.items()}
        self.count += 1

    def validation(self, scores, fields):
        """Close the rows since the last validation; returns the new metrics row.  self.improved lists the
        selection names whose score is a new best (their checkpoints are due)."""
        now = time.perf_counter()
        self.wall_time += now - self.started
        row = {"step": self.step, **{k: v / self.count for k, v in self.totals.items()},
               "wall_time_s": self.wall_time, **fields}
        self.rows.append(row)
        self.totals, self.count = {}, 0
        self.improved = [name for name, score in scores.items() if name not in self.best or score > self.best[name]]
        self.best.update((name, scores[name]) for name in self.improved)
        return row

    def restart_clock(self):
        self.started = time.perf_counter()

    def checkpoint(self, model, optimizer, config):
        """The checkpoint dict of this moment (RUN_CHECKPOINT_KEYS): weights, optimizer, progress, RNG states and
        the flags."""
        return {"model": model.state_dict(), "model_config": model.config, "optimizer": optimizer.state_dict(),
                "step": self.step, "best": self.best, "rng": rng_state(), "config": config,
                "wall_time_s": self.wall_time}


def save_after_validation(run, log, state):
    """Write metrics.csv, best_{name}.pt for each improved name, then last.pt (rank 0 only).  In this order a
    run stopped between two of them resumes: from last.pt, or from a best_*.pt copied to last.pt (the advice
    when last.pt is missing), with the rows of metrics.csv up to its step (later ones are cut)."""
    run.write_metrics(log.rows)
    for name in log.improved:
        run.save_checkpoint(f"best_{name}", state)
    run.save_checkpoint("last", state)


def save_results(run, results):
    """Rank 0 writes results.json into the run folder; returns `results`."""
    if distributed.is_main():
        run.write_results(results)
    return results


def format_row(row):
    return f"step {row['step']}: " + ", ".join(f"{k} {v:.4f}" for k, v in row.items()
                                             if k not in ("step", "wall_time_s"))


def test_model(model, test_sets, checkpoint, mc_samples, em_iters, batch_size, device, amp=False):
    """results.json's "test" entries of one model on {shot: EvalSet}:
    {"<way>way-<shot>shot": {"mean", "ci95", "episodes", "checkpoint"}}."""
    summaries = evaluate_shots(model, test_sets, mc_samples, em_iters, batch_size, device, amp)
    return {result_key(test_sets[shot]): {**summary, "checkpoint": str(checkpoint)}
            for shot, summary in summaries.items()}


def test_checkpoints(model, test_sets, run, names, mc_samples, em_iters, batch_size, device, amp=False):
    """Load each shot's checkpoint of the opened RunDir `run` (names: {shot: checkpoint name}; rank 0 reads
    it, as the run wrote it: RunDir.read_checkpoint) into `model` and test it on that shot's episodes
    (test_sets: {shot: EvalSet}).  Returns results.json's "test" dict."""
    results = {}
    for shot, eval_set in test_sets.items():
        model.load_state_dict(distributed.from_main(lambda: run.read_checkpoint(names[shot])["model"]))
        results.update(test_model(model, {shot: eval_set}, run.checkpoint(names[shot]), mc_samples, em_iters,
                                  batch_size, device, amp))
    return results


def evaluate_checkpoint(model, checkpoint, test, baselines, way, shots, query, num_episodes, seed, mc_samples,
                        em_iters, batch_size, device, amp=False):
    """--eval-only: a model loaded from `checkpoint` on fixed way-way test episodes of test (C, I, ...) at
    each shot, beside `baselines` on the same episodes; returns results.json's "test" and "baselines"."""
    check_episodes_fit("test", test, way, query, shots, num_episodes)
    test_sets = make_eval_sets(test, way, shots, query, num_episodes, seed, "test")
    return with_baselines(test_model(model, test_sets, checkpoint, mc_samples, em_iters, batch_size, device, amp),
                          test_sets, baselines)


def load_model(path, model_class, convert_reference, name, device):
    """A model_class from our checkpoint or the authors' (see runfiles.build_model); rank 0 reads the file."""
    state = distributed.from_main(lambda: load_checkpoint(path))
    return build_model(state, path, model_class, name, convert_reference).to(device)


def saved_run_config(path):
    """The run config (flags and data digest) saved in checkpoint `path` (rank 0 reads the file): ours; {}
    for one without (the authors')."""
    config = distributed.from_main(lambda: load_checkpoint(path)).get("config")
    return config if isinstance(config, dict) else {}


def trained_splits(checkpoint, load_split, data_dir=None):
    """{description: tensor} of the train split `checkpoint` trained on and the val split that selected it,
    each where the folder its run config names (not data_dir) still holds it: the sha256 of each split
    (SPLIT_DIGESTS) against the split load_split (folder, split) reads there, as training read it.  Moved or
    changed splits, runs saved without split digests and the authors' checkpoints give none."""
    config = saved_run_config(checkpoint)
    trained_on, digests = config.get(DATA_FOLDER), config.get(SPLIT_DIGESTS)
    if not isinstance(trained_on, str) or not isinstance(digests, dict) or not Path(trained_on).is_dir() or \
            (data_dir is not None and Path(trained_on).resolve() == Path(data_dir).resolve()):
        return {}
    seen = {}
    for split, role in (("train", "trained on"), ("val", "was selected on")):
        try:
            saved = load_split(trained_on, split)
        except UserError:  # gone, or no longer what it was
            continue
        if data_sha256({split: saved}) == digests.get(split):
            seen[f"the {split} split of {trained_on}, which {checkpoint} {role}"] = saved
    return seen


def check_not_trained_on(checkpoint, name, array, data_dir, load_split, flag):
    """Refuse a split `name` ("test") of --data-dir, array (C, I, ...), that holds classes of the train split
    `checkpoint` trained on or of the val split that selected it (trained_splits; --data-dir's own splits the
    loader compares): an accuracy on them would measure memory, not few-shot learning.  The classes are
    compared by runfiles.check_distinct_classes.  flag: the command's mode, for the message."""
    seen = trained_splits(checkpoint, load_split, data_dir)
    if seen:
        check_distinct_classes({f"the {name} split of --data-dir {data_dir}": array, **seen}, flag)


@contextmanager
def run_folder(save_dir, model, resume, progress="step"):
    """The run folder (a RunDir) of a training process of `model` ("Omniglot"), opened for the block: a
    second process on it is refused naming this one (rank 0 holds the lock; folders.py says which folders
    and files a run may write).  A Ctrl-C or a diverged loss inside the block ends in one line (from rank 0)
    naming the checkpoint, with its `progress` count ("step", "epoch"), that the run can continue from; a
    model that came to encode all items alike (validation, test) is said to have diverged.
    With resume, a folder without last.pt is refused before anything is created."""
    run = RunDir(save_dir, model)

    def open_folder():
        if resume:
            run.check_resumable()
        stack.enter_context(run.opened())

    with ExitStack() as stack:
        distributed.from_main(open_folder)
        try:
            yield run
        except (KeyboardInterrupt, TrainingDiverged, ItemsAlike) as e:
            if not distributed.is_main():  # the others may not see the folder
                raise
            saved = last_saved(run, progress)
            if isinstance(e, ItemsAlike):  # the model this run trained: its weights diverged
                raise TrainingDiverged(f"{e}. Here the model is the one this run trained: the training diverged "
                                       "(a --lr too high for it; --grad-clip bounds the steps). The checkpoints may "
                                       f"hold the diverged weights{f' (the last: {saved})' if saved else ''}, so "
                                       "--resume would diverge again: start anew with --overwrite and a lower "
                                       "--lr") from None
            if isinstance(e, TrainingDiverged):
                raise TrainingDiverged(f"{e}; " + (f"the last good checkpoint, {saved}, is kept" if saved else
                                                   "no checkpoint was written yet")) from None
            raise Interrupted("interrupted (Ctrl-C); " + (
                f"--resume continues the run from {saved}" if saved else
                "the run wrote no checkpoint yet: run again without --resume to start it anew")) from None


def last_saved(run, progress):
    """'<folder>/last.pt (step 20)': the last checkpoint of the opened run and its `progress` count, read as
    the run wrote it through its folder and named where the folder is now (moved meanwhile, say), or None if
    none is there to resume from."""
    data = run.folder.read_owned(LAST_CHECKPOINT)
    try:
        count = load_checkpoint(run.last_checkpoint, data)[progress] if data is not None else None
    except (UserError, KeyError):
        count = None
    return f"{run.folder.current_path() / LAST_CHECKPOINT} ({progress} {count})" if count is not None else None


def refuse_field(path, field, value, expected):
    """Refuse checkpoint `path` whose entry `field` holds `value` (shown shortened), not `expected`."""
    raise UserError(f"{path}: {field!r} is {shortened(repr(value))}, not {expected}: no run writes that (a damaged or "
                    "edited checkpoint)")


def is_float_in(value, low, high=math.inf):
    """Whether `value` is a finite float (as a run writes) in [low, high]."""
    return isinstance(value, float) and math.isfinite(value) and low <= value <= high


def run_config(args, splits):
    """What a run saves as its config (checkpoints, config.json, results.json): the flags, and the sha256 of
    its data (splits: {name: tensor}), which --resume checks, and of each split, with the absolute path of
    --data-dir (as given it may be relative to another working folder), which --eval-only and others check
    (trained_splits)."""
    digest, split_digests = data_and_split_sha256(splits)
    return {**vars(args), DATA_DIGEST: digest, DATA_FOLDER: os.path.abspath(args.data_dir),
            SPLIT_DIGESTS: split_digests}


def read_resume_state(run, config, keys, invariant_flags, name):
    """The last.pt of `run`, checked to be a run checkpoint of the `name` model (a dict with `keys`, among
    them "config" and "wall_time_s"), then, before any of its fields is read, the one this project wrote
    there (its record), with a config dict that agrees with config (run_config) on `invariant_flags` and on
    the data's digest, and a wall time that a run measures; rank 0 reads it.  An unreadable last.pt is
    refused naming the best_*.pt checkpoints that could be resumed from instead."""
    path = run.last_checkpoint

    def load():
        try:
            return load_checkpoint(path)
        except Unreadable:  # intact, most likely: no advice to replace it
            raise
        except UserError as e:
            raise UserError(f"{e}{run.instead_of_last('start the run anew with --overwrite')}") from None

    def check_recorded():
        if not run.owns_last_checkpoint():
            raise UserError(f"--resume: {path} is not the {LAST_CHECKPOINT} this project wrote (changed since, not in "
                            f"its record {RECORD}, or a link), so the run cannot continue from it: move it away and "
                            "start the run anew with --overwrite, or choose another --save-dir")

    state = distributed.from_main(load)
    try:
        check_run_checkpoint(state, path, keys, name)
    except NonFiniteCheckpoint as e:
        raise UserError(f"{e}{run.instead_of_last('start the run anew with --overwrite')}") from None
    distributed.from_main(check_recorded)
    if not is_float_in(state["wall_time_s"], 0.0, FLOAT32_MAX):  # metrics.csv's rows hold float32 numbers
        refuse_field(path, "wall_time_s", state["wall_time_s"], "a number of seconds >= 0 within float32's range")
    check_same_flags(state["config"], config, invariant_flags)
    check_same_data(state["config"], config, path)
    return state


ADAM_MOMENTS = ("exp_avg", "exp_avg_sq")  # per parameter, beside its "step" count; the second one >= 0
AMSGRAD_MOMENT = "max_exp_avg_sq"  # with amsgrad: the largest exp_avg_sq so far


def same_value(a, b):
    """a == b, of the same types, tuples and lists compared item by item (a tensor equals no setting)."""
    if isinstance(a, (tuple, list)):
        return type(a) is type(b) and len(a) == len(b) and all(map(same_value, a, b))
    return type(a) is type(b) and a == b


def check_optimizer_state(saved, path, optimizer):
    """Refuse the Adam state_dict `saved` (the entry "optimizer" of checkpoint `path`) unless it fits
    `optimizer`, the run's Adam made from the flags: the same parameter groups with the same settings (lr
    aside where a scheduler moves it, which it keeps in [0, the group's initial_lr]), and for each
    parameter with a state a whole "step" count >= 1 and moments of the parameter's shape and dtype, the
    second ones >= 0 (NaN and Inf are refused by check_run_checkpoint)."""
    groups = optimizer.state_dict()["param_groups"]
    params = [p for group in optimizer.param_groups for p in group["params"]]
    if not isinstance(saved.get("param_groups"), list) or len(saved["param_groups"]) != len(groups) \
            or not all(isinstance(group, dict) for group in saved["param_groups"]):
        refuse_field(path, "optimizer/param_groups", saved.get("param_groups"),
                     f"a list of {len(groups)} parameter group(s)")
    for index, (group, expected) in enumerate(zip(saved["param_groups"], groups)):
        for key, value in expected.items():
            field, found = f"optimizer/param_groups/{index}/{key}", group.get(key, value)
            if key == "lr" and "initial_lr" in expected:
                if not is_float_in(group.get(key), 0.0, expected["initial_lr"]):
                    refuse_field(path, field, group.get(key), f"a learning rate in [0, {expected['initial_lr']}]")
            elif key in ("lr", "params") and key not in group or not same_value(found, value):
                refuse_field(path, field, group.get(key), f"{value!r} (what the run's flags set)")
    amsgrad = any(group["amsgrad"] for group in groups)
    moments = (*ADAM_MOMENTS, AMSGRAD_MOMENT) if amsgrad else ADAM_MOMENTS
    if not isinstance(saved.get("state"), dict):
        refuse_field(path, "optimizer/state", saved.get("state"), "a dict of the parameters' Adam states")
    for index, entry in saved["state"].items():
        field = f"optimizer/state/{index}"
        if type(index) is not int or not 0 <= index < len(params):
            refuse_field(path, f"optimizer/state key {index!r}", index, f"a parameter index in [0, {len(params)})")
        if not isinstance(entry, dict) or set(entry) != {"step", *moments}:
            refuse_field(path, field, entry, f"Adam's state of a parameter ({', '.join(('step', *moments))})")
        step = entry["step"]
        if not isinstance(step, torch.Tensor) or step.numel() != 1 or step.is_complex() or \
                not (step.item() >= 1 and float(step.item()).is_integer()):
            refuse_field(path, f"{field}/step", step, "a count of steps >= 1 (a one-element tensor)")
        for name in moments:
            moment, param = entry[name], params[index]
            if not isinstance(moment, torch.Tensor) or moment.shape != param.shape or moment.dtype != param.dtype:
                found = (f"a {moment.dtype} tensor of shape {tuple(moment.shape)}" if isinstance(moment, torch.Tensor)
                         else type(moment).__name__)
                raise UserError(f"{path}: '{field}/{name}' is {found}, not a {param.dtype} tensor of its parameter's "
                                f"shape {tuple(param.shape)}: the Adam state does not fit the model")
            if name != "exp_avg" and bool((moment < 0).any()):
                raise UserError(f"{path}: '{field}/{name}' holds negative values: a mean of squared gradients is "
                                ">= 0 (a damaged or edited checkpoint)")


def restore_training(state, path, name, model, optimizer):
    """Load a run checkpoint state (read from `path`) into the `name` model, its optimizer and the global
    RNGs; contents that do not fit them (check_optimizer_state) raise UserError naming the file, before
    anything is loaded."""
    check_optimizer_state(state["optimizer"], path, optimizer)
    load_weights(model, state["model"], path, name)
    try:
        optimizer.load_state_dict(state["optimizer"])
        set_rng_state(state["rng"])
    except (ValueError, TypeError, KeyError, IndexError, RuntimeError) as e:
        raise UserError(f"{path}: its optimizer or RNG state does not fit the {name} run ({e})") from None


def prepare_folder(run, config, resume, overwrite):
    """RunDir.prepare by rank 0, which prints what it removed (a replaced run, the results of a resumed one)."""
    note = distributed.from_main(lambda: run.prepare(config, resume=resume, overwrite=overwrite))
    if note is not None and distributed.is_main():
        print(note)


SELECTION_SHOT = re.compile(r"[1-9][0-9]*shot")  # val-acc's selection names: "<shot>shot"


def check_run_progress(state, path, config):
    """Refuse the progress of a run checkpoint `state` (read from `path`) that no run of config (the flags as
    a dict) writes: its "step", a whole count from 1 to --train-iters, and its "best", the best validation
    score of each selection name of --select-by (val-acc: "<shot>shot" accuracies in [0, 1]; val-elbo:
    "elbo", a finite number; last: none)."""
    step, best = state["step"], state["best"]
    if type(step) is not int or step < 1:
        refuse_field(path, "step", step, "a count of training steps >= 1")
    if step > config["train_iters"]:  # results.json would name fewer steps than the model had
        raise UserError(f"--train-iters {config['train_iters']} is below the {step} steps the run in "
                        f"{path.parent} has done: give --train-iters {step} to test it as it is, or more to train it "
                        "further")
    select_by = config["select_by"]
    if select_by == "last":
        valid = isinstance(best, dict) and not best
    elif select_by == "val-elbo":
        valid = isinstance(best, dict) and set(best) == {"elbo"} and is_float_in(best["elbo"], -math.inf)
    else:
        valid = isinstance(best, dict) and bool(best) and all(
            isinstance(k, str) and SELECTION_SHOT.fullmatch(k) and is_float_in(v, 0.0, 1.0) for k, v in best.items())
    if not valid:
        expected = {"val-acc": "{'<shot>shot': an accuracy in [0, 1], ...}", "val-elbo": "{'elbo': a finite number}",
                    "last": "{} (--select-by last keeps no score)"}[select_by]
        refuse_field(path, "best", best, expected)


def start_run(run, model, optimizer, config, resume, overwrite, invariant_flags, name):
    """Check the run folder and, with resume, check its last.pt (read_resume_state, check_run_progress,
    restore_training: a run checkpoint of the `name` model that agrees with config, the flags as a dict, on
    `invariant_flags`) and load it and metrics.csv into model, optimizer and the RNGs; only then write
    (prepare_folder).  Returns the RunLog to continue."""
    log = RunLog()
    if resume:
        state = read_resume_state(run, config, RUN_CHECKPOINT_KEYS, invariant_flags, name)
        check_run_progress(state, run.last_checkpoint, config)
        restore_training(state, run.last_checkpoint, name, model, optimizer)
        log = RunLog.resume(state, distributed.from_main(lambda: run.read_metrics(up_to=state["step"])))
        # a best score whose best_*.pt the run did not write (stopped first): the next validation writes it
        kept = distributed.from_main(run.recorded_best)
        log.best = {name: score for name, score in log.best.items() if f"best_{name}.pt" in kept}
    prepare_folder(run, config, resume, overwrite)
    return log
