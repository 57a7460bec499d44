"""Random draws keyed by what they are for, so results do not depend on batching or on the number of
processes: every episode has its own stream, seeded by (seed, purpose, ..., global episode index).

Each stream is a CPU generator, so CPU and GPU runs draw the same numbers.
"""
import numpy as np
import torch

# The element after the seed in every key: what the draws are for.
TRAINING = 0           # (seed, TRAINING, step, episode): an unlabeled set, its MC noise and its EM start
EVAL_EPISODES = 1      # (seed, EVAL_EPISODES, way, shot): the classes and items of fixed evaluation episodes
EVAL_NOISE = 2         # (seed, EVAL_NOISE, way, shot, episode): the MC noise of one evaluation episode
VALIDATION_SETS = 3    # (seed, VALIDATION_SETS, set): the items of one unlabeled validation set (val-elbo)
VALIDATION_NOISE = 4   # (seed, VALIDATION_NOISE, set): the MC noise and EM start of one validation set


def keyed_generator(*key):
    """A CPU generator seeded by a tuple of non-negative integers (hashed by numpy's SeedSequence)."""
    seed = int(np.random.SeedSequence(list(key)).generate_state(1, np.uint64)[0]) >> 1  # 63 bits
    return torch.Generator().manual_seed(seed)


class EpisodeRandom:
    """One random stream per episode.  Draws have shape (E, ...): row e comes from episode e's stream,
    so an episode gets the same numbers whichever episodes share its batch or process."""

    def __init__(self, keys):
        self.generators = [keyed_generator(*key) for key in keys]

    @classmethod
    def for_episodes(cls, episodes, *prefix):
        """Streams keyed (*prefix, e) for each global episode index e in `episodes`."""
        return cls([(*prefix, e) for e in episodes])

    def __len__(self):
        return len(self.generators)

    def _draw(self, draw, shape):
        if shape[0] != len(self.generators):
            raise ValueError(f"{shape[0]} rows asked of {len(self.generators)} episode streams")
        return torch.stack([draw(shape[1:], g) for g in self.generators])

    def rand(self, *shape):
        """Uniform [0, 1) float32: shape (E, ...)."""
        return self._draw(lambda s, g: torch.rand(s, generator=g), shape)

    def randn(self, *shape):
        """Standard normal float32: shape (E, ...)."""
        return self._draw(lambda s, g: torch.randn(s, generator=g), shape)

    def randint(self, high, *shape):
        """Integers in [0, high): shape (E, ...)."""
        return self._draw(lambda s, g: torch.randint(high, s, generator=g), shape)
