"""Group an unlabeled folder of handwritten characters into K clusters with an Omniglot checkpoint.

    python omniglot/cluster.py --checkpoint runs/omniglot-5way/last.pt --images my_drawings --clusters 5

Every image under --images (any nesting; hidden files and non-image files skipped, as omniglot/evaluate.py
does) is converted like the training data (omniglot/evaluate.py load_image) and the model encodes all of
them as ONE set, as in training: the conv encoder runs on ENCODER_CHUNK images at a time, the set-level
posterior on the whole set.  The training prior's EM fits K components to the MC latent samples of the
set from --restarts random starts; the start of highest likelihood is kept.  Each image goes to the
cluster of largest responsibility averaged over its MC samples; that average is its confidence.
Writes <out>/clusters.csv (file, cluster, confidence) and <out>/cluster_<k>.png (the decoded component
mean framed in blue, then the members).  When every image sits in a class folder below --images (at
least two classes), prints the adjusted Rand index and the normalised mutual information of the clusters
against the folders, beside k-means on the raw pixels (k-means++ starts, same K and restarts).
"""
import argparse
import csv
import io
import math
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from metagmvae.cli import HelpFormatter, check_positive, check_seed  # noqa: E402
from metagmvae.clustering import (adjusted_rand_index, cluster_set, kmeans, normalized_mutual_info,  # noqa: E402
                                  restart_streams)
from metagmvae.distributed import resolve_device  # noqa: E402
from metagmvae.episodes import GROUPING_EM, GROUPING_KMEANS, GROUPING_NOISE, EpisodeRandom  # noqa: E402
from metagmvae.runfiles import UserError, exit_on_user_error, seed_everything, write_text  # noqa: E402
from omniglot.evaluate import IMAGE_SUFFIXES, load_image  # noqa: E402
from omniglot.figures import BLUE, WHITE, _cell, _frame, _save, _tile, grid_size  # noqa: E402
from omniglot.trainer import load_model  # noqa: E402

# The set posterior attends over all N images at once: 4 heads x N^2 attention scores, and the EM holds
# restarts x N x S latent samples.  At 5000 images, S = 32, D = 64, 10 restarts that is about 0.4 GB each.
MAX_IMAGES = 5000
ENCODER_CHUNK = 256  # images per pass of the per-item encoder
TILES_PER_ROW = 10


def grouping_parser(doc):
    """A parser with the flags both cluster commands share; `doc` is the command's module docstring."""
    parser = argparse.ArgumentParser(description=doc.split("\n")[0], formatter_class=HelpFormatter)
    parser.add_argument("--images", type=Path, required=True,
                        help="folder of images (any nesting); when every image lies in a folder below it (two "
                             "or more folders), the clusters are scored against those folders")
    parser.add_argument("--clusters", type=int, required=True, help="clusters K (at least 2)")
    parser.add_argument("--restarts", type=int, default=10, help="random starts of the EM and of k-means")
    parser.add_argument("--out", type=Path, default=None,
                        help="folder for clusters.csv and the PNGs (None: <images>-clusters beside --images)")
    parser.add_argument("--mc-sample-size", type=int, default=32, help="MC samples S per image")
    parser.add_argument("--em-iters", type=int, default=10, help="iterations of each EM run")
    parser.add_argument("--max-images", type=int, default=MAX_IMAGES,
                        help="refuse folders with more images: the set posterior attends over all N images at once "
                             "(4 heads x N^2 scores) and the EM holds restarts x N x S latent samples, about 0.4 GB "
                             "each at N = 5000, S = 32, D = 64, 10 restarts; the per-item encoder runs in chunks of "
                             f"{ENCODER_CHUNK}")
    parser.add_argument("--seed", type=int, default=0, help="seeds the MC samples, the EM and k-means starts")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="auto = cuda when available")
    return parser


def start_grouping(args):
    """Check the shared flags and list the images; returns (device, image files)."""
    check_positive(args, ["restarts", "mc_sample_size", "em_iters", "max_images"])
    if args.clusters < 2:
        raise UserError(f"--clusters must be at least 2 (got {args.clusters})")
    check_seed(args.seed)
    return resolve_device(args.device), list_images(args)


def find_images(root):
    """Image files below `root` at any depth, sorted by path; hidden files and folders and files whose
    suffix is not an image format Pillow opens are skipped."""
    if not root.is_dir():
        raise UserError(f"--images {root}: no such folder")
    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                  and not any(part.startswith(".") for part in p.relative_to(root).parts))


def list_images(args):
    """The image files of --images; none, more than --max-images or fewer than --clusters is an error."""
    files = find_images(args.images)
    if not files:
        raise UserError(f"--images {args.images}: no image files (.png, .jpg, ... that Pillow reads)")
    if len(files) > args.max_images:
        raise UserError(f"--images {args.images}: {len(files)} images, more than --max-images {args.max_images}")
    if len(files) < args.clusters:
        raise UserError(f"--images {args.images}: {len(files)} images, fewer than --clusters {args.clusters}")
    return files


def folder_classes(root, files):
    """Class index (N,) of every file by its parent folder below root, or None when an image lies directly
    in root or there is only one folder."""
    parents = [f.parent.relative_to(root).as_posix() for f in files]
    if "." in parents or len(set(parents)) < 2:
        return None
    names = sorted(set(parents))
    return torch.tensor([names.index(p) for p in parents])


def print_scores(classes, partitions):
    """ARI and NMI of each {name: labels (N,)} against the class folders."""
    print(f"against the {int(classes.max()) + 1} class folders:")
    scores = {}
    for name, labels in partitions.items():
        scores[name] = {"ari": adjusted_rand_index(classes, labels), "nmi": normalized_mutual_info(classes, labels)}
        print(f"  {name}: adjusted Rand index {scores[name]['ari']:.3f}, "
              f"normalised mutual information {scores[name]['nmi']:.3f}")
    return scores


def save_tiles(tiles, framed, path):
    """RGB tiles (TILE x TILE PIL images), TILES_PER_ROW to a row, the first `framed` in a blue frame."""
    canvas = Image.new("RGB", grid_size(math.ceil(len(tiles) / TILES_PER_ROW), min(len(tiles), TILES_PER_ROW)), WHITE)
    draw = ImageDraw.Draw(canvas)
    for i, tile in enumerate(tiles):
        xy = _cell(i // TILES_PER_ROW, i % TILES_PER_ROW)
        canvas.paste(tile, xy)
        if i < framed:
            _frame(draw, xy, BLUE)
    return _save(canvas, path)


def write_clusters(out, root, files, cluster, confidence, num_clusters, cluster_tiles):
    """<out>/clusters.csv and <out>/cluster_<k>.png per non-empty cluster k, its tiles from
    cluster_tiles(k, members (n,)) -> (tiles, how many of the first are framed)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["file", "cluster", "confidence"])
    writer.writerows([f.relative_to(root).as_posix(), k, f"{c:.6f}"]
                     for f, k, c in zip(files, cluster.tolist(), confidence.tolist()))
    digits = len(str(num_clusters - 1))
    try:
        write_text(out / "clusters.csv", buffer.getvalue())
        for k in cluster.unique().tolist():
            save_tiles(*cluster_tiles(k, torch.nonzero(cluster == k).flatten()), out / f"cluster_{k:0{digits}d}.png")
    except OSError as e:
        raise UserError(f"--out {out}: cannot write ({e.strerror or e})") from None


def group_folder(args, files, items, model, baseline_features, baseline_name):
    """Cluster `items` (N, ...) read from `files` with the model; print the cluster sizes and, with class
    folders, the scores beside k-means on baseline_features (N, F).

    Returns (cluster (N,), confidence (N,), log_pi (K,), mu (K, D), scores or None).
    """
    seed_everything(args.seed)
    rng = restart_streams(args.seed, GROUPING_EM, args.restarts)
    noise = EpisodeRandom([(args.seed, GROUPING_NOISE, 0)])
    cluster, confidence, log_pi, mu = cluster_set(model, items, args.clusters, args.mc_sample_size, args.em_iters,
                                                  rng, noise, ENCODER_CHUNK)
    cluster, confidence = cluster.cpu(), confidence.cpu()
    sizes = torch.bincount(cluster, minlength=args.clusters).tolist()
    print(f"{len(items)} images -> {args.clusters} clusters of sizes {sizes}")
    classes = folder_classes(args.images, files)
    scores = None
    if classes is not None:
        baseline, _, _ = kmeans(baseline_features, args.clusters, restart_streams(args.seed, GROUPING_KMEANS,
                                                                                 args.restarts))
        scores = print_scores(classes, {f"Meta-GMVAE (EM, {args.restarts} restarts)": cluster,
                                        f"{baseline_name} (k-means++, {args.restarts} restarts)": baseline.cpu()})
    return cluster, confidence, log_pi, mu, scores


def finish_grouping(args, files, cluster, confidence, scores, cluster_tiles):
    """Write the outputs into --out (see write_clusters); returns main's result."""
    images = args.images.resolve()  # "." has no name
    out = args.out or images.parent / f"{images.name}-clusters"
    write_clusters(out, args.images, files, cluster, confidence, args.clusters, cluster_tiles)
    print(f"wrote {out / 'clusters.csv'} and {len(cluster.unique())} cluster PNGs")
    return {"cluster": cluster, "confidence": confidence, "scores": scores}


def main(argv=None):
    """Returns {"cluster": (N,), "confidence": (N,), "scores": {name: {"ari", "nmi"}} or None}."""
    parser = grouping_parser(__doc__)
    parser.add_argument("--checkpoint", type=Path, required=True,
                        help="our Omniglot .pt checkpoint or the authors' .pth")
    args = parser.parse_args(argv)
    with exit_on_user_error(parser.prog):
        device, files = start_grouping(args)
        model = load_model(args.checkpoint, device).eval()
        images = torch.from_numpy(np.stack([load_image(f) for f in files]))[:, None].to(device)  # (N, 1, 28, 28)
        cluster, confidence, _, mu, scores = group_folder(args, files, images, model, images.flatten(1),
                                                          "k-means on pixels")
        with torch.no_grad():
            component_means = torch.sigmoid(model.decode(mu)).cpu()  # (K, 1, 28, 28)
        images = images.cpu()
        return finish_grouping(args, files, cluster, confidence, scores, lambda k, members: (
            [_tile(component_means[k])] + [_tile(images[i]) for i in members], 1))


if __name__ == "__main__":
    main()
