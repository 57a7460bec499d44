"""Few-shot evaluation: fixed episodes, semi-supervised EM prediction, mean and 95% CI."""
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch

from .episodes import EpisodeSampler
from .metrics import mean_confidence_interval
from .runtime import autocast


@dataclass
class EvalSet:
    """E fixed episodes of one split: the same episodes at every validation and for every checkpoint."""
    sampler: EpisodeSampler
    classes: torch.Tensor    # (E, way)
    instances: torch.Tensor  # (E, way, shot + query)

    @property
    def way(self):
        return self.sampler.way

    @property
    def shot(self):
        return self.sampler.shot

    def __len__(self):
        return len(self.classes)

    def batches(self, batch_size):
        for start in range(0, len(self), batch_size):
            yield self.sampler.gather(self.classes[start:start + batch_size], self.instances[start:start + batch_size])


def make_eval_set(data, way, shot, query, num_episodes, seed):
    """Episodes drawn from their own generator, seeded by (seed, way, shot)."""
    sampler = EpisodeSampler(data, way, shot, query)
    generator = torch.Generator().manual_seed(int(np.random.SeedSequence([seed, way, shot]).generate_state(1)[0]))
    classes, instances = sampler.sample_indices(num_episodes, generator)
    return EvalSet(sampler, classes, instances)


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
def episode_accuracies(model, eval_set, mc_samples, em_iters, batch_size, device, seed=0, amp=False):
    """Accuracy of each episode (E,), with the model in evaluation mode (BatchNorm running statistics).

    The MC draws use their own seeded RNG, so a checkpoint scores the same wherever it is evaluated.
    """
    accuracies = []
    with seeded_eval(model, device, seed):
        for episodes in eval_set.batches(batch_size):
            with autocast(device, amp):
                probs = model.predict(episodes.support.to(device), episodes.y_support.to(device),
                                      episodes.query.to(device), eval_set.way, mc_samples, em_iters)
            correct = probs.argmax(-1).cpu() == episodes.y_query
            accuracies.append(correct.float().mean(1))
    return torch.cat(accuracies).numpy()


def summarize(accuracies):
    mean, ci95 = mean_confidence_interval(accuracies)
    return {"mean": mean, "ci95": ci95, "episodes": int(len(np.asarray(accuracies)))}
