"""metagmvae/copies.py: which items are near-copies of one another, found without comparing all pairs."""
import numpy as np
import pytest
from PIL import Image

from metagmvae import copies
from metagmvae.copies import (CENTRE_SAMPLE, NEAR_COPY_DISTANCE, NEIGHBOUR_FRACTION, NEIGHBOUR_RANK, NEIGHBOUR_SAMPLE,
                               near_copies)
from metagmvae.runfiles import check_classes_hold_their_own_items


def all_near_pairs(rows):
    """The pairs of rows (i < j, all distinct) within NEAR_COPY_DISTANCE of their distance from the median row
    (at least the median distance) and within NEIGHBOUR_FRACTION of the median distance from a row to its
    NEIGHBOUR_RANK-th nearest: every pair compared."""
    centered = rows.astype(np.float64) - np.median(rows[::max(1, len(rows) // CENTRE_SAMPLE)], axis=0)
    norms = np.linalg.norm(centered, axis=1)
    norms = np.maximum(norms, np.median(norms))
    distances = np.linalg.norm(centered[:, None] - centered[None], axis=-1)
    picked = np.arange(0, len(rows), max(1, len(rows) // NEIGHBOUR_SAMPLE))[:NEIGHBOUR_SAMPLE]
    neighbour = np.median(np.sort(distances[picked], axis=1)[:, NEIGHBOUR_RANK])  # column 0: the row itself
    close = distances <= np.minimum(NEAR_COPY_DISTANCE * np.maximum(norms[:, None], norms[None]),
                                    NEIGHBOUR_FRACTION * neighbour)
    i, j = np.nonzero(np.triu(close, 1))
    return set(zip(i.tolist(), j.tolist()))


def test_finds_every_near_copy_that_comparing_all_pairs_finds():
    """Dense non-negative features (a common offset, as SimCLR's), 300 of them copied with noise of 1 to 9 %
    of their distance from the median item, 100 more with 11 to 30 % (not copies)."""
    rng = np.random.default_rng(0)
    items = np.maximum(rng.normal(1.0, 0.3, (1600, 64)), 0)
    originals = rng.choice(len(items), 400, replace=False)
    spread = np.linalg.norm(items[originals] - np.median(items, axis=0), axis=1, keepdims=True)
    noise = rng.normal(size=(400, 64))
    fraction = np.concatenate([rng.uniform(0.01, 0.09, 300), rng.uniform(0.11, 0.3, 100)])[:, None]
    rows = np.concatenate([items, items[originals] + noise / np.linalg.norm(noise, axis=1, keepdims=True)
                           * fraction * spread]).astype(np.float32)
    ids, pairs = near_copies(rows)
    assert len(np.unique(ids)) == len(rows)  # no two rows equal byte for byte
    expected = all_near_pairs(rows)
    assert {tuple(pair) for pair in pairs.tolist()} == {tuple(sorted((ids[i], ids[j]))) for i, j in expected}
    assert {(int(originals[k]), len(items) + k) for k in range(300)} <= expected  # the planted copies
    assert len(expected) < 330  # and few others


def test_equal_items_share_an_id_and_copies_are_not_chained():
    """a, b = a + 6 % and c = b + 6 % of their distance from the median: a and c are 12 % apart, no copies."""
    rng = np.random.default_rng(1)
    rows = rng.random((200, 32)).astype(np.float32)
    step = rng.normal(size=32)
    step *= 0.06 * np.linalg.norm(rows[0] - np.median(rows, axis=0)) / np.linalg.norm(step)
    rows = np.concatenate([rows, rows[:1] + step, rows[:1] + 2 * step, rows[5:6]]).astype(np.float32)
    ids, pairs = near_copies(rows)
    assert ids[202] == ids[5] and len(np.unique(ids)) == 202
    a, b, c = ids[[0, 200, 201]]
    assert {tuple(p) for p in pairs.tolist()} == {tuple(sorted((a, b))), tuple(sorted((b, c)))}


def test_features_of_few_values_lie_close_to_others_without_being_copies():
    """Items of two values on a grid, as the authors' feature files read in tests (class, row): each lies
    within a tenth of its distance from the median of several others, but is a copy of none; one planted copy
    (a hundredth of a step away) is found."""
    grid = np.stack(np.meshgrid(np.arange(36), np.arange(600), indexing="ij"), -1).astype(np.float32)  # (36, 600, 2)
    splits = {"val_features.npy": grid[:16], "test_features.npy": grid[16:]}
    _, pairs = near_copies(grid.reshape(-1, 2))
    assert len(pairs) == 0
    check_classes_hold_their_own_items(splits, "D")
    ids, pairs = near_copies(np.concatenate([grid.reshape(-1, 2), [[3, 7.01]]]).astype(np.float32))
    assert pairs.tolist() == [sorted([ids[3 * 600 + 7], ids[-1]])]


def same_partition(a, b):
    return len(np.unique(a)) == len(np.unique(b)) == len(np.unique(np.stack([a, b], 1), axis=0))


def test_rows_equal_byte_for_byte_share_an_id_also_where_their_hashes_collide(monkeypatch):
    rows = np.random.default_rng(2).integers(0, 3, (300, 5)).astype(np.float32)  # many rows repeated
    rows[0, 0] = -0.0  # equal to 0.0, not byte for byte
    _, by_bytes = np.unique(rows.view(np.dtype((np.void, 20))).ravel(), return_inverse=True)
    assert len(np.unique(by_bytes)) < 250
    assert same_partition(near_copies(rows)[0], by_bytes.ravel())
    monkeypatch.setattr(copies, "_row_hashes", lambda words: np.zeros(len(words), np.uint64))  # all collide
    assert same_partition(near_copies(rows)[0], by_bytes.ravel())


def blob_drawings(rng, n):
    """(n, 28, 28) float32 drawings, paper 0: five squares of ink of 3 x 3 pixels each, inside rows and
    columns 6 to 21 (a move of up to 3 pixels keeps all ink in the image)."""
    drawings = np.zeros((n, 28, 28), np.float32)
    for i in range(n):
        for y, x in rng.integers(6, 20, (5, 2)):
            drawings[i, y:y + 3, x:x + 3] = rng.uniform(0.3, 1)
    return drawings


def test_a_drawing_moved_by_whole_pixels_is_the_same_drawing():
    """30 of 100 drawings copied moved by up to 3 pixels (paper let in): one id each with its original when the
    rows are drawings, unrelated items when they are not (features, colour images)."""
    rng = np.random.default_rng(3)
    drawings = blob_drawings(rng, 100)
    moves = [move for move in rng.integers(-3, 4, (40, 2)) if move.any()][:30]
    moved = np.stack([np.roll(drawings[i], move, axis=(0, 1)) for i, move in enumerate(moves)])  # no ink wraps
    rows = np.concatenate([drawings, moved]).reshape(-1, 28 * 28)
    ids, pairs = near_copies(rows, copies.drawing_size((28, 28, 1)))
    assert (ids[100:] == ids[:30]).all() and len(np.unique(ids)) == 100 and len(pairs) == 0
    ids, pairs = near_copies(rows, copies.drawing_size((28 * 28,)))
    assert len(np.unique(ids)) == 130 and len(pairs) == 0
    assert copies.drawing_size((1, 28, 28)) == (28, 28) and copies.drawing_size((3, 84, 84)) is None


@pytest.mark.parametrize("up, filter", [(2, Image.BICUBIC), (4, Image.BILINEAR), (10, Image.NEAREST)])
def test_a_drawing_enlarged_and_shrunk_back_is_a_near_copy_of_it(up, filter):
    """50 of 200 drawings enlarged `up` times and shrunk back with Lanczos, as an own image is read: as given
    few are near-copies of their originals, centred and blurred nine in ten at least; no other pair is."""
    rng = np.random.default_rng(5)
    drawings = blob_drawings(rng, 200)
    resized = np.stack([np.asarray(Image.fromarray(d).resize((28 * up, 28 * up), filter)
                                   .resize((28, 28), Image.LANCZOS)) for d in drawings[:50]]).clip(0, 1)
    rows = np.concatenate([drawings, resized]).reshape(-1, 28 * 28).astype(np.float32)
    for shape, least, most in ((None, 0, 10), ((28, 28), 45, 50)):
        ids, pairs = near_copies(rows, shape)
        copies = {tuple(sorted((ids[i], ids[200 + i]))) for i in range(50)}
        found = {tuple(p) for p in pairs.tolist()}
        assert least <= len(copies & found) <= most and found <= copies


def test_a_drawing_and_its_copy_one_pixel_on_move_alike_also_when_centred_between_pixels():
    """One dot at each of 10 x 10 places: its centre of mass, a whole pixel, lies half a pixel from the image's
    centre (13.5), where rounding half to even would move a dot at 13 and one at 14 apart."""
    dots = np.zeros((100, 28, 28), np.float32)
    dots[np.arange(100), 8 + np.arange(100) // 10, 8 + np.arange(100) % 10] = 1
    centred = copies.centred_drawings(dots)
    assert (centred == centred[:1]).all() and centred[0, 14, 14] == 1


def test_near_copies_as_given_still_count_for_drawings():
    """A copy with noise of +-0.02 moves its centre of mass a little, and may be centred a pixel away from its
    original: it is a near-copy all the same, as given."""
    rng = np.random.default_rng(4)
    drawings = blob_drawings(rng, 100)
    noisy = np.clip(drawings[:30] + rng.uniform(-0.02, 0.02, (30, 28, 28)), 0, 1).astype(np.float32)
    rows = np.concatenate([drawings, noisy]).reshape(-1, 28 * 28)
    ids, pairs = near_copies(rows, (28, 28))
    assert {tuple(p) for p in pairs.tolist()} >= {tuple(sorted((ids[i], ids[100 + i]))) for i in range(30)}


def test_drawing_views_relate_few_drawings_of_one_real_class_and_no_real_class_is_refused(real_omniglot_sample):
    """Scaled, centred and blurred, two drawings of a simple character by two people can be near-copies: rare on
    the real sample (at most one class in a hundred), and no class comes near the check's half."""
    splits = {name: np.load(real_omniglot_sample / name) for name in ("train.npy", "val.npy", "test.npy")}
    rows = np.concatenate([s.reshape(-1, 28 * 28) for s in splits.values()])
    classes = np.repeat(np.arange(len(rows) // 20), 20)
    ids, pairs = near_copies(rows, (28, 28))
    holder = np.unique(ids, return_index=True)[1]
    assert len(holder) == len(rows)
    first, second = classes[holder[pairs[:, 0]]], classes[holder[pairs[:, 1]]]
    assert len(np.unique(first[first == second])) <= len(rows) // 20 // 100
    check_classes_hold_their_own_items(splits, "D")
