"""Figures of an Omniglot run, drawn with Pillow: reconstructions, the mixture EM fits to one training
episode, a labelled test episode and the learning curves.

Every function takes arrays or tensors and a place in an opened output folder (a FolderPath of
metagmvae/folders.py, such as `run.folder / "figures" / "curves.png"`), writes one PNG there and returns its
path.
Images are (N, 1, 28, 28) in [0, 1] with ink = 1, drawn dark on white and enlarged SCALE times (nearest).
A grid of R x C tiles is grid_size(R, C) pixels: GAP pixels around every tile, plus LABEL_HEIGHT below
each tile when the tiles carry text.
"""
import csv
import io
import math
import re
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from metagmvae.episodes import FIGURES, EpisodeRandom, EpisodeSampler, check_episodes_fit
from metagmvae.evaluation import seeded_eval
from metagmvae.gmm import fit_gmm_em, log_normal_identity
from metagmvae.folders import METRICS
from metagmvae.runfiles import UserError, check_finite_result, check_regular_file, metric_number

SCALE = 3
TILE = 28 * SCALE
GAP = 4  # between tiles; coloured frames are drawn inside it
FRAME = 2
LABEL_HEIGHT = 14
PANEL_WIDTH, PANEL_HEIGHT = 360, 260  # one learning-curve panel
MARGINS = (56, 26, 12, 30)  # left, top, right, bottom of a panel's plot area
TICKS = 5
WHITE, BLACK, GREY = (255, 255, 255), (0, 0, 0), (160, 160, 160)
RED, GREEN, BLUE = (220, 30, 30), (20, 160, 40), (40, 90, 220)
FIGURE_NAMES = ("reconstructions.png", "mixture.png", "test_episode.png", "curves.png")  # what write_run_figures draws
SERIES_COLOURS = [BLUE, RED, GREEN, (230, 140, 0), (140, 60, 200), (0, 160, 170)]


def grid_size(rows, cols, labelled=False):
    """(width, height) in pixels of a grid of rows x cols tiles."""
    cell_height = TILE + (LABEL_HEIGHT if labelled else 0)
    return GAP + cols * (TILE + GAP), GAP + rows * (cell_height + GAP)


def _cell(row, col, labelled=False, top=0):
    """(x, y) of the top-left pixel of a tile."""
    cell_height = TILE + (LABEL_HEIGHT if labelled else 0)
    return GAP + col * (TILE + GAP), top + GAP + row * (cell_height + GAP)


def _numpy(x):
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def image_tile(image):
    """(1, 28, 28) or (28, 28) in [0, 1], ink = 1 -> an RGB tile, ink dark on white."""
    pixels = np.clip(1.0 - _numpy(image).reshape(28, 28).astype(np.float32), 0, 1)
    tile = Image.fromarray(np.rint(pixels * 255).astype(np.uint8)).convert("RGB")
    return tile.resize((TILE, TILE), Image.NEAREST)


def _frame(draw, xy, colour):
    """A FRAME-wide border around the tile at xy, drawn in the gap around it."""
    x, y = xy
    draw.rectangle((x - FRAME, y - FRAME, x + TILE + FRAME - 1, y + TILE + FRAME - 1), outline=colour, width=FRAME)


def _save(image, place):
    with place.writing() as f:
        image.save(f, format="PNG")
    return place.path


@contextmanager
def _inference(model):
    """Evaluation mode (BatchNorm running statistics) and no gradients; the mode is restored after."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield next(model.parameters()).device
    finally:
        model.train(was_training)


def save_reconstructions(model, images, path, per_row=8):
    """Inputs beside their reconstructions sigmoid(decode(posterior mean)), per_row pairs per row.

    images: (N, 1, 28, 28), encoded as one set.  The PNG is grid_size(ceil(N / per_row), 2 min(N, per_row)).
    """
    with _inference(model) as device:
        mean, _ = model.posterior_params(torch.as_tensor(images, dtype=torch.float32, device=device)[None])
        recon = torch.sigmoid(model.decode(mean))[0]  # (N, 1, 28, 28)
    check_finite_result(recon, "reconstructions")
    N = len(recon)
    canvas = Image.new("RGB", grid_size(math.ceil(N / per_row), 2 * min(N, per_row)), WHITE)
    for i, pair in enumerate(zip(images, recon)):
        for j, image in enumerate(pair):
            canvas.paste(image_tile(image), _cell(i // per_row, 2 * (i % per_row) + j))
    return _save(canvas, path)


def save_episode_mixture(model, images, num_components, em_iters, path, max_items=12, seed=0):
    """The mixture EM fits to one training-like episode, one row per component (K <= M).

    images: (M, 1, 28, 28), encoded as one set; EM (fit_gmm_em, initialised from `seed`) runs on the M
    posterior means (1, M, D).  Row k: the decoded mean mu_k (blue frame), then the items whose largest
    responsibility is k, at most max_items.  The PNG is grid_size(K, 1 + min(M, max_items)).
    """
    with _inference(model) as device:
        mean, _ = model.posterior_params(torch.as_tensor(images, dtype=torch.float32, device=device)[None])
        centre = mean.mean(1, keepdim=True)  # EM on centred points, as the training prior
        log_pi, mu = fit_gmm_em(mean - centre, num_components, em_iters, rng=EpisodeRandom([(seed, FIGURES)]))
        assignment = (log_pi.unsqueeze(-1) + log_normal_identity(mean - centre, mu)).argmax(1)[0]  # (M,)
        component_means = torch.sigmoid(model.decode(mu + centre))[0]  # (K, 1, 28, 28)
    check_finite_result(component_means, "decoded mixture means")
    cols = 1 + min(len(images), max_items)
    canvas = Image.new("RGB", grid_size(num_components, cols), WHITE)
    draw = ImageDraw.Draw(canvas)
    for k in range(num_components):
        canvas.paste(image_tile(component_means[k]), _cell(k, 0))
        _frame(draw, _cell(k, 0), BLUE)
        members = torch.nonzero(assignment == k).flatten().tolist()[:max_items]
        for col, i in enumerate(members, start=1):
            canvas.paste(image_tile(images[i]), _cell(k, col))
    return _save(canvas, path)


def save_test_episode(support, y_support, query, y_query, predicted, path, per_row=10):
    """A labelled episode: one row of support images per class, then the queries, per_row to a row, each
    labelled "pred p true t" and framed green when right, red when wrong.

    support: (Ns, 1, 28, 28), y_support: (Ns,); query: (Nq, 1, 28, 28), y_query, predicted: (Nq,).
    The PNG stacks grid_size(classes, cols, True) over grid_size(ceil(Nq / per_row), cols, True), with
    cols = max(most support images of a class, min(Nq, per_row)).
    """
    y_support, y_query, predicted = (_numpy(y).astype(int).ravel() for y in (y_support, y_query, predicted))
    classes = np.unique(y_support)
    shots = max(int((y_support == c).sum()) for c in classes)
    cols = max(shots, min(len(query), per_row))
    width, support_height = grid_size(len(classes), cols, labelled=True)
    query_height = grid_size(math.ceil(len(query) / per_row), cols, labelled=True)[1]
    canvas = Image.new("RGB", (width, support_height + query_height), WHITE)
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    for row, c in enumerate(classes):
        for col, i in enumerate(np.flatnonzero(y_support == c)):
            x, y = _cell(row, col, labelled=True)
            canvas.paste(image_tile(support[i]), (x, y))
            draw.text((x, y + TILE + 1), f"class {c}", fill=BLACK, font=font)
    draw.line((0, support_height, width, support_height), fill=GREY, width=1)
    for i, (true, pred) in enumerate(zip(y_query, predicted)):
        x, y = _cell(i // per_row, i % per_row, labelled=True, top=support_height)
        colour = GREEN if pred == true else RED
        canvas.paste(image_tile(query[i]), (x, y))
        _frame(draw, (x, y), colour)
        draw.text((x, y + TILE + FRAME), f"pred {pred} true {true}", fill=colour, font=font)
    return _save(canvas, path)


ACCURACY_COLUMN = re.compile(r"val_\d+shot(_ci95)?")  # fractions in [0, 1]


def _metric_cell(text, column):
    """One cell of metrics.csv: None when empty (a column other rows have), else metric_number's float; an
    accuracy column's value must lie in [0, 1] (ValueError)."""
    if text == "":
        return None
    value = metric_number(text)
    if ACCURACY_COLUMN.fullmatch(column) and not 0 <= value <= 1:
        raise ValueError(f"{text} is not an accuracy in [0, 1]")
    return value


def read_metrics_table(metrics_csv, data=None):
    """Columns of a run's metrics.csv as {name: [float or None]}, checked before anything is drawn: a file
    that is not a regular text file, a cell that is not a finite float32 number (runfiles.metric_number), an
    accuracy outside [0, 1], or a `step` column that is missing or not increasing positive integers raises
    UserError naming the file (and the line and column).  data: the file's bytes, already read (a run's own,
    read through its folder); metrics_csv then only names it."""
    if data is None:
        check_regular_file(metrics_csv)
    try:
        with (open(metrics_csv, newline="", encoding="utf-8-sig") if data is None else
              io.StringIO(data.decode("utf-8-sig"), newline="")) as f:
            reader = csv.DictReader(f)
            columns = {name: [] for name in reader.fieldnames or []}
            for row in reader:
                for name, text in row.items():
                    if name is None or text is None:  # more cells than the header has, or fewer
                        raise UserError(f"{metrics_csv}:{reader.line_num}: not the {len(columns)} cells of the "
                                        "header")
                    try:
                        columns[name].append(_metric_cell(text, name))
                    except ValueError as e:
                        raise UserError(f"{metrics_csv}:{reader.line_num}: column {name!r} holds {text[:40]!r}, "
                                        f"not a metric of a run ({e})") from None
    except OSError as e:
        raise UserError(f"{metrics_csv}: cannot read ({e.strerror or e})") from None
    except (UnicodeDecodeError, csv.Error) as e:
        raise UserError(f"{metrics_csv}: not a metrics.csv table ({e})") from None
    steps = columns.get("step", [])
    if not steps:
        raise UserError(f"{metrics_csv}: no rows with a 'step' column")
    positive_integers = all(s is not None and s == int(s) and s >= 1 for s in steps)
    if not positive_integers or any(later <= earlier for earlier, later in zip(steps, steps[1:])):
        raise UserError(f"{metrics_csv}: the 'step' column is not increasing positive integers")
    return columns


def run_metrics(run):
    """The metrics.csv of the opened RunDir `run` as read_metrics_table's columns, read as the run wrote it
    through its folder (wherever the folder is now), or None if it is not the run's."""
    data = run.folder.read_owned(METRICS)
    return read_metrics_table(run.metrics, data) if data is not None else None


def _limits(values):
    """(low, high) of the values, padded 5% (or by 1 / 10% around a single value)."""
    values = [v for v in values if v is not None]
    if not values:
        return 0.0, 1.0
    low, high = min(values), max(values)
    pad = (high - low) * 0.05 if high > low else (abs(low) * 0.1 or 1.0)
    return low - pad, high + pad


def _tick_label(value):
    return f"{value / 1000:.3g}k" if abs(value) >= 1000 else f"{value:.3g}"


def _plot(draw, left, title, steps, series, font):
    """One panel at x = left: axes with TICKS ticks, one line with markers per series, a legend."""
    x0, y0 = left + MARGINS[0], MARGINS[1]
    x1, y1 = left + PANEL_WIDTH - MARGINS[2], PANEL_HEIGHT - MARGINS[3]
    (sx0, sx1), (vy0, vy1) = _limits(steps), _limits([v for ys in series.values() for v in ys])

    def to_pixel(step, value):
        return x0 + (step - sx0) / (sx1 - sx0) * (x1 - x0), y1 - (value - vy0) / (vy1 - vy0) * (y1 - y0)

    draw.rectangle((x0, y0, x1, y1), outline=BLACK)
    draw.text(((x0 + x1) / 2, 4), title, fill=BLACK, font=font, anchor="mt")
    for t in np.linspace(0, 1, TICKS):
        x, y = x0 + t * (x1 - x0), y1 - t * (y1 - y0)
        draw.line((x, y1, x, y1 + 4), fill=BLACK)
        draw.text((x, y1 + 6), _tick_label(sx0 + t * (sx1 - sx0)), fill=BLACK, font=font, anchor="mt")
        draw.line((x0 - 4, y, x0, y), fill=BLACK)
        draw.text((x0 - 6, y), _tick_label(vy0 + t * (vy1 - vy0)), fill=BLACK, font=font, anchor="rm")
    draw.text(((x0 + x1) / 2, PANEL_HEIGHT - 2), "step", fill=BLACK, font=font, anchor="mb")
    for n, (name, values) in enumerate(series.items()):
        colour = SERIES_COLOURS[n % len(SERIES_COLOURS)]
        points = [to_pixel(s, v) for s, v in zip(steps, values) if s is not None and v is not None]
        if len(points) > 1:
            draw.line(points, fill=colour, width=2)
        for x, y in points:
            draw.ellipse((x - 3, y - 3, x + 3, y + 3), fill=colour)
        ly = y0 + 6 + 14 * n
        draw.line((x1 - 70, ly, x1 - 56, ly), fill=colour, width=2)
        draw.text((x1 - 52, ly), name, fill=colour, font=font, anchor="lm")


def save_learning_curves(columns, path):
    """Three panels vs step from a run's metrics.csv columns (read_metrics_table): rec, kl, and validation
    accuracy (%) per shot (columns val_{shot}shot).  The PNG is (3 PANEL_WIDTH, PANEL_HEIGHT)."""
    shots = sorted((int(m.group(1)), name) for name in columns if (m := re.fullmatch(r"val_(\d+)shot", name)))
    accuracy = {f"{shot}-shot": [None if v is None else 100 * v for v in columns[name]] for shot, name in shots}
    panels = [("rec", {k: columns[k] for k in ("rec",) if k in columns}),
              ("kl", {k: columns[k] for k in ("kl",) if k in columns}),
              ("validation accuracy (%)", accuracy)]
    canvas = Image.new("RGB", (len(panels) * PANEL_WIDTH, PANEL_HEIGHT), WHITE)
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    for n, (title, series) in enumerate(panels):
        _plot(draw, n * PANEL_WIDTH, title, columns["step"], series, font)
    return _save(canvas, path)


MIXTURE_ITEMS = 60  # items of the mixture figure, unless --way asks for more
FIGURE_QUERIES = 3  # at most this many queries per class in the test-episode figure


def mixture_items(way, sample_size):
    """Items of the mixture figure: MIXTURE_ITEMS of an episode of sample_size, or one per component when
    --way asks for more."""
    return min(sample_size, max(MIXTURE_ITEMS, way))


def check_run_figures(data, way, eval_way, sample_size, query):
    """Refuse settings with which write_run_figures would fail: `way` components fitted to the items of the
    mixture figure, and an eval_way-way 1-shot episode of the validation split data["val"] (C, I, ...)."""
    items = mixture_items(way, sample_size)
    if way > items:
        raise UserError(f"--way {way} is more than the {items} items of the mixture figure (--sample-size "
                        f"{sample_size}): EM cannot fit more components than items")
    check_episodes_fit("val", data["val"], eval_way, min(query, FIGURE_QUERIES), [1], 1)


class DrawnFigures:
    """Places for figures, `figures / "mixture.png"` as in a folder, that keep each PNG in memory until
    write_all writes them into `folder` (an opened OutputFolder, or a FolderPath in one): a figure that cannot
    be drawn (a degenerate model, too little memory) leaves the figures already there as they were."""

    def __init__(self, folder):
        self.folder, self.pngs = folder, {}

    def __truediv__(self, name):
        return DrawnFigure(self, name)

    def write_all(self):
        for name, png in self.pngs.items():
            with (self.folder / name).writing() as f:
                f.write(png)


@dataclass
class DrawnFigure:
    figures: DrawnFigures
    name: str

    @property
    def path(self):
        return (self.figures.folder / self.name).path

    @contextmanager
    def writing(self):
        buffer = io.BytesIO()
        yield buffer
        self.figures.pngs[self.name] = buffer.getvalue()


def write_run_figures(model, data, folder, metrics, way, eval_way, sample_size, query, unsupervised_em_iters,
                      semisupervised_em_iters, mc_samples, seed):
    """All four figures of a run into `folder` (an opened OutputFolder, or a FolderPath in one), from fixed
    draws (seeded by `seed`) that leave the global RNG untouched, so a run with figures gives the same numbers
    as one without; none is written unless all are drawn (DrawnFigures).

    data: {"train": (C, I, 1, 28, 28), "val": ...}; metrics: read_metrics_table's columns, or None (no curves
    figure); the mixture figure fits `way` components to
    mixture_items(way, sample_size) training items, the test episode of the validation split is eval_way-way
    1-shot with at most FIGURE_QUERIES queries per class (check_run_figures checks they can be drawn).
    Returns the paths written.
    """
    drawn = DrawnFigures(folder)  # every figure is drawn first, then all are written
    device = next(model.parameters()).device
    rng = EpisodeRandom([(seed, FIGURES)])  # one stream: the same items and episode at every validation
    train = data["train"].flatten(0, 1)
    with seeded_eval(model, device, seed):
        paths = [save_reconstructions(model, train[rng.randint(len(train), 1, 16)[0]], drawn / "reconstructions.png"),
                 save_episode_mixture(model, train[rng.randint(len(train), 1, mixture_items(way, sample_size))[0]],
                                      way, unsupervised_em_iters, drawn / "mixture.png")]
        sampler = EpisodeSampler(data["val"], eval_way, 1, min(query, FIGURE_QUERIES))
        ep = sampler.gather(*sampler.sample_indices(rng))
        with _inference(model):
            probs = model.predict(ep.support.to(device), ep.y_support.to(device), ep.query.to(device), eval_way,
                                  mc_samples, semisupervised_em_iters)
        check_finite_result(probs, "class probabilities")
        paths.append(save_test_episode(ep.support[0], ep.y_support[0], ep.query[0], ep.y_query[0],
                                       probs.argmax(-1)[0].cpu(), drawn / "test_episode.png"))
    if metrics is not None:
        paths.append(save_learning_curves(metrics, drawn / "curves.png"))
    drawn.write_all()
    return paths


def save_tiles(tiles, framed, path, per_row=10):
    """RGB tiles (TILE x TILE PIL images), per_row to a row, the first `framed` in a blue frame."""
    canvas = Image.new("RGB", grid_size(math.ceil(len(tiles) / per_row), min(len(tiles), per_row)), WHITE)
    draw = ImageDraw.Draw(canvas)
    for i, tile in enumerate(tiles):
        xy = _cell(i // per_row, i % per_row)
        canvas.paste(tile, xy)
        if i < framed:
            _frame(draw, xy, BLUE)
    return _save(canvas, path)
