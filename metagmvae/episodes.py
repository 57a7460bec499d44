"""Episodes: keyed random streams, labeled N-way K-shot episodes, unlabeled training sets, and the
fixed evaluation episodes.

Every random draw is keyed by what it is for, so results do not depend on batching or on the number of
processes: each episode has its own stream, seeded by (seed, purpose, ..., global episode index). A stream
is a numpy PCG64 generator seeded through SeedSequence, so distinct keys give independent streams (torch's
CPU generator keeps only 32 bits of a seed, too few for the 240,000 episodes of a run), and CPU and GPU
runs draw the same numbers.

Labeled episodes come from arrays shaped (C classes, I instances, ...): N-way, `shot` support and `query`
query items per class. Unlabeled training sets are drawn with replacement from all training images
pooled, so meta-training never reads a label.
"""
import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch

from .runfiles import UserError

# The element after the seed in every key: what the draws are for.  All keys of one purpose have the same
# length: SeedSequence ignores trailing zeros, so (s, p) and (s, p, 0) would be the same stream.
TRAINING = 0           # (seed, TRAINING, step, episode): an unlabeled set, its MC noise and its EM start
EVAL_EPISODES = 1      # (seed, EVAL_EPISODES, split, way, shot, episode): an evaluation episode's classes and items
EVAL_NOISE = 2         # (seed, EVAL_NOISE, split, way, shot, episode): the MC noise of one evaluation episode
VALIDATION_SETS = 3    # (seed, VALIDATION_SETS, set): the items of one unlabeled validation set (val-elbo)
VALIDATION_NOISE = 4   # (seed, VALIDATION_NOISE, set): the MC noise and EM start of one validation set
FIGURES = 5            # (seed, FIGURES): the items and the episode the figures of a run show
GROUPING_EM = 6        # (seed, GROUPING_EM, restart): one EM start when grouping an unlabeled folder
GROUPING_NOISE = 7     # (seed, GROUPING_NOISE, 0): the MC noise of the grouped folder's set
GROUPING_KMEANS = 8    # (seed, GROUPING_KMEANS, restart): one k-means++ start of the baseline
SPLITS = {"val": 1, "test": 2}  # `split` in the evaluation keys: validation and test draw independently
# evaluation episodes are drawn at random: from P distinct ones, E draws repeat about E / (2P) of them; at
# least this many times more distinct episodes than drawn keeps that near a tenth or below
DISTINCT_EPISODES_FACTOR = 5
PARALLEL_DRAW_SIZE = 1 << 16  # numbers in one draw from which the episode streams are drawn in parallel
STREAM_BYTES = 1100  # memory of one stream of an EpisodeRandom (a numpy PCG64 Generator), as measured


class EpisodeRandom:
    """One random stream per episode.  Draws have shape (E, ...): row e comes from episode e's stream,
    so an episode gets the same numbers whichever episodes share its batch or process."""

    def __init__(self, keys):
        """keys: one tuple of non-negative integers per episode."""
        self.streams = [np.random.default_rng(np.random.SeedSequence(list(key))) for key in keys]

    @classmethod
    def for_episodes(cls, episodes, *prefix):
        """Streams keyed (*prefix, e) for each global episode index e in `episodes`."""
        return cls([(*prefix, e) for e in episodes])

    def __len__(self):
        return len(self.streams)

    def _check_rows(self, shape):
        if shape[0] != len(self.streams):
            raise ValueError(f"{shape[0]} rows asked of {len(self.streams)} episode streams")

    def _fill(self, fill, shape):
        """A float32 CPU tensor (E, ...) whose row e fill(stream e, row e) writes in place.  Large draws
        run on torch's number of threads (numpy releases the GIL while it fills): each row comes from its
        own stream whichever thread draws it, so the numbers are the same."""
        self._check_rows(shape)
        out = np.empty(shape, dtype=np.float32)
        rows = list(zip(self.streams, out.reshape(shape[0], int(np.prod(shape[1:])))))
        threads = min(torch.get_num_threads(), len(rows)) if out.size >= PARALLEL_DRAW_SIZE else 1

        def fill_rows(first):  # rows first, first + threads, ...
            for stream, row in rows[first::threads]:
                fill(stream, row)
        if threads == 1:
            fill_rows(0)
        else:
            with ThreadPoolExecutor(threads) as pool:
                list(pool.map(fill_rows, range(threads)))
        return torch.from_numpy(out)

    def rand(self, *shape):
        """Uniform [0, 1) float32 CPU tensor of shape (E, ...)."""
        return self._fill(lambda stream, row: stream.random(dtype=np.float32, out=row), shape)

    def randn(self, *shape):
        """Standard normal float32 CPU tensor of shape (E, ...)."""
        return self._fill(lambda stream, row: stream.standard_normal(dtype=np.float32, out=row), shape)

    def randint(self, high, *shape):
        """Integers in [0, high), int64 CPU tensor of shape (E, ...)."""
        self._check_rows(shape)
        return torch.from_numpy(np.stack([stream.integers(high, size=shape[1:]) for stream in self.streams]))


@dataclass
class Episodes:
    """A batch of E labeled episodes; items are class-major, labels in [0, way)."""
    support: torch.Tensor    # (E, way * shot, ...)
    y_support: torch.Tensor  # (E, way * shot)
    query: torch.Tensor      # (E, way * query, ...)
    y_query: torch.Tensor    # (E, way * query)


class EpisodeSampler:
    """Draws N-way K-shot Q-query episodes from `data` shaped (C, I, ...)."""

    def __init__(self, data, way, shot, query):
        num_classes, num_instances = data.shape[:2]
        if way > num_classes:
            raise ValueError(f"way {way} is larger than the {num_classes} classes available")
        if shot + query > num_instances:
            raise ValueError(f"shot + query = {shot + query} is larger than the {num_instances} instances per class")
        if min(way, shot, query) < 1:
            raise ValueError("way, shot and query must be positive")
        self.data, self.way, self.shot, self.query = data, way, shot, query

    def sample_indices(self, rng):
        """Random (classes (E, way), instances (E, way, shot + query)), distinct within an episode, for the E
        episodes of rng (an EpisodeRandom): episode e from its own stream."""
        C, I = self.data.shape[:2]
        E = len(rng)
        classes = rng.rand(E, C).argsort(-1)[:, :self.way]
        instances = rng.rand(E, self.way, I).argsort(-1)[..., :self.shot + self.query]
        return classes, instances

    def gather(self, classes, instances):
        """Episodes for the given indices; the data are read only for these E episodes."""
        E, way = classes.shape
        items = self.data[classes.unsqueeze(-1), instances]  # (E, way, shot + query, ...)
        labels = torch.arange(way).expand(E, way)
        def flat(t):
            return t.reshape(E, -1, *t.shape[3:])
        support, query = items[:, :, :self.shot], items[:, :, self.shot:]
        return Episodes(
            support=flat(support), y_support=labels.repeat_interleave(self.shot, dim=1),
            query=flat(query), y_query=labels.repeat_interleave(self.query, dim=1))


def sample_unlabeled_sets(num_items, sample_size, rng):
    """Indices (E, M) into the pooled items, drawn with replacement; row e from episode e's stream of
    rng (an EpisodeRandom)."""
    return rng.randint(num_items, len(rng), sample_size)


@dataclass
class EvalSet:
    """E fixed episodes of one split: the same episodes at every validation and for every checkpoint."""
    sampler: EpisodeSampler
    classes: torch.Tensor    # (E, way)
    instances: torch.Tensor  # (E, way, shot + query)
    seed: int
    split: str               # "val" or "test"

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
                   EpisodeRandom.for_episodes(rows, self.seed, EVAL_NOISE, SPLITS[self.split], self.way, self.shot))


def make_eval_set(data, way, shot, query, num_episodes, seed, split):
    """Episodes of the `split` ("val" or "test") array data (C, I, ...), each drawn from its stream keyed by
    (seed, split, way, shot, episode)."""
    sampler = EpisodeSampler(data, way, shot, query)
    rng = EpisodeRandom.for_episodes(range(num_episodes), seed, EVAL_EPISODES, SPLITS[split], way, shot)
    classes, instances = sampler.sample_indices(rng)
    return EvalSet(sampler, classes, instances, seed, split)


def make_eval_sets(data, way, shots, query, num_episodes, seed, split):
    """{shot: EvalSet} of the `split` array data (C, I, ...) at each shot."""
    return {shot: make_eval_set(data, way, shot, query, num_episodes, seed, split) for shot in shots}


def check_episodes_fit(split, array, way, query, shots, num_episodes):
    """Refuse evaluation episodes that a split (C, I, ...) cannot provide: more classes or items than it has,
    or num_episodes episodes drawn from fewer than DISTINCT_EPISODES_FACTOR times as many distinct ones (about
    a tenth or more would repeat, and the 95% CI counts the episodes as independent)."""
    classes, instances = array.shape[:2]
    if way > classes:
        raise UserError(f"--eval-way {way} is larger than the {classes} classes of the {split} split")
    for shot in shots:
        if shot + query > instances:
            raise UserError(f"shot {shot} + --query {query} is larger than the {instances} items per class "
                            f"of the {split} split")
        # distinct episodes: the class set, then each class's support and query items
        log_distinct = log_binomial(classes, way) + way * (log_binomial(instances, shot)
                                                           + log_binomial(instances - shot, query))
        if log_distinct < math.log(DISTINCT_EPISODES_FACTOR * num_episodes):
            raise UserError(f"--eval-episodes {num_episodes}: the {split} split ({classes} classes of {instances} "
                            f"items) holds only {math.exp(log_distinct):.0f} distinct {way}-way {shot}-shot episodes "
                            f"with {query} queries per class, fewer than {DISTINCT_EPISODES_FACTOR} x "
                            f"{num_episodes}: drawn at random, many would repeat, and the 95% CI counts episodes as "
                            "independent; ask for fewer episodes, or give more classes or items")


def log_binomial(n, k):
    """log(n choose k)."""
    return math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)
