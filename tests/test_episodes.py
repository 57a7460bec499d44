"""Evaluation episodes and the keys of the random streams: validation and test draw independently, and no
two purposes share a stream."""
import torch

from metagmvae.episodes import FIGURES, EpisodeRandom, make_eval_set
from metagmvae.training import UnlabeledSets, draw_training_sets


def split_array(classes=20, items=20):
    return torch.arange(classes * items, dtype=torch.float32).view(classes, items, 1)


def test_validation_and_test_episodes_of_the_same_index_draw_differently():
    data = split_array()
    val, test = (make_eval_set(data, 5, 1, 5, 40, 0, split) for split in ("val", "test"))
    same_classes = (val.classes.sort(1).values == test.classes.sort(1).values).all(1)
    assert not same_classes.any()
    (_, val_noise), = val.batches(40)
    (_, test_noise), = test.batches(40)
    a, b = val_noise.randn(40, 3), test_noise.randn(40, 3)
    assert not torch.isclose(a, b).all(1).any()
    # the same split and seed give the same episodes again
    again = make_eval_set(data, 5, 1, 5, 40, 0, "val")
    assert torch.equal(again.classes, val.classes) and torch.equal(again.instances, val.instances)


def test_no_two_purposes_share_a_stream():
    """SeedSequence ignores trailing zeros: keys (seed, p) and (seed, p, 0, 0) give one stream.  The first
    draws of every stream the code builds for seed 0, step 0 and episode 0 must all differ."""
    data = split_array()  # item values are their indices in the pooled array
    x, _ = draw_training_sets(data.flatten(0, 1), 0, 1, 4, 0)
    draws = {
        "training": x.view(1, 4).long(),
        "validation sets": UnlabeledSets.draw(data, 1, 4, 0).sets,
        "figures": EpisodeRandom([(0, FIGURES)]).randint(400, 1, 4),
        "val noise": next(make_eval_set(data, 5, 1, 5, 1, 0, "val").batches(1))[1].randint(400, 1, 4),
        "test noise": next(make_eval_set(data, 5, 1, 5, 1, 0, "test").batches(1))[1].randint(400, 1, 4),
    }
    names = list(draws)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            assert not torch.equal(draws[a], draws[b]), (a, b)
