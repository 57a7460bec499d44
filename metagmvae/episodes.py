"""Episode sampling.

Labeled test episodes come from arrays shaped (C classes, I instances, ...): N-way, `shot` support
and `query` query items per class.  Unlabeled training sets are drawn with replacement from all
training images pooled, so meta-training never reads a label.
"""
from dataclasses import dataclass

import torch


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
