"""Grouping an unlabeled folder: the core clustering functions on hand-checkable cases and well-separated
blobs, and omniglot/cluster.py and mimgnet/cluster.py end to end (tiny random-weight models) with every
refusal (exit 2, one line on stderr, nothing written)."""
import csv
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from data.synthetic_mimgnet import class_specs, render_class
from metagmvae.clustering import (adjusted_rand_index, assign_by_responsibility, cluster_latents, contingency_table,
                                  fit_gmm_restarts, kmeans, normalized_mutual_info, restart_streams)
from metagmvae.gmm import mixture_log_prob
from mimgnet import cluster as mimgnet_cluster
from mimgnet.model import FeatureGMVAE
from omniglot import cluster as omniglot_cluster
from omniglot.dataset import load_split
from omniglot.model import OmniglotGMVAE
from simclr.model import SimCLR

from .conftest import REPO_ROOT
from .test_hostile_inputs import assert_refused, assert_refused_in_process, snapshot

CLASSES, PER_CLASS = 3, 6


# ---- scores of partitions

def test_contingency_table_counts_pairs_of_labels():
    table = contingency_table(torch.tensor([7, 7, 7, 2, 2, 2]), torch.tensor([0, 0, 1, 1, 5, 5]))
    assert table.tolist() == [[0, 1, 2], [2, 1, 0]]  # rows: labels 2, 7; columns: 0, 1, 5


def test_ari_and_nmi_of_identical_or_relabelled_partitions_are_one():
    labels = torch.tensor([0, 0, 1, 1, 1, 2, 2, 3])
    relabelled = torch.tensor([3, 0, 2, 1])[labels]
    assert adjusted_rand_index(labels, labels) == pytest.approx(1)
    assert adjusted_rand_index(labels, relabelled) == pytest.approx(1)
    assert normalized_mutual_info(labels, relabelled) == pytest.approx(1)


def test_ari_and_nmi_of_a_known_contingency_table():
    # a = [0 0 0 1 1 1], b = [0 0 1 1 2 2]: table [[2, 1, 0], [0, 1, 2]].
    # ARI: index = C(2,2) + C(2,2) = 2; rows = 2 C(3,2) = 6; columns = 3 C(2,2) = 3; N pairs = C(6,2) = 15;
    # expected = 6 * 3 / 15 = 1.2; max = (6 + 3) / 2 = 4.5 -> (2 - 1.2) / (4.5 - 1.2) = 0.8 / 3.3.
    # NMI: MI = 2 * (1/3) log((1/3) / (1/2 * 1/3)) = (2/3) log 2; H(a) = log 2, H(b) = log 3
    #      -> (2/3) log 2 / ((log 2 + log 3) / 2).
    a, b = [0, 0, 0, 1, 1, 1], [0, 0, 1, 1, 2, 2]
    assert adjusted_rand_index(a, b) == pytest.approx(0.8 / 3.3)
    assert adjusted_rand_index(b, a) == pytest.approx(0.8 / 3.3)
    assert normalized_mutual_info(a, b) == pytest.approx((2 / 3) * np.log(2) / ((np.log(2) + np.log(3)) / 2))


def test_independent_partitions_score_zero():
    # Every cell of the table [[1, 1], [1, 1]] is what independence predicts: MI = 0, and
    # ARI = (0 - 2 * 2 / 6) / (2 - 2 * 2 / 6) = -0.5 (below chance: no pair is kept together in both).
    a, b = [0, 0, 1, 1], [0, 1, 0, 1]
    assert normalized_mutual_info(a, b) == pytest.approx(0)
    assert adjusted_rand_index(a, b) == pytest.approx(-0.5)


# ---- clustering of well-separated blobs

def blobs(num_clusters=6, per_cluster=25, dim=8, spread=0.3, seed=0):
    """Points (N, dim) around num_clusters centres 10 apart at least, and their true labels (N,)."""
    generator = torch.Generator().manual_seed(seed)
    centres = torch.eye(num_clusters, dim) * 10
    labels = torch.arange(num_clusters).repeat_interleave(per_cluster)
    return centres[labels] + spread * torch.randn(len(labels), dim, generator=generator), labels


def test_kmeans_of_well_separated_blobs_is_perfect():
    points, labels = blobs()
    found, centres, inertia = kmeans(points, 6, restart_streams(0, 0, 10))
    assert adjusted_rand_index(labels, found) == 1.0 and normalized_mutual_info(labels, found) == pytest.approx(1)
    assert inertia.shape == (10,) and centres.shape == (6, 8)
    member_means = torch.stack([points[found == k].mean(0) for k in range(6)])
    assert torch.allclose(centres, member_means, atol=1e-4)


def test_em_with_restarts_of_well_separated_blobs_is_perfect_and_keeps_the_most_likely_start():
    points, labels = blobs()
    z = points.unsqueeze(1) + 0.05 * torch.randn(len(points), 4, 8, generator=torch.Generator().manual_seed(1))
    cluster, confidence, log_pi, mu = cluster_latents(z, 6, 10, restart_streams(0, 0, 10))
    assert adjusted_rand_index(labels, cluster) == 1.0
    assert confidence.shape == (len(points),) and bool((confidence > 0.99).all())
    assert torch.allclose(log_pi.exp().sum(), torch.tensor(1.0))
    member_means = torch.stack([z[cluster == k].mean(dim=(0, 1)) for k in range(6)])
    assert torch.allclose(mu, member_means, atol=1e-3)  # mu in z's coordinates, not the centred ones

    centre = z.mean(dim=(0, 1))
    centred = z.flatten(0, 1) - centre
    kept_log_pi, kept_mu, log_likelihood = fit_gmm_restarts(centred, 6, 10, restart_streams(0, 0, 10))
    assert log_likelihood.shape == (10,) and log_likelihood.unique().numel() > 1, "the starts should differ"
    kept = mixture_log_prob(centred[None], kept_log_pi[None], kept_mu[None]).sum()
    assert torch.isclose(kept, log_likelihood.max())
    assert torch.allclose(kept_mu + centre, mu)


def test_responsibility_is_averaged_over_mc_samples():
    # Two components at -1 and +1; item 0 has samples at -1 and +1 (confidence 1/2 of either after
    # averaging), item 1 both at +1.
    z = torch.tensor([[[-1.0], [1.0]], [[1.0], [1.0]]])
    log_pi, mu = torch.log(torch.tensor([0.5, 0.5])), torch.tensor([[-1.0], [1.0]])
    cluster, confidence = assign_by_responsibility(z, log_pi, mu)
    assert confidence[0] == pytest.approx(0.5) and cluster[1] == 1
    assert confidence[1] == pytest.approx(1 / (1 + np.exp(-2)))  # N(1; 1) / (N(1; 1) + N(1; -1))


def test_chunked_item_encoder_gives_the_same_posterior():
    model = OmniglotGMVAE(hidden_size=8, latent_size=4).eval()
    x = torch.rand(1, 11, 1, 28, 28)
    with torch.no_grad():
        whole, chunked = model.posterior_params(x), model.posterior_params(x, chunk_size=4)
    for a, b in zip(whole, chunked):
        assert torch.allclose(a, b, atol=1e-5)


# ---- the commands

def write_png(path, pixels):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


@pytest.fixture(scope="module")
def omniglot_folder(omniglot_sample, tmp_path_factory):
    """CLASSES test characters, PER_CLASS drawings each, as dark-on-white PNGs nested two levels deep
    (alphabet/character/), beside a hidden file and a text file that are skipped."""
    root = tmp_path_factory.mktemp("drawings") / "drawings"
    test = load_split(omniglot_sample, "test")[:CLASSES, :PER_CLASS, 0].numpy()  # ink = 1
    for c, character in enumerate(test):
        for i, drawing in enumerate(character):
            write_png(root / "alphabet" / f"character{c}" / f"{i}.png", np.rint((1 - drawing) * 255).astype(np.uint8))
    (root / ".DS_Store").write_bytes(b"\0\1")
    (root / "alphabet" / "notes.txt").write_text("not an image")
    return root


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """Tiny random-weight checkpoints: omniglot.pt, simclr.pt, and mimgnet.pt that fits simclr.pt's features."""
    folder = tmp_path_factory.mktemp("checkpoints")
    torch.manual_seed(0)
    omniglot, simclr = OmniglotGMVAE(8, 4), SimCLR(hidden_size=4, image_size=84)
    mimgnet = FeatureGMVAE(simclr.encoder.feature_size, 4)
    for name, model in (("omniglot", omniglot), ("mimgnet", mimgnet)):
        torch.save({"model": model.state_dict(), "model_config": model.config}, folder / f"{name}.pt")
    torch.save({"model": simclr.state_dict(), "model_config": {"hidden_size": 4, "image_size": 84}},
               folder / "simclr.pt")
    return folder


@pytest.fixture(scope="module")
def photo_folder(tmp_path_factory):
    """CLASSES synthetic Mini-ImageNet classes, PER_CLASS 100x90 JPEG photos each, in class folders."""
    root = tmp_path_factory.mktemp("photos") / "photos"
    for c, (shape, texture) in enumerate(class_specs(CLASSES, 0)):
        for i, image in enumerate(render_class(shape, texture, PER_CLASS, (90, 100), np.random.default_rng(c))):
            (root / f"{shape}-{texture}").mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(root / f"{shape}-{texture}" / f"{i}.jpg")
    return root


def run_script(script, *args):
    return subprocess.run([sys.executable, script, *map(str, args)], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=120)


def read_clusters(out):
    with open(out / "clusters.csv", newline="") as f:
        return list(csv.reader(f))


def check_outputs(out, root, clusters):
    """clusters.csv lists every image once with a valid cluster and confidence; one PNG per non-empty cluster."""
    header, *rows = read_clusters(out)
    assert header == ["file", "cluster", "confidence"]
    images = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.suffix in (".png", ".jpg"))
    assert sorted(row[0] for row in rows) == images
    found = {int(row[1]) for row in rows}
    assert found <= set(range(clusters))
    assert all(1 / clusters - 1e-6 <= float(row[2]) <= 1 for row in rows)
    assert sorted(p.name for p in out.glob("*.png")) == [f"cluster_{k}.png" for k in sorted(found)]
    return rows


def test_omniglot_cluster_command_end_to_end(omniglot_folder, checkpoints, tmp_path):
    out = tmp_path / "groups"
    result = run_script("omniglot/cluster.py", "--checkpoint", checkpoints / "omniglot.pt", "--images", omniglot_folder,
                        "--clusters", CLASSES, "--restarts", 3, "--mc-sample-size", 4, "--out", out, "--device", "cpu")
    assert result.returncode == 0, result.stderr[-3000:]
    rows = check_outputs(out, omniglot_folder, CLASSES)
    assert len(rows) == CLASSES * PER_CLASS
    assert "against the 3 class folders" in result.stdout
    assert "Meta-GMVAE (EM, 3 restarts): adjusted Rand index" in result.stdout
    assert "k-means on pixels (k-means++, 3 restarts): adjusted Rand index" in result.stdout
    # the PNG of a cluster: the framed component mean, then its members, 10 to a row
    members = sum(int(row[1]) == 0 for row in rows)
    if members:
        from omniglot.figures import grid_size
        with Image.open(out / "cluster_0.png") as png:
            assert png.size == grid_size(-(-(1 + members) // 10), min(1 + members, 10))


def test_omniglot_cluster_is_deterministic_and_scores_only_with_class_folders(omniglot_folder, checkpoints, tmp_path,
                                                                              capsys):
    args = ["--checkpoint", checkpoints / "omniglot.pt", "--clusters", "2", "--restarts", "2", "--mc-sample-size", "3",
            "--device", "cpu", "--seed", "5"]
    first = omniglot_cluster.main(list(map(str, [*args, "--images", omniglot_folder, "--out", tmp_path / "a"])))
    second = omniglot_cluster.main(list(map(str, [*args, "--images", omniglot_folder, "--out", tmp_path / "b"])))
    assert (tmp_path / "a" / "clusters.csv").read_bytes() == (tmp_path / "b" / "clusters.csv").read_bytes()
    assert torch.equal(first["cluster"], second["cluster"]) and set(first["scores"]) == set(second["scores"])
    # one folder only: nothing to score against
    one_class = shutil.copytree(omniglot_folder / "alphabet" / "character0", tmp_path / "single")
    capsys.readouterr()
    result = omniglot_cluster.main(list(map(str, [*args, "--images", one_class, "--out", tmp_path / "c"])))
    assert result["scores"] is None and "adjusted Rand index" not in capsys.readouterr().out
    assert len(read_clusters(tmp_path / "c")) == 1 + PER_CLASS
    # default --out: beside --images
    omniglot_cluster.main(list(map(str, [*args, "--images", one_class])))
    assert (tmp_path / "single-clusters" / "clusters.csv").is_file()
    # --out inside --images is refused: nothing is written into an input folder
    assert_refused_in_process(omniglot_cluster.main, *args, "--images", one_class, "--out", one_class / "groups",
                              text=f"lies inside --images {one_class}", roots=[one_class], capsys=capsys)


def test_mimgnet_cluster_command_end_to_end(photo_folder, checkpoints, tmp_path):
    out = tmp_path / "groups"
    result = run_script("mimgnet/cluster.py", "--encoder", checkpoints / "simclr.pt", "--checkpoint",
                        checkpoints / "mimgnet.pt", "--images", photo_folder, "--clusters", CLASSES, "--restarts", 3,
                        "--mc-sample-size", 4, "--out", out, "--device", "cpu")
    assert result.returncode == 0, result.stderr[-3000:]
    rows = check_outputs(out, photo_folder, CLASSES)
    assert len(rows) == CLASSES * PER_CLASS
    assert "k-means on SimCLR features (k-means++, 3 restarts): adjusted Rand index" in result.stdout
    with Image.open(out / f"cluster_{rows[0][1]}.png") as png:
        assert png.mode == "RGB"


# ---- refusals: exit 2, one line, nothing written

def test_cluster_refusals(omniglot_folder, photo_folder, checkpoints, tmp_path, capsys):
    out = tmp_path / "out"
    common = ["--out", out, "--device", "cpu", "--restarts", "2", "--mc-sample-size", "2"]
    omniglot = ["--checkpoint", checkpoints / "omniglot.pt", *common]
    roots = [omniglot_folder, checkpoints, tmp_path]

    empty = tmp_path / "empty"
    (empty / "sub").mkdir(parents=True)
    (empty / "sub" / "notes.txt").write_text("no images here")
    assert_refused("omniglot/cluster.py", *omniglot, "--images", empty, "--clusters", "2",
                   text="no image files", roots=roots)
    assert not out.exists()
    refuse = dict(roots=roots, capsys=capsys)
    assert_refused_in_process(omniglot_cluster.main, *omniglot, "--images", omniglot_folder / "alphabet" / "character0",
                              "--clusters", PER_CLASS + 1, text=f"{PER_CLASS} images, fewer than --clusters", **refuse)
    assert_refused_in_process(omniglot_cluster.main, *omniglot, "--images", omniglot_folder, "--clusters", "1",
                              text="--clusters must be at least 2", **refuse)
    assert_refused_in_process(omniglot_cluster.main, *omniglot, "--images", omniglot_folder, "--clusters", "2",
                              "--max-images", "5", text="more than --max-images 5", **refuse)
    assert_refused_in_process(omniglot_cluster.main, *omniglot, "--images", tmp_path / "missing", "--clusters", "2",
                              text="no such folder", **refuse)
    for name, content in (("zero.png", b""), ("broken.png", b"\x89PNG not really")):
        bad = tmp_path / f"bad-{name}"
        for i in range(3):
            stroke = np.full((28, 28), 255, np.uint8)
            stroke[4:24, 8 + 4 * i] = 0  # dark on white, one stroke per image
            write_png(bad / f"{i}.png", stroke)
        (bad / name).write_bytes(content)
        assert_refused_in_process(omniglot_cluster.main, *omniglot, "--images", bad, "--clusters", "2",
                                  text=f"{bad / name}: unreadable image", **refuse)
        assert_refused_in_process(mimgnet_cluster.main, "--encoder", checkpoints / "simclr.pt", "--checkpoint",
                                  checkpoints / "mimgnet.pt", *common, "--images", bad, "--clusters", "2",
                                  text=f"{bad / name}: unreadable image", **refuse)
    mimgnet = ["--checkpoint", checkpoints / "mimgnet.pt", *common, "--images", photo_folder, "--clusters", "2"]
    assert_refused("mimgnet/cluster.py", "--encoder", checkpoints / "omniglot.pt", *mimgnet,
                   text="holds this project's Omniglot model; expected a checkpoint of the SimCLR model",
                   roots=[*roots, photo_folder])
    other = SimCLR(hidden_size=8, image_size=84)
    torch.save({"model": other.state_dict(), "model_config": {"hidden_size": 8, "image_size": 84}},
               tmp_path / "simclr8.pt")
    assert_refused_in_process(mimgnet_cluster.main, "--encoder", tmp_path / "simclr8.pt", *mimgnet,
                              text="features but --encoder", **refuse)
    assert not out.exists() and snapshot(photo_folder)


def test_class_folders_that_share_a_picture_are_refused_before_scoring(omniglot_folder, checkpoints, tmp_path, capsys):
    """A class folder copied under another name (or one drawing saved again as JPEG in another folder): the
    same picture under two classes makes the scores against the folders meaningless."""
    images = shutil.copytree(omniglot_folder, tmp_path / "images")
    shutil.copytree(images / "alphabet" / "character0", images / "alphabet" / "character0copy")
    common = ["--checkpoint", checkpoints / "omniglot.pt", "--out", tmp_path / "out", "--device", "cpu", "--restarts",
              "2", "--mc-sample-size", "2", "--clusters", "2"]
    refuse = dict(roots=[images, checkpoints], capsys=capsys)
    assert_refused_in_process(omniglot_cluster.main, *common, "--images", images,
                              text=f"--images {images}: the class folders 'alphabet/character0' and "
                                   "'alphabet/character0copy' hold the same picture as the model reads it (0.png and "
                                   "0.png", **refuse)
    shutil.rmtree(images / "alphabet" / "character0copy")
    with Image.open(images / "alphabet" / "character0" / "1.png") as im:
        im.convert("RGB").save(images / "alphabet" / "character1" / "resaved.jpg", quality=90)
    assert_refused_in_process(omniglot_cluster.main, *common, "--images", images,
                              text="'alphabet/character0' and 'alphabet/character1' hold the same picture", **refuse)
    assert not (tmp_path / "out").exists()
    copies = shutil.copytree(omniglot_folder, tmp_path / "copies")
    folder = copies / "alphabet" / "character0"
    for i, path in enumerate(sorted(folder.glob("*.png"))[1:]):  # one drawing, PER_CLASS times
        shutil.copyfile(folder / "0.png", path)
    assert_refused_in_process(omniglot_cluster.main, *common, "--images", copies, roots=[copies, checkpoints],
                              capsys=capsys, text=f"--images {copies}: {PER_CLASS - 1} of the {PER_CLASS} images of "
                                                  "the class folder 'alphabet/character0' are copies of others in it")


def test_groupings_that_cannot_mean_anything_are_refused(omniglot_folder, checkpoints, tmp_path, capsys):
    """As many clusters as images (one per image), and class folders of one image each (no two images share a
    class: the adjusted Rand index is 0 whatever the grouping)."""
    common = ["--checkpoint", checkpoints / "omniglot.pt", "--out", tmp_path / "out", "--device", "cpu", "--restarts",
              "2", "--mc-sample-size", "2"]
    refuse = dict(roots=[omniglot_folder, checkpoints], capsys=capsys)
    character = omniglot_folder / "alphabet" / "character0"
    assert_refused_in_process(omniglot_cluster.main, *common, "--images", character, "--clusters", PER_CLASS,
                              text=f"{PER_CLASS} images, fewer than --clusters {PER_CLASS} + 1 (a cluster per image "
                                   "groups nothing)", **refuse)
    singles = tmp_path / "singles"
    for c in range(3):
        (singles / f"c{c}").mkdir(parents=True)
        shutil.copy(omniglot_folder / "alphabet" / f"character{c}" / "0.png", singles / f"c{c}")
    assert_refused_in_process(omniglot_cluster.main, *common, "--images", singles, "--clusters", "2",
                              text=f"--images {singles}: each of its 3 class folders holds one image, so no two "
                                   "images share a class", roots=[singles, checkpoints], capsys=capsys)
    shutil.copy(omniglot_folder / "alphabet" / "character0" / "1.png", singles / "c0")
    capsys.readouterr()
    assert omniglot_cluster.main([str(a) for a in [*common, "--images", singles, "--clusters", "2"]])["scores"]
    assert "against the 3 class folders:" in capsys.readouterr().out


def test_an_image_or_folder_name_that_is_not_utf8_is_refused_naming_it(omniglot_folder, checkpoints, tmp_path,
                                                                      capsys):
    images = shutil.copytree(omniglot_folder, tmp_path / "images")
    flags = ["--checkpoint", checkpoints / "omniglot.pt", "--images", images, "--clusters", "2", "--restarts", "2",
             "--mc-sample-size", "2", "--out", tmp_path / "out", "--device", "cpu"]
    character = images / "alphabet" / "character0"
    bad_image = character / os.fsdecode(b"\xfe.png")
    (character / "0.png").rename(bad_image)
    refuse = dict(roots=[tmp_path], capsys=capsys)
    assert_refused_in_process(omniglot_cluster.main, *flags, text=f"{character}/\\xfe.png: a name that is not UTF-8",
                              **refuse)
    bad_image.rename(character / "0.png")
    character.rename(images / "alphabet" / os.fsdecode(b"caf\xe9"))
    assert_refused_in_process(omniglot_cluster.main, *flags, text=f"{images / 'alphabet'}/caf\\xe9: a name that is not",
                              **refuse)
    assert not (tmp_path / "out").exists()


def test_a_rerun_into_the_same_out_removes_the_earlier_groupings_files_only(omniglot_folder, checkpoints, tmp_path):
    out = tmp_path / "groups"
    flags = ["--checkpoint", checkpoints / "omniglot.pt", "--images", omniglot_folder, "--restarts", "2",
             "--mc-sample-size", "2", "--out", out, "--device", "cpu"]
    omniglot_cluster.main(list(map(str, [*flags, "--clusters", "5"])))
    assert len(list(out.glob("cluster_*.png"))) > 2
    (out / "notes.txt").write_text("the user's")
    omniglot_cluster.main(list(map(str, [*flags, "--clusters", "2"])))
    check_outputs(out, omniglot_folder, 2)  # the PNGs of this grouping's clusters, no other
    assert (out / "notes.txt").read_text() == "the user's"


def test_omniglot_cluster_prints_nothing_before_refusing_nan_decoded_means(omniglot_folder, checkpoints, tmp_path):
    state = torch.load(checkpoints / "omniglot.pt")
    state["model"]["decoder.1.running_var"].fill_(-1.0)  # finite weights whose decoder gives NaN
    torch.save(state, tmp_path / "decoder_nan.pt")
    out = tmp_path / "out"
    result = run_script("omniglot/cluster.py", "--checkpoint", tmp_path / "decoder_nan.pt", "--images", omniglot_folder,
                        "--clusters", CLASSES, "--restarts", 2, "--mc-sample-size", 2, "--out", out, "--device", "cpu")
    assert result.returncode == 2 and "decoded cluster means hold NaN" in result.stderr, result.stderr[-3000:]
    assert len(result.stderr.splitlines()) == 1 and result.stdout == "" and not out.exists()
