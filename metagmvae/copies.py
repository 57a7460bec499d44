"""Which items of a data set are copies of one another: equal byte for byte, or near-copies (an item with
noise added, rescaled, re-encoded).  Two items are near-copies when their distance is below
- NEAR_COPY_DISTANCE of their length: an item's distance from the centre, the median item (value by value,
  over up to CENTRE_SAMPLE items), or the median length where that is larger (an item that is nearly the
  median one is still told from its copy); the larger length of the two; and
- NEIGHBOUR_FRACTION of the median distance from an item to its NEIGHBOUR_RANK-th nearest other item.
Measured from the centre, the first bound needs no scale: it holds for drawings in [0, 1] (whose median item
is blank) and for dense non-negative features, whose common offset would make every pair look close relative
to their norms; one outlier value cannot move a median as it would move a mean.  The second keeps items of a
feature or two, which lie close to many others, from counting as copies; in many dimensions that distance is
most of an item's length and binds nothing.

On the real Omniglot sample (19,360 drawings as the model reads them) the closest drawings of two classes
are 0.145 of their length apart and of one class 0.317; a copy with uniform noise of +-0.02 is 0.046 from
its original (median over the drawings; at most 0.1), one scaled by 1.001 is 0.001 from it
(docs/reproducibility.md).

All pairs cannot be compared (130,000 drawings in full Omniglot): candidate pairs come from locality-
sensitive hashing, and only they are compared exactly.  Each item u, centred and divided by its length, is
projected on random directions g; g.u of two items differs by a normal value of standard deviation
|u1 - u2|, so near-copies fall in the same cell of width CELL_WIDTH far more often than other items.  A
table keys each item by its cells on CELLS_PER_KEY directions; pairs that share a key in any of TABLES
tables are candidates.  A pair with |u1 - u2| = 0.1 (a near-copy at the limit, items of equal length) shares
no key with probability 2e-4; 0.2 (the limit's worst geometry) 0.06.  The checks count copies per class,
so a class copied in part is found all the same.  Within one key, each item is paired with its
BUCKET_WINDOW next items along one more random direction, which bounds the work when many items share a key.
The directions are drawn from a fixed seed: the same data give the same answer.
"""
import numpy as np

NEAR_COPY_DISTANCE = 0.1
NEIGHBOUR_FRACTION = 0.15
NEIGHBOUR_RANK = 5
COPIES = (f"equal, or closer than {NEAR_COPY_DISTANCE:g} of their distance from the median item and than "
          f"{NEIGHBOUR_FRACTION:g} of the median distance from an item to its {NEIGHBOUR_RANK}th nearest")
CENTRE_SAMPLE = 4096
NEIGHBOUR_SAMPLE = 128
CELL_WIDTH = 1.5
CELLS_PER_KEY = 16
TABLES = 16
BUCKET_WINDOW = 16
PAIR_CHUNK = 8192  # pairs compared at a time


def near_copies(rows):
    """rows: (n, P) float32 items -> (ids, pairs): ids (n,) int64, one number per distinct item (equal for
    items equal byte for byte); pairs (k, 2) int64, the pairs (a, b), a < b, of those numbers whose items
    are near-copies.  Copies are related directly, not through chains: in few dimensions many items have
    a close neighbour, and a chain of them would join every item to every other."""
    _, first, ids = np.unique(rows.view(np.dtype((np.void, rows.shape[1] * rows.itemsize))).ravel(),
                              return_index=True, return_inverse=True)
    distinct = rows[first]  # (m, P)
    centered = distinct - np.median(distinct[::max(1, len(distinct) // CENTRE_SAMPLE)], axis=0)
    norms = np.sqrt(np.einsum("ij,ij->i", centered, centered, dtype=np.float64))  # (m,)
    lengths = np.maximum(norms, np.median(norms))  # no item nearer the centre than the median one
    pairs = _candidate_pairs(centered, lengths)
    limit = NEIGHBOUR_FRACTION * _neighbour_distance(centered, norms)
    close = [np.empty((0, 2), np.int64)]
    for chunk in np.array_split(pairs, max(1, -(-len(pairs) // PAIR_CHUNK))):
        distances = np.sqrt(np.square(centered[chunk[:, 0]] - centered[chunk[:, 1]], dtype=np.float64).sum(1))
        scales = np.minimum(NEAR_COPY_DISTANCE * np.maximum(lengths[chunk[:, 0]], lengths[chunk[:, 1]]), limit)
        close.append(chunk[distances <= scales])
    return ids.ravel(), np.concatenate(close)


def _neighbour_distance(centered, norms):
    """The median distance from an item to its NEIGHBOUR_RANK-th nearest other item (or farthest, where
    fewer), over NEIGHBOUR_SAMPLE evenly spaced items of the distinct centred items (m, P) of norms (m,)."""
    if len(centered) < 2:
        return 0.0
    picked = np.arange(0, len(centered), max(1, len(centered) // NEIGHBOUR_SAMPLE))[:NEIGHBOUR_SAMPLE]
    squared = (norms[picked, None] ** 2 + norms[None] ** 2
               - 2 * (centered[picked] @ centered.T).astype(np.float64))  # (picked, m)
    squared[np.arange(len(picked)), picked] = np.inf
    rank = min(NEIGHBOUR_RANK, len(centered) - 1) - 1
    return float(np.median(np.sqrt(np.maximum(np.partition(squared, rank, axis=1)[:, rank], 0))))


def _candidate_pairs(centered, lengths):
    """(pairs, 2) int64 index pairs (i < j, each once) of the centred items (m, P), divided by their
    lengths (m,), that share a key in some table."""
    if len(centered) < 2:
        return np.empty((0, 2), np.int64)
    rng = np.random.default_rng(0)
    directions = rng.standard_normal((centered.shape[1], TABLES * CELLS_PER_KEY + 1), dtype=np.float32)
    projections = centered @ directions / np.maximum(lengths, np.finfo(np.float32).tiny)[:, None].astype(np.float32)
    offsets = rng.random(TABLES * CELLS_PER_KEY, dtype=np.float32)
    cells = np.floor(projections[:, :-1] / CELL_WIDTH + offsets).astype(np.int64)
    multipliers = rng.integers(1, 2 ** 62, CELLS_PER_KEY) | 1  # a key hashes its cells (int64 wraps)
    keys = (cells.reshape(len(centered), TABLES, CELLS_PER_KEY) * multipliers).sum(2)  # (m, TABLES)
    found = [np.empty((0, 2), np.int64)]
    for table in range(TABLES):
        order = np.lexsort((projections[:, -1], keys[:, table]))
        key = keys[order, table]
        for step in range(1, BUCKET_WINDOW + 1):
            same = np.flatnonzero(key[:-step] == key[step:])
            found.append(np.stack([order[same], order[same + step]], 1))
    return np.unique(np.sort(np.concatenate(found), 1), axis=0)
