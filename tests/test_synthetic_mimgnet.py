"""data/synthetic_mimgnet.py: a seeded synthetic image set in the Mini-ImageNet file layout."""
import csv
import re

import numpy as np
import pytest
from PIL import Image

from data import synthetic_mimgnet
from data.synthetic_mimgnet import MAX_CLASSES, class_specs, main, render_class, write_dataset
from metagmvae.runfiles import UserError

from .conftest import interrupted_at_call

NUM_CLASSES = {"train": 3, "val": 2, "test": 2}
SIZE = (24, 40)


def files(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.reader(f))


def test_same_seed_same_bytes_other_seed_other_images(tmp_path):
    for name, seed in (("a", 5), ("b", 5), ("c", 6)):
        write_dataset(tmp_path / name, NUM_CLASSES, 3, SIZE, seed)
    a, b, c = (files(tmp_path / name) for name in "abc")
    assert a == b
    assert a.keys() == c.keys() and a["images/n0000000100000001.jpg"] != c["images/n0000000100000001.jpg"]


def test_layout_matches_the_mini_imagenet_split_files(tmp_path):
    layout = write_dataset(tmp_path, NUM_CLASSES, 4, SIZE, seed=1)
    synsets = [synset for split in ("train", "val", "test") for synset, _, _ in layout[split]]
    assert synsets == [f"n{k:08d}" for k in range(1, 8)]
    assert len({(shape, texture) for classes in layout.values() for _, shape, texture in classes}) == 7
    listed = []
    for split, classes in layout.items():
        header, *rows = read_csv(tmp_path / f"{split}.csv")
        assert header == ["filename", "label"]
        assert [label for _, label in rows] == [synset for synset, _, _ in classes for _ in range(4)]
        assert all(re.fullmatch(rf"{label}\d{{8}}\.jpg", name) for name, label in rows)
        assert rows[1][0] == f"{classes[0][0]}00000002.jpg"
        listed += [name for name, _ in rows]
    assert sorted(listed) == sorted(p.name for p in (tmp_path / "images").iterdir())
    with Image.open(tmp_path / "images" / listed[0]) as im:
        assert im.format == "JPEG" and im.mode == "RGB" and im.size == (SIZE[1], SIZE[0])


def test_a_rebuild_stopped_midway_leaves_no_split_file_of_old_and_new_images(tmp_path, monkeypatch):
    """The split files go first and come back after the last image: a rebuild with another seed stopped at its
    fourth class leaves images of both builds and no split file that would list them as one set."""
    write_dataset(tmp_path, NUM_CLASSES, 3, SIZE, seed=0)
    monkeypatch.setattr(synthetic_mimgnet, "render_class", interrupted_at_call(render_class, 4))
    with pytest.raises(KeyboardInterrupt):
        write_dataset(tmp_path, NUM_CLASSES, 3, SIZE, seed=1)
    assert not [p for p in tmp_path.iterdir() if p.suffix == ".csv"]
    assert len(list((tmp_path / "images").iterdir())) == 3 * sum(NUM_CLASSES.values())
    monkeypatch.undo()
    write_dataset(tmp_path, NUM_CLASSES, 3, SIZE, seed=1)  # the rebuild completes: the same bytes as a fresh one
    write_dataset(tmp_path / "fresh", NUM_CLASSES, 3, SIZE, seed=1)
    assert {k: v for k, v in files(tmp_path).items() if not k.startswith("fresh/") and not k.startswith(".")} == \
        {k: v for k, v in files(tmp_path / "fresh").items() if not k.startswith(".")}


def test_classes_differ_by_shape_and_by_texture_under_the_same_draws():
    def images(shape, texture):
        return render_class(shape, texture, 8, (48, 48), np.random.default_rng(0)).astype(float)

    base = images("circle", "vertical-stripes")
    for other in (images("square", "vertical-stripes"), images("circle", "horizontal-stripes"),
                  images("cross", "plain")):
        changed = (abs(base - other).max(-1) > 60).mean((1, 2))  # fraction of pixels, per image
        assert (changed > 0.03).all()


def test_images_of_one_class_vary_in_colour_and_layout():
    images = render_class("ring", "dots", 6, (48, 48), np.random.default_rng(3)).astype(float)
    assert images.shape == (6, 48, 48, 3)
    assert all(abs(images[i] - images[j]).mean() > 20 for i in range(6) for j in range(i))
    backgrounds = images[:, 0, 0]  # a corner: the shape never reaches it
    assert backgrounds.std(0).min() > 20


def test_class_choice_is_a_seeded_permutation_of_all_pairs():
    assert class_specs(MAX_CLASSES, 0) != class_specs(MAX_CLASSES, 1)
    assert sorted(class_specs(MAX_CLASSES, 0)) == sorted(set(class_specs(MAX_CLASSES, 1)))
    assert class_specs(5, 2) == class_specs(MAX_CLASSES, 2)[:5]


@pytest.mark.parametrize("name", ["images/n0000000400000002.jpg", "images/n0000000700000004.jpg"])
def test_a_rebuild_refused_for_a_users_image_changes_nothing(tmp_path, name):
    """A user's file where the rebuild would write an image (an edited image of the earlier build, or a file
    under a name a larger build uses) is refused before any file is removed or rewritten."""
    write_dataset(tmp_path, NUM_CLASSES, 3, SIZE, seed=0)
    (tmp_path / name).write_bytes(b"the user's")
    before = files(tmp_path)
    with pytest.raises(UserError, match=f"{tmp_path / name} was not written by this project"):
        write_dataset(tmp_path, NUM_CLASSES, 4, SIZE, seed=1)
    assert files(tmp_path) == before


def test_command_line_writes_and_refuses(tmp_path, capsys):
    main(["--out", str(tmp_path / "ok"), "--train-classes", "2", "--val-classes", "1", "--test-classes", "1",
          "--per-class", "2", "--size", "16"])
    assert "wrote 4 classes x 2 images" in capsys.readouterr().out
    assert len(list((tmp_path / "ok" / "images").iterdir())) == 8
    for flags, text in ((["--train-classes", str(MAX_CLASSES)], "only 48 (shape, texture) pairs"),
                        (["--per-class", "0"], "--per-class must be positive"),
                        (["--size", "4"], "at least 8 pixels")):
        with pytest.raises(SystemExit) as exit_info:
            main(["--out", str(tmp_path / "bad"), *flags])
        assert exit_info.value.code == 2 and text in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()
