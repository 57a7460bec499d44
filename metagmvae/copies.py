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
Candidates whose projections put them twice a near-copy's largest distance apart are dropped; the others
are compared in full.  Items equal byte for byte are found first, by a hash of their words.  The
directions are drawn from a fixed seed: the same data give the same answer.

Drawings (single-channel images, paper 0) are also compared as `drawing_views`: each scaled to a mean of 1,
shifted by whole pixels so that the centre of mass of its ink lies within half a pixel of the image centre,
then blurred with a Gaussian of BLUR_SIGMA pixels; two drawings are copies when they are copies so (a drawing
with lighter or darker ink, moved by a few pixels, enlarged or shrunk and read back at its size), or as they
are.  On the real Omniglot sample (`benchmarks/copy_check.py --omniglot`) a resampled copy (nearest, Lanczos,
bicubic, bilinear) lies 0.03 to 0.07 from its original so (median; 0.08 at the 90th percentile), where it
lay 0.07 to 0.19 as given; 8 pairs of real drawings are copies (4 as given), 4 of them within a class, at
most 2 drawings of any class: far from the half of a class that is refused.  Not copies to this check:
gamma-changed, binarised or thickened strokes, and noise of more than a few hundredths.
"""
import numpy as np

NEAR_COPY_DISTANCE = 0.1
NEIGHBOUR_FRACTION = 0.15
NEIGHBOUR_RANK = 5
COPIES = (f"equal, or closer than {NEAR_COPY_DISTANCE:g} of their distance from the median item and than "
          f"{NEIGHBOUR_FRACTION:g} of the median distance from an item to its {NEIGHBOUR_RANK}th nearest; "
          "drawings also once scaled, centred and blurred")
BLUR_SIGMA = 1.0  # pixels: the Gaussian that drawings are compared through besides as given
BLUR_REACH = 3  # pixels: the Gaussian's support, each side
CENTRE_SAMPLE = 4096
NEIGHBOUR_SAMPLE = 128
CELL_WIDTH = 1.5
CELLS_PER_KEY = 16
TABLES = 16
BUCKET_WINDOW = 16
PAIR_CHUNK = 8192  # pairs compared at a time
ROW_CHUNK = 4096  # rows hashed and compared at a time


def near_copies(rows, drawing_shape=None):
    """rows: (n, P) float32 items -> (ids, pairs): ids (n,) int64, one number per distinct item (equal for
    items equal byte for byte); pairs (k, 2) int64, the pairs (a, b), a < b, of those numbers whose items
    are near-copies.  Copies are related directly, not through chains: in few dimensions many items have
    a close neighbour, and a chain of them would join every item to every other.

    drawing_shape: (H, W) where each row is a drawing of H x W pixels (`drawing_size` tells): then ids are
    equal for drawings equal once scaled, centred and blurred (`drawing_views`: one drawing moved by whole
    pixels, or with its ink scaled), and pairs holds the near-copies so and as given."""
    if drawing_shape is None:
        return _near_copies(rows)
    given_ids, as_given = _near_copies(rows)
    ids, pairs = _near_copies(drawing_views(rows.reshape(len(rows), *drawing_shape)).reshape(rows.shape))
    holder = np.unique(given_ids, return_index=True)[1]  # a row of each id as given
    given = np.sort(ids[holder[as_given]], 1)  # (k, 2): the pairs as given, in the ids of the views
    return ids, np.unique(np.concatenate([pairs, given[given[:, 0] != given[:, 1]]]), axis=0)


def drawing_size(item_shape):
    """(H, W) of items of item_shape that are single-channel images (H, W), (1, H, W) or (H, W, 1); None for
    others (features, colour images)."""
    sides = [side for side in item_shape if side != 1]
    return tuple(sides) if len(sides) == 2 and len(item_shape) <= 3 else None


def drawing_views(drawings):
    """drawings (n, H, W), paper 0 -> (n, H, W) float32: each scaled to a mean of 1 over its pixels (lighter
    or darker ink alike), centred (centred_drawings), then blurred with a Gaussian of BLUR_SIGMA pixels (cut
    at BLUR_REACH, paper 0 beyond the edges), as matmuls with the Gaussian's band matrices; ROW_CHUNK drawings
    at a time (no full-size temporaries)."""
    n, H, W = drawings.shape
    rows, cols = _gaussian_band(H), _gaussian_band(W).T
    views = np.empty((n, H, W), np.float32)
    for start in range(0, n, ROW_CHUNK):
        chunk = drawings[start:start + ROW_CHUNK]
        mean = chunk.mean(axis=(1, 2), dtype=np.float64, keepdims=True)
        views[start:start + ROW_CHUNK] = rows @ centred_drawings((chunk / np.where(mean > 0, mean, 1)).astype(
            np.float32)) @ cols
    return views


def _gaussian_band(n):
    """(n, n) float32: row i the Gaussian weights of pixels i - BLUR_REACH .. i + BLUR_REACH."""
    offsets = np.arange(n)[None] - np.arange(n)[:, None]
    weights = np.exp(-0.5 * (offsets / BLUR_SIGMA) ** 2) * (np.abs(offsets) <= BLUR_REACH)
    return (weights / np.exp(-0.5 * (np.arange(-BLUR_REACH, BLUR_REACH + 1) / BLUR_SIGMA) ** 2).sum()).astype(
        np.float32)


def centred_drawings(drawings):
    """drawings (n, H, W), paper 0 -> (n, H, W) float32: each moved by whole pixels so that the centre of mass
    of its ink lies within half a pixel of the image centre (paper 0 let in at the edges; a blank drawing
    stays).  Copies of a drawing moved by whole pixels become equal unless the move took ink out of the image."""
    n, H, W = drawings.shape
    centred = np.empty((n, H, W), np.float32)
    for start in range(0, n, ROW_CHUNK):
        chunk = drawings[start:start + ROW_CHUNK]
        mass = chunk.sum((1, 2), dtype=np.float64)  # (c,)
        weight = np.where(mass > 0, mass, 1)
        rows = chunk.sum(2, dtype=np.float64) @ np.arange(H) / weight  # (c,): centre of mass, row
        cols = chunk.sum(1, dtype=np.float64) @ np.arange(W) / weight
        # floor(x + 1/2), not round half to even: a drawing and its copy one pixel on move by the same rule
        down = np.where(mass > 0, np.floor((H - 1) / 2 - rows + 0.5), 0).astype(np.int64)  # (c,)
        right = np.where(mass > 0, np.floor((W - 1) / 2 - cols + 0.5), 0).astype(np.int64)
        source_rows = np.arange(H) - down[:, None]  # (c, H): the row each row of the output comes from
        source_cols = np.arange(W) - right[:, None]  # (c, W)
        inside = (((source_rows >= 0) & (source_rows < H))[:, :, None]
                  & ((source_cols >= 0) & (source_cols < W))[:, None])
        moved = chunk[np.arange(len(chunk))[:, None, None], source_rows.clip(0, H - 1)[:, :, None],
                      source_cols.clip(0, W - 1)[:, None]]
        centred[start:start + ROW_CHUNK] = np.where(inside, moved, 0)
    return centred


def _near_copies(rows):
    """near_copies of items as given."""
    first, ids = _distinct_rows(rows)  # the distinct items are rows[first]
    if len(first) < 2:
        return ids, np.empty((0, 2), np.int64)
    centre = np.median(rows[first[::max(1, len(first) // CENTRE_SAMPLE)]], axis=0)  # (P,)
    picked = np.arange(0, len(first), max(1, len(first) // NEIGHBOUR_SAMPLE))[:NEIGHBOUR_SAMPLE]  # (S,)
    rng = np.random.default_rng(0)
    dims = TABLES * CELLS_PER_KEY + 1  # D projections
    directions = rng.standard_normal((rows.shape[1], dims), dtype=np.float32)  # (P, D)
    sample = rows[first[picked]] - centre  # (S, P)
    norms, products = _centred_products(rows, first, centre, np.concatenate([directions, sample.T], 1))
    lengths = np.maximum(norms, np.median(norms))  # no item nearer the centre than the median one
    projections = products[:, :dims] / lengths[:, None].astype(np.float32)  # g.u: (m, D)
    pairs = _candidate_pairs(projections, rng)
    limit = NEIGHBOUR_FRACTION * _neighbour_distance(norms, picked, products[:, dims:])
    close = [np.empty((0, 2), np.int64)]
    for chunk in np.array_split(pairs, max(1, -(-len(pairs) // PAIR_CHUNK))):
        # |u1 - u2|^2 is the mean square of the projections' differences (+-9 %); a near-copy's is at most
        # (2 NEAR_COPY_DISTANCE)^2: pairs beyond 4 times that are not compared in full
        estimates = np.square(projections[chunk[:, 0]] - projections[chunk[:, 1]]).mean(1)
        chunk = chunk[estimates <= 4 * (2 * NEAR_COPY_DISTANCE) ** 2]
        differences = rows[first[chunk[:, 0]]] - rows[first[chunk[:, 1]]]  # centring cancels
        distances = np.sqrt(np.square(differences, dtype=np.float64).sum(1))
        scales = np.minimum(NEAR_COPY_DISTANCE * np.maximum(lengths[chunk[:, 0]], lengths[chunk[:, 1]]), limit)
        close.append(chunk[distances <= scales])
    return ids, np.concatenate(close)


def _centred_products(rows, first, centre, weights):
    """The distinct items rows[first] (m of them) less the centre (P,): their norms (m,) float64 and
    products with weights (P, K) -> (m, K) float32, ROW_CHUNK items at a time (no centred copy of all the
    items, whose fresh pages cost more than the products)."""
    norms = np.empty(len(first))
    products = np.empty((len(first), weights.shape[1]), np.float32)
    for start in range(0, len(first), ROW_CHUNK):
        block = rows[first[start:start + ROW_CHUNK]] - centre
        norms[start:start + ROW_CHUNK] = np.sqrt(np.einsum("ij,ij->i", block, block, dtype=np.float64))
        products[start:start + ROW_CHUNK] = block @ weights
    return norms, products


def _distinct_rows(rows):
    """rows (n, P) float32 -> (first, ids): first (m,) the index of each distinct row's first occurrence,
    ids (n,) int64 the distinct row of each row; rows share one when they are equal byte for byte.  Rows
    are grouped by a 64-bit hash of their words (an eighth of the time of sorting 130,000 rows' bytes); where
    two rows of one group differ (a hash collision, about n^2 / 2^65 likely) their bytes are sorted."""
    words = rows.view(np.uint32)
    _, first, ids = np.unique(_row_hashes(words), return_index=True, return_inverse=True)
    chunks = range(0, len(words), ROW_CHUNK)
    if all(np.array_equal(words[i:i + ROW_CHUNK], words[first[ids[i:i + ROW_CHUNK]]]) for i in chunks):
        return first, ids.ravel()
    _, first, ids = np.unique(words.view(np.dtype((np.void, words.shape[1] * 4))).ravel(), return_index=True,
                              return_inverse=True)
    return first, ids.ravel()


def _row_hashes(words):
    """(n, P) uint32 -> (n,) uint64: the sum of the words times odd random multipliers, modulo 2^64."""
    multipliers = np.random.default_rng(0).integers(1, 2 ** 63, words.shape[1], dtype=np.uint64) | np.uint64(1)
    return np.concatenate([np.empty(0, np.uint64), *((words[i:i + ROW_CHUNK] * multipliers).sum(1, dtype=np.uint64)
                                                     for i in range(0, len(words), ROW_CHUNK))])


def _neighbour_distance(norms, picked, products):
    """The median distance from an item to its NEIGHBOUR_RANK-th nearest other item (or farthest, where
    fewer), over the items `picked` (S,) of the m centred items of norms (m,), from their products (m, S)."""
    squared = norms[picked, None] ** 2 + norms[None] ** 2 - 2 * products.T.astype(np.float64)  # (S, m)
    squared[np.arange(len(picked)), picked] = np.inf
    rank = min(NEIGHBOUR_RANK, len(norms) - 1) - 1
    return float(np.median(np.sqrt(np.maximum(np.partition(squared, rank, axis=1)[:, rank], 0))))


def _candidate_pairs(projections, rng):
    """(pairs, 2) int64 index pairs (i < j, each once) of the items whose projections (m, TABLES *
    CELLS_PER_KEY + 1) on random directions (the last orders the items of one key) share a key in some
    table; rng draws the cells' offsets and the keys' hash."""
    offsets = rng.random(TABLES * CELLS_PER_KEY, dtype=np.float32)
    multipliers = rng.integers(1, 2 ** 62, CELLS_PER_KEY) | 1  # a key hashes its cells (int64 wraps)
    found = [np.empty((0, 2), np.int64)]
    for table in range(TABLES):
        cells = slice(table * CELLS_PER_KEY, (table + 1) * CELLS_PER_KEY)
        keys = (np.floor(projections[:, cells] / CELL_WIDTH + offsets[cells]).astype(np.int64) * multipliers).sum(1)
        order = np.lexsort((projections[:, -1], keys))
        key = keys[order]
        for step in range(1, BUCKET_WINDOW + 1):
            same = np.flatnonzero(key[:-step] == key[step:])
            found.append(np.stack([order[same], order[same + step]], 1))
    return np.unique(np.sort(np.concatenate(found), 1), axis=0)
