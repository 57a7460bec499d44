"""Few-shot evaluation: fixed episodes, semi-supervised EM prediction, mean and 95% CI.

Episode e's classes, items and MC noise are keyed by (seed, way, shot, e), so its score does not depend
on the batch size or on how torchrun processes share the episodes.
"""
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch

from . import distributed
from .episodes import EpisodeSampler
from .keyed_random import EVAL_EPISODES, EVAL_NOISE, EpisodeRandom
from .metrics import mean_confidence_interval
from .runtime import autocast


@dataclass
class EvalSet:
    """E fixed episodes of one split: the same episodes at every validation and for every checkpoint."""
    sampler: EpisodeSampler
    classes: torch.Tensor    # (E, way)
    instances: torch.Tensor  # (E, way, shot + query)
    seed: int

    @property
    def way(self):
        return self.sampler.way

    @property
    def shot(self):
        return self.sampler.shot

    def __len__(self):
        return len(self.classes)

    def batches(self, batch_size, start=0, stop=None):
        """Episodes [start, stop) in batches: (Episodes, EpisodeRandom of their MC noise)."""
        stop = len(self) if stop is None else stop
        for first in range(start, stop, batch_size):
            rows = range(first, min(first + batch_size, stop))
            yield (self.sampler.gather(self.classes[rows.start:rows.stop], self.instances[rows.start:rows.stop]),
                   EpisodeRandom.for_episodes(rows, self.seed, EVAL_NOISE, self.way, self.shot))


def make_eval_set(data, way, shot, query, num_episodes, seed):
    """Episodes drawn from streams keyed by (seed, way, shot, episode)."""
    sampler = EpisodeSampler(data, way, shot, query)
    classes, instances = sampler.sample_indices(EpisodeRandom.for_episodes(range(num_episodes), seed, EVAL_EPISODES,
                                                                           way, shot))
    return EvalSet(sampler, classes, instances, seed)


@contextmanager
def seeded_eval(model, device, seed):
    """Evaluation mode (BatchNorm running statistics) and a private RNG seeded with `seed`; the model's
    mode and the global RNG state are restored afterwards, so training continues as if nothing ran."""
    was_training = model.training
    model.eval()
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(seed)
            yield
    finally:
        model.train(was_training)


@torch.inference_mode()
def episode_accuracies(model, eval_set, mc_samples, em_iters, batch_size, device, amp=False):
    """Accuracy of each episode (E,), with the model in evaluation mode (BatchNorm running statistics).

    Each process scores its share of the episodes; every process returns all E.
    """
    mine = distributed.share(len(eval_set))
    accuracies = [np.zeros(0, dtype=np.float32)]
    with seeded_eval(model, device, eval_set.seed):
        for episodes, rng in eval_set.batches(batch_size, mine.start, mine.stop):
            with autocast(device, amp):
                probs = model.predict(episodes.support.to(device), episodes.y_support.to(device),
                                      episodes.query.to(device), eval_set.way, mc_samples, em_iters, rng)
            correct = probs.argmax(-1).cpu() == episodes.y_query
            accuracies.append(correct.float().mean(1).numpy())
    return distributed.gather_rows(np.concatenate(accuracies))


def summarize(accuracies):
    mean, ci95 = mean_confidence_interval(accuracies)
    return {"mean": mean, "ci95": ci95, "episodes": int(len(np.asarray(accuracies)))}
