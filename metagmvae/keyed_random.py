"""Random draws keyed by what they are for, so results do not depend on batching or on the number of
processes: every episode has its own stream, seeded by (seed, purpose, ..., global episode index).

Each stream is a numpy PCG64 generator seeded through SeedSequence, so distinct keys give independent
streams (torch's CPU generator keeps only 32 bits of a seed, too few for the 240,000 episodes of a run),
and CPU and GPU runs draw the same numbers.
"""
import numpy as np
import torch

# The element after the seed in every key: what the draws are for.
TRAINING = 0           # (seed, TRAINING, step, episode): an unlabeled set, its MC noise and its EM start
EVAL_EPISODES = 1      # (seed, EVAL_EPISODES, way, shot, episode): the classes and items of an evaluation episode
EVAL_NOISE = 2         # (seed, EVAL_NOISE, way, shot, episode): the MC noise of one evaluation episode
VALIDATION_SETS = 3    # (seed, VALIDATION_SETS, set): the items of one unlabeled validation set (val-elbo)
VALIDATION_NOISE = 4   # (seed, VALIDATION_NOISE, set): the MC noise and EM start of one validation set


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

    def _draw(self, draw, shape):
        if shape[0] != len(self.streams):
            raise ValueError(f"{shape[0]} rows asked of {len(self.streams)} episode streams")
        return torch.from_numpy(np.stack([draw(stream, shape[1:]) for stream in self.streams]))

    def rand(self, *shape):
        """Uniform [0, 1) float32 CPU tensor of shape (E, ...)."""
        return self._draw(lambda stream, s: stream.random(s, dtype=np.float32), shape)

    def randn(self, *shape):
        """Standard normal float32 CPU tensor of shape (E, ...)."""
        return self._draw(lambda stream, s: stream.standard_normal(s, dtype=np.float32), shape)

    def randint(self, high, *shape):
        """Integers in [0, high), int64 CPU tensor of shape (E, ...)."""
        return self._draw(lambda stream, s: stream.integers(high, size=s), shape)
