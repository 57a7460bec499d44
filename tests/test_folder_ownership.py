"""A folder's files are the user's unless its record says otherwise (metagmvae/folders.py): a command writes,
replaces and deletes only what it recorded, refuses a folder of the user's with one line (exit 2) leaving every
file byte-identical, follows no symbolic link, and only reads its input folders."""
import errno
import hashlib
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from metagmvae.folders import LOCK_FILE, RECORD, OutputFolder
from metagmvae.runfiles import UserError
from mimgnet import main as mimgnet_main
from omniglot import draw_figures, evaluate
from omniglot import main as omniglot_main
from omniglot.model import OmniglotGMVAE
from simclr import main as simclr_main
from simclr.model import SimCLR

from .conftest import REPO_ROOT
from .test_hostile_inputs import OMNIGLOT_FLAGS, assert_refused, assert_refused_in_process, snapshot
from .test_reliability import write_features

TINY = [*OMNIGLOT_FLAGS, "--train-iters", "2", "--freq-iters", "2", "--batch-size", "1"]


def train(data, save, *flags):
    return omniglot_main.main(["--data-dir", str(data), "--save-dir", str(save), *TINY, *map(str, flags)])


def refused(main, *args, text, roots, capsys):
    return assert_refused_in_process(main, *args, text=text, roots=roots, capsys=capsys)


@pytest.fixture(scope="module")
def finished_run(omniglot_data, tmp_path_factory):
    """A finished 2-step Omniglot run of ours."""
    save = tmp_path_factory.mktemp("finished") / "run"
    train(omniglot_data, save)
    return save


@pytest.fixture
def run_copy(finished_run, tmp_path):
    return shutil.copytree(finished_run, tmp_path / "run", symlinks=True)


# ---- the reproductions of the issue

def test_a_folder_of_the_users_is_refused_without_overwrite_and_with_it(omniglot_data, tmp_path, capsys):
    folder = tmp_path / "d"
    folder.mkdir()
    (folder / "config.json").write_text("{}\n")
    (folder / "best_checkpoint.pt").write_text("w\n")
    (folder / "results.json").write_text("mine\n")
    for flags in ([], ["--overwrite"]):
        refused(omniglot_main.main, "--data-dir", omniglot_data, "--save-dir", folder, *TINY, *flags,
                text=f"--save-dir {folder} holds best_checkpoint.pt, config.json, results.json but no record of this "
                     f"project ({RECORD})", roots=[folder], capsys=capsys)


def test_overwrite_keeps_a_users_checkpoint_of_a_run_name_and_says_so(omniglot_data, run_copy, capsys):
    shutil.copy(run_copy / "last.pt", run_copy / "best_model_v2.pt")  # even a checkpoint of ours, copied by the user
    mine = (run_copy / "best_model_v2.pt").read_bytes()
    capsys.readouterr()
    train(omniglot_data, run_copy, "--overwrite", "--seed", "3")
    assert (f"replaced the run in {run_copy}; kept the files this project did not write: best_model_v2.pt"
            in capsys.readouterr().out)
    assert (run_copy / "best_model_v2.pt").read_bytes() == mine
    assert json.loads((run_copy / "config.json").read_text())["seed"] == 3


@pytest.fixture
def tiny_demo(monkeypatch):
    monkeypatch.setattr(omniglot_main, "DEMO_SETTINGS", dict(
        way=5, eval_way=5, sample_size=10, batch_size=1, train_mc_sample_size=2, test_mc_sample_size=2, train_iters=2,
        freq_iters=2, eval_episodes=2, eval_shots=[1]))
    return ["--demo", "--hidden-size", "8", "--latent-size", "4", "--query", "2", "--device", "cpu"]


def test_demo_replaces_an_earlier_demo_run_only(omniglot_data, run_copy, tmp_path, capsys, tiny_demo):
    refused(omniglot_main.main, *tiny_demo, "--data-dir", omniglot_data, "--save-dir", run_copy,
            text=f"{run_copy} already holds a run; pass --resume to continue it, --overwrite to replace it",
            roots=[run_copy], capsys=capsys)
    demo = tmp_path / "demo"
    for seed in (1, 2):  # the second replaces the first
        omniglot_main.main([*tiny_demo, "--data-dir", str(omniglot_data), "--save-dir", str(demo), "--seed", str(seed)])
        assert json.loads((demo / "config.json").read_text())["seed"] == seed


def test_demo_builds_only_its_own_data_folder_and_not_before_its_save_dir_passes(omniglot_data, tmp_path, capsys,
                                                                                 tiny_demo, monkeypatch):
    """A --data-dir given with --demo is an input, read only, even without its test.npy; the demo's own data
    folder is built only once --save-dir has passed the run's checks, and never over a user's files."""
    partial = shutil.copytree(omniglot_data, tmp_path / "partial")
    (partial / "test.npy").unlink()
    before = snapshot(partial)
    refused(omniglot_main.main, *tiny_demo, "--data-dir", partial, "--save-dir", tmp_path / "demo",
            text=f"{partial / 'test.npy'} not found", roots=[partial], capsys=capsys)
    assert snapshot(partial) == before
    monkeypatch.setattr(omniglot_main, "DEMO_DATA_DIR", tmp_path / "demo-data")
    users = tmp_path / "users"
    users.mkdir()
    (users / "notes.txt").write_text("mine\n")
    refused(omniglot_main.main, *tiny_demo, "--data-dir", tmp_path / "demo-data", "--save-dir", users,
            text=f"--save-dir {users} holds notes.txt but no record of this project", roots=[users], capsys=capsys)
    assert not (tmp_path / "demo-data").exists()
    shutil.copytree(users, tmp_path / "demo-data")  # the demo's own folder, holding a file of the user's
    refused(omniglot_main.main, *tiny_demo, "--save-dir", tmp_path / "demo", roots=[tmp_path], capsys=capsys,
            text=f"--demo's data folder {tmp_path / 'demo-data'} holds notes.txt but no record of this project")


def test_feature_export_into_the_data_folder_is_refused(simclr_data, tmp_path, capsys):
    checkpoint = tmp_path / "simclr.pt"
    torch.save({"model": SimCLR(hidden_size=4).state_dict(), "model_config": {"hidden_size": 4, "image_size": 84}},
               checkpoint)
    flags = ["--data-dir", simclr_data, "--export-only", "--checkpoint", checkpoint, "--batch-size", "2"]
    refused(simclr_main.main, *flags, "--feature-save-dir", simclr_data,
            text=f"--feature-save-dir {simclr_data} is --data-dir {simclr_data}", roots=[simclr_data], capsys=capsys)
    refused(simclr_main.main, *flags, "--feature-save-dir", simclr_data / "features",
            text=f"lies inside --data-dir {simclr_data}", roots=[simclr_data], capsys=capsys)


def write_drawing(path, row, length):
    """A 28x28 PNG: a dark bar at `row`, `length` pixels long, on white."""
    pixels = np.full((28, 28), 255, np.uint8)
    pixels[row:row + 4, 4:4 + length] = 0
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


@pytest.fixture
def unlabelled_episodes(tmp_path):
    """An Omniglot checkpoint and a folder of one episode (2 classes) with unlabelled queries; the folder also
    holds the user's own predictions.csv."""
    model = OmniglotGMVAE(8, 4)
    torch.save({"model": model.state_dict(), "model_config": model.config}, tmp_path / "model.pt")
    episodes = tmp_path / "episodes"
    for k, (row, length) in enumerate(((4, 20), (18, 12))):  # bars of other lengths: not one bar moved
        write_drawing(episodes / "ep" / "support" / f"class{k}" / "a.png", row, length)
        write_drawing(episodes / "ep" / "query" / f"q{k}.png", row + 1, length - 4)  # no copy of a support image
    (episodes / "predictions.csv").write_text("my own notes\n")
    return tmp_path / "model.pt", episodes


def test_evaluate_only_reads_the_episodes_folder(unlabelled_episodes, tmp_path, capsys):
    checkpoint, episodes = unlabelled_episodes
    before = snapshot(episodes)
    flags = ["--checkpoint", str(checkpoint), "--episodes", str(episodes), "--mc-samples", "2", "--device", "cpu"]
    evaluate.main(flags)
    assert snapshot(episodes) == before
    rows = (tmp_path / "episodes-predictions" / "predictions.csv").read_text().splitlines()
    assert rows[0] == "episode,file,predicted,probability" and len(rows) == 3
    refused(evaluate.main, *flags, "--out", episodes / "out", text=f"lies inside --episodes {episodes}",
            roots=[tmp_path], capsys=capsys)
    refused(evaluate.main, *flags, "--out", episodes, text=f"--out {episodes} is --episodes {episodes}",
            roots=[tmp_path], capsys=capsys)


# ---- the principle beyond the reproductions

def test_links_where_a_run_would_write_are_refused(omniglot_data, run_copy, tmp_path, capsys):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "curves.png").write_bytes(b"the user's picture")
    shutil.rmtree(run_copy / "figures")
    (run_copy / "figures").symlink_to(outside)
    refused(omniglot_main.main, "--data-dir", omniglot_data, "--save-dir", run_copy, *TINY, "--train-iters", "4",
            "--resume", text="holds figures, which a run writes, but this project did not write them",
            roots=[run_copy, outside], capsys=capsys)
    (run_copy / "figures").unlink()
    (run_copy / "last.pt").rename(outside / "last.pt")
    (run_copy / "last.pt").symlink_to(outside / "last.pt")
    refused(omniglot_main.main, "--data-dir", omniglot_data, "--save-dir", run_copy, *TINY, "--train-iters", "4",
            "--resume", text=f"--resume: {run_copy / 'last.pt'} is not the last.pt this project wrote",
            roots=[run_copy, outside], capsys=capsys)


def test_a_link_as_lock_or_record_is_refused(omniglot_data, tmp_path, capsys):
    outside = tmp_path / "outside.txt"
    outside.write_text("the user's\n")
    for name in (LOCK_FILE, RECORD):
        folder = tmp_path / name.strip(".")
        folder.mkdir()
        (folder / name).symlink_to(outside)
        refused(omniglot_main.main, "--data-dir", omniglot_data, "--save-dir", folder, *TINY,
                text=str(folder), roots=[tmp_path], capsys=capsys)


def test_files_changed_since_the_run_wrote_them_are_not_replaced(omniglot_data, run_copy, capsys):
    (run_copy / "results.json").write_text('{"my": "edit"}\n')
    for flags in (["--overwrite"], ["--resume", "--train-iters", "4"]):
        refused(omniglot_main.main, "--data-dir", omniglot_data, "--save-dir", run_copy, *TINY, *flags,
                text="holds results.json, which a run writes, but this project did not write them",
                roots=[run_copy], capsys=capsys)


def test_a_fifo_where_a_run_writes_is_refused_without_waiting_on_it(omniglot_data, run_copy):
    """Opening a FIFO to read it waits for a writer: the ownership check must not (subprocesses, so that a
    wait fails the test by its timeout instead of hanging it)."""
    for name, flags in (("figures/curves.png", ["--resume", "--train-iters", "4"]), ("last.pt", ["--overwrite"])):
        (run_copy / name).rename(run_copy / f"{name}.kept")
        os.mkfifo(run_copy / name)
        assert_refused(REPO_ROOT / "omniglot" / "main.py", "--data-dir", omniglot_data, "--save-dir", run_copy,
                       *TINY, *flags, text=f"holds {name}, which a run writes, but this project did not write",
                       roots=[run_copy])
        (run_copy / name).unlink()
        (run_copy / f"{name}.kept").rename(run_copy / name)


def test_a_folder_named_as_a_run_file_is_refused_before_training(omniglot_data, run_copy, capsys):
    (run_copy / "results.json").unlink()
    (run_copy / "results.json").mkdir()
    refused(omniglot_main.main, "--data-dir", omniglot_data, "--save-dir", run_copy, *TINY, "--train-iters", "4",
            "--resume", text="holds results.json, which a run writes, but this project did not write them",
            roots=[run_copy], capsys=capsys)


def test_a_run_folder_of_another_experiment_is_refused(run_copy, tmp_path, capsys):
    refused(mimgnet_main.main, "--data-dir", write_features(tmp_path / "features"), "--save-dir", run_copy,
            "--latent-size", "4", "--eval-shots", "1", "--eval-episodes", "2", "--device", "cpu", "--overwrite",
            text=f"--save-dir {run_copy} holds files of another kind (Omniglot run", roots=[run_copy], capsys=capsys)


def test_a_damaged_record_leaves_the_folder_alone(omniglot_data, run_copy, capsys):
    (run_copy / RECORD).write_text("{not json")
    refused(omniglot_main.main, "--data-dir", omniglot_data, "--save-dir", run_copy, *TINY, "--overwrite",
            text="cannot read the record of what this project wrote here", roots=[run_copy], capsys=capsys)


def test_copies_of_a_runs_files_without_its_record_are_the_users(omniglot_data, run_copy, tmp_path, capsys):
    """The files of a run copied with cp (no record) are byte for byte what a run writes, config.json with the
    data's digest included: no content proves them written there by this project, so --overwrite, --resume
    and --eval-only --save-dir refuse the folder and every file stays."""
    copied = tmp_path / "copied"
    copied.mkdir()
    for name in ("last.pt", "best_1shot.pt", "metrics.csv", "config.json", "results.json"):
        shutil.copy(run_copy / name, copied / name)
    (copied / "notes.txt").write_text("mine\n")
    text = (f"--save-dir {copied} holds best_1shot.pt, config.json, last.pt, metrics.csv, notes.txt, results.json "
            "but no record")
    for flags in (["--overwrite"], ["--resume", "--train-iters", "4"]):
        refused(omniglot_main.main, "--data-dir", omniglot_data, "--save-dir", copied, *TINY, *flags, text=text,
                roots=[copied], capsys=capsys)
    refused(omniglot_main.main, "--data-dir", omniglot_data, "--eval-only", "--checkpoint", run_copy / "last.pt",
            "--save-dir", copied, *OMNIGLOT_FLAGS, text=text, roots=[copied], capsys=capsys)


def test_a_plain_run_where_a_stopped_run_left_files_asks_for_overwrite(omniglot_data, run_copy, capsys):
    with OutputFolder(run_copy, "Omniglot run", "--save-dir") as folder:  # only the evaluation results remain
        for name in ("last.pt", "best_1shot.pt", "best_5shot.pt", "results.json", "metrics.csv"):
            assert folder.remove(name)
    refused(omniglot_main.main, "--data-dir", omniglot_data, "--save-dir", run_copy, *TINY,
            text="holds files this project wrote (figures/", roots=[run_copy], capsys=capsys)


def test_draw_figures_writes_only_into_its_own_folder(omniglot_data, run_copy, tmp_path, capsys):
    common = ["--checkpoint", run_copy / "last.pt", "--data-dir", omniglot_data, "--way", "2", "--eval-way", "2",
              "--sample-size", "10", "--query", "1", "--test-mc-sample-size", "2", "--device", "cpu"]
    refused(draw_figures.main, *common, "--out", run_copy,
            text=f"--out {run_copy} holds files of another kind (Omniglot run", roots=[run_copy], capsys=capsys)
    (tmp_path / "a_file").write_text("mine\n")
    refused(draw_figures.main, *common, "--out", tmp_path / "a_file", text="a_file is not a folder", roots=[tmp_path],
            capsys=capsys)
    out = tmp_path / "figures"
    draw_figures.main(list(map(str, [*common, "--out", out, "--metrics", run_copy / "metrics.csv"])))
    (out / "notes.png").write_bytes((out / "curves.png").read_bytes())  # the user's copy of a figure
    capsys.readouterr()
    draw_figures.main(list(map(str, [*common, "--out", out])))  # no --metrics: no curves this time
    assert ("removed the figures of the earlier call there that this one does not draw: curves.png"
            in capsys.readouterr().out)
    assert not (out / "curves.png").exists() and (out / "notes.png").exists()
    (out / "mixture.png").unlink()
    (out / "mixture.png").symlink_to(tmp_path / "a_file")
    refused(draw_figures.main, *common, "--out", out, text=f"{out / 'mixture.png'} was not written by this project",
            roots=[tmp_path], capsys=capsys)


def test_draw_figures_refused_for_its_checkpoint_or_flags_keeps_the_earlier_figures(omniglot_data, run_copy, tmp_path,
                                                                                    capsys):
    """A checkpoint that encodes everything alike (found at the test episode, the third figure) and an MC sample
    count beyond memory are refused before any figure is replaced: the folder keeps one checkpoint's figures."""
    common = ["--data-dir", omniglot_data, "--way", "2", "--eval-way", "2", "--sample-size", "10", "--query", "1",
              "--device", "cpu", "--out", tmp_path / "figures"]
    draw_figures.main(list(map(str, [*common, "--checkpoint", run_copy / "last.pt", "--test-mc-sample-size", "2"])))
    before = snapshot(tmp_path / "figures")
    state = torch.load(run_copy / "last.pt", weights_only=False)
    torch.save({**state, "model": {k: torch.zeros_like(v) if v.is_floating_point() else v
                                   for k, v in state["model"].items()}}, tmp_path / "zero.pt")
    refused(draw_figures.main, *common, "--checkpoint", tmp_path / "zero.pt", "--test-mc-sample-size", "2",
            text="the model encodes all items of an episode alike", roots=[tmp_path], capsys=capsys)
    refused(draw_figures.main, *common, "--checkpoint", run_copy / "last.pt", "--test-mc-sample-size", "10" * 6,
            text=f"--test-mc-sample-size {'10' * 6}: the latent samples of 4 images", roots=[tmp_path], capsys=capsys)
    assert snapshot(tmp_path / "figures") == before


def test_no_command_writes_inside_a_run_folder(omniglot_data, run_copy, tmp_path, capsys):
    """A run writes into its folder for hours: figures, predictions or another run in a subfolder of it would
    make it stop at files it did not write."""
    refused(draw_figures.main, "--checkpoint", run_copy / "last.pt", "--data-dir", omniglot_data, "--device", "cpu",
            "--out", run_copy / "figures", text=f"--out {run_copy / 'figures'} lies inside {run_copy}, a run folder "
                                                "of this project (Omniglot run)", roots=[run_copy], capsys=capsys)
    refused(omniglot_main.main, "--data-dir", omniglot_data, *TINY, "--save-dir", run_copy / "sub" / "run",
            text=f"--save-dir {run_copy / 'sub' / 'run'} lies inside {run_copy}", roots=[run_copy], capsys=capsys)
    assert not (run_copy / "sub").exists()


def test_an_error_removes_only_the_empty_folders_it_created(tmp_path):
    """An error inside the `with` (a result refused after the folder was opened) leaves no empty folder the
    command created; a folder that existed, or one written into, stays."""
    with pytest.raises(RuntimeError):
        with OutputFolder(tmp_path / "new" / "figures", "Omniglot figures", "--out"):
            raise RuntimeError("refused")
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "existing").mkdir()
    with pytest.raises(RuntimeError):
        with OutputFolder(tmp_path / "existing", "Omniglot figures", "--out"):
            raise RuntimeError("refused")
    assert list(tmp_path.iterdir()) == [tmp_path / "existing"] and not any((tmp_path / "existing").iterdir())
    with pytest.raises(RuntimeError):
        with OutputFolder(tmp_path / "written", "Omniglot figures", "--out") as folder:
            folder.write_text("a.txt", "kept")
            raise RuntimeError("refused")
    assert (tmp_path / "written" / "a.txt").read_text() == "kept"
    with OutputFolder(tmp_path / "fine", "Omniglot figures", "--out"):
        pass
    assert (tmp_path / "fine").is_dir()


# ---- a record or a lock file that would reach beyond the folder

@pytest.mark.parametrize("key, entry", [
    ("temporary", "../victim.txt"), ("folders", "../userdir"), ("files", "../victim.txt"),
    ("files", "/absolute/victim.txt"), ("files", "link/a/victim.txt"), ("files", "a\0b"),
])
def test_a_record_that_names_files_outside_the_folder_is_refused(omniglot_data, run_copy, tmp_path, capsys, key,
                                                                  entry):
    """--overwrite deletes what the record lists: an edited record must not reach outside the folder."""
    (tmp_path / "victim.txt").write_text("precious\n")
    (tmp_path / "userdir").mkdir()
    (run_copy / "link").symlink_to(tmp_path)
    record = json.loads((run_copy / RECORD).read_text())
    digest = {"size": 9, "sha256": hashlib.sha256(b"precious\n").hexdigest()}  # the victim's: it would match
    if key == "files":
        record["files"][entry] = digest
    else:
        record[key].append(entry)
    (run_copy / RECORD).write_text(json.dumps(record))
    refused(omniglot_main.main, "--data-dir", omniglot_data, "--save-dir", run_copy, *TINY, "--overwrite",
            text="it names files outside the folder, or files this project does not write", roots=[tmp_path],
            capsys=capsys)
    assert (tmp_path / "victim.txt").read_text() == "precious\n" and (tmp_path / "userdir").is_dir()


def test_a_lock_file_that_is_a_hard_link_or_another_tools_lock_is_not_ours(omniglot_data, tmp_path, capsys):
    pin = tmp_path / "pin.txt"
    pin.write_text("")
    linked = tmp_path / "linked"
    linked.mkdir()
    (linked / LOCK_FILE).hardlink_to(pin)
    refused(omniglot_main.main, "--data-dir", omniglot_data, "--save-dir", linked, *TINY,
            text=f"holds a {LOCK_FILE} with 2 hard links (the folder copied with cp -al or hard links?): a lock "
                 f"shared with another folder would lock both; delete {linked / LOCK_FILE}", roots=[tmp_path],
            capsys=capsys)
    other = tmp_path / "other"
    other.mkdir()
    (other / ".lock").write_text("1234\n")
    refused(omniglot_main.main, "--data-dir", omniglot_data, "--save-dir", other, *TINY,
            text=f"--save-dir {other} holds .lock but no record of this project", roots=[tmp_path], capsys=capsys)


def test_an_empty_lock_file_of_the_users_is_refused_and_kept(tmp_path, capsys):
    """This project's lock file holds its holder's PID from the moment it locks: an empty one is the user's."""
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / LOCK_FILE).touch()
    with pytest.raises(UserError, match=f"--out {folder} holds a {LOCK_FILE} that this project did not write"):
        with OutputFolder(folder, "test", "--out"):
            pass
    assert [p.name for p in folder.iterdir()] == [LOCK_FILE]


def test_a_record_write_killed_before_its_rename_blocks_no_later_command(tmp_path):
    """Killed between writing a record's temporary file and renaming it (at the first record write: no record
    yet; or at a later one), the folder opens as before and the temporary is gone; a user's file of that
    name holding anything but a record of the folder's kind stays, and a folder of only such a file is the
    user's."""
    script = ("import os, sys; from metagmvae import folders\n"
              "def killed(*args, **kwargs): os._exit(9)\n"
              "os.replace = killed\n"
              "with folders.OutputFolder(sys.argv[1], 'test', '--out') as folder:\n"
              "    folder.write_text('a.txt', 'a') if sys.argv[2] == 'later' else folder.claim()\n")
    for when in ("first", "later"):
        out = tmp_path / when
        if when == "later":
            with OutputFolder(out, "test", "--out") as folder:
                folder.write_text("b.txt", "b")
        subprocess.run([sys.executable, "-c", script, str(out), when], cwd=REPO_ROOT, check=False)
        assert len(list(out.glob(f"{RECORD}.*.tmp"))) == 1
        with OutputFolder(out, "test", "--out") as folder:
            folder.write_text("c.txt", "c")
        assert not list(out.glob("*.tmp")) and (out / "c.txt").read_text() == "c"
        expected = ["c.txt"] if when == "first" else ["b.txt", "c.txt"]
        assert sorted(json.loads((out / RECORD).read_text())["files"]) == expected
    users = tmp_path / "users"
    users.mkdir()
    (users / f"{RECORD}.0123abcd.tmp").write_text('{"format": 1, "kind": "another kind"}\n')
    with pytest.raises(UserError, match=f"holds {RECORD}.0123abcd.tmp but no record of this project"):
        with OutputFolder(users, "test", "--out"):
            pass
    assert [p.name for p in users.iterdir()] == [f"{RECORD}.0123abcd.tmp"]


def test_a_full_disk_when_the_lock_is_taken_is_one_line_and_leaves_no_folder(tmp_path, monkeypatch):
    def full(fd, data, offset):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(os, "pwrite", full)
    with pytest.raises(UserError, match=f"cannot lock --out {tmp_path / 'new' / 'out'}: the disk is full"):
        with OutputFolder(tmp_path / "new" / "out", "test", "--out"):
            pass
    assert list(tmp_path.iterdir()) == []


def test_a_data_folder_inside_the_run_folder_is_refused(omniglot_data, run_copy, capsys):
    """The run writes figures/ in its folder: a --data-dir there would be written into."""
    for name in ("train.npy", "val.npy", "test.npy"):
        shutil.copyfile(omniglot_data / name, run_copy / "figures" / name)
    refused(omniglot_main.main, "--data-dir", run_copy / "figures", "--save-dir", run_copy, *TINY, "--overwrite",
            text=f"--data-dir {run_copy / 'figures'} lies inside --save-dir {run_copy}", roots=[run_copy],
            capsys=capsys)


def test_a_killed_write_leaves_no_temporary_file_that_the_record_does_not_list(tmp_path):
    """The temporary file is listed before it exists: a process killed while writing leaves one that the
    next command to open the folder removes (a user's file of a temporary-like name stays)."""
    script = ("import os, sys; from metagmvae.folders import OutputFolder\n"
              "with OutputFolder(sys.argv[1], 'test', '--out') as folder, folder.writing(sys.argv[2]) as f:\n"
              "    f.write(b'half'); f.flush(); os._exit(9)\n")
    out = tmp_path / "out"
    subprocess.run([sys.executable, "-c", script, str(out), "a.bin"], cwd=REPO_ROOT, check=False)
    temporary = [p.name for p in out.glob(".*.tmp")]
    assert len(temporary) == 1
    assert json.loads((out / RECORD).read_text())["temporary"] == temporary
    (out / ".b.bin.0123abcd.tmp").write_text("mine\n")
    with OutputFolder(out, "test", "--out"):
        pass
    assert [p.name for p in out.glob(".*.tmp")] == [".b.bin.0123abcd.tmp"]
    assert json.loads((out / RECORD).read_text())["temporary"] == []
    subprocess.run([sys.executable, "-c", script, str(out), "a.bin"], cwd=REPO_ROOT, check=False)
    with OutputFolder(out, "test", "--out") as folder:
        folder.remove_recorded()  # --overwrite removes them too
    assert [p.name for p in out.glob(".*.tmp")] == [".b.bin.0123abcd.tmp"]


def test_overwrite_that_cannot_remove_a_file_stops_with_one_line(omniglot_data, run_copy, capsys, monkeypatch):
    unlink = os.unlink

    def refuse_last(path, *args, **kwargs):
        if path == "last.pt":
            raise PermissionError(1, "Operation not permitted")
        return unlink(path, *args, **kwargs)
    monkeypatch.setattr(os, "unlink", refuse_last)
    refused(omniglot_main.main, "--data-dir", omniglot_data, "--save-dir", run_copy, *TINY, "--overwrite",
            text=f"cannot remove {run_copy / 'last.pt'}, which this project wrote: Operation not permitted",
            roots=[], capsys=capsys)
    assert (run_copy / "last.pt").exists()


def test_a_symbolic_link_loop_as_any_folder_is_refused_in_one_line(omniglot_data, tmp_path, capsys):
    (tmp_path / "loop_a").symlink_to(tmp_path / "loop_b")
    (tmp_path / "loop_b").symlink_to(tmp_path / "loop_a")
    loop = tmp_path / "loop_a"
    refuse = dict(roots=[tmp_path], capsys=capsys)
    for flag, args in (("--save-dir", ["--data-dir", omniglot_data, "--save-dir", loop]),
                       ("--data-dir", ["--data-dir", loop, "--save-dir", tmp_path / "run"])):
        refused(omniglot_main.main, *args, *TINY, text=f"{flag} {loop}: its symbolic links cannot be followed",
                **refuse)
    refused(evaluate.main, "--checkpoint", tmp_path / "x.pt", "--episodes", loop,
            text=f"--episodes {loop}: its symbolic links cannot be followed", **refuse)
    refused(draw_figures.main, "--checkpoint", loop, "--data-dir", omniglot_data, "--out", tmp_path / "figures",
            text=f"checkpoint {loop} is a symbolic link loop", **refuse)
    assert not (tmp_path / "run").exists() and not (tmp_path / "figures").exists()


def test_a_benchmark_rerun_deletes_no_earlier_run_folder(tmp_path):
    """The sample-accuracy benchmark refuses an --out that still holds the run folder of an earlier run (a file
    of the user's may be in it by now) instead of deleting it."""
    out = tmp_path / "bench"
    with OutputFolder(out, "Omniglot sample benchmark", "--out") as folder:
        folder.claim()
    (out / "run-3").mkdir()
    (out / "run-3" / "my_analysis.txt").write_text("mine\n")
    before = snapshot(tmp_path)
    result = subprocess.run([sys.executable, "benchmarks/omniglot_sample_accuracy.py", "--out", str(out), "--zips",
                             str(tmp_path / "missing.zip"), "--steps-a", "3", "--steps-b", "0"], cwd=REPO_ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and result.stderr == (f"omniglot_sample_accuracy.py: error: --out {out} holds run-3 "
                                                        "of an earlier run: delete or move it yourself, or choose "
                                                        "another --out\n"), result.stderr
    assert snapshot(tmp_path) == before


def test_an_output_path_with_an_unexpanded_tilde_is_refused(omniglot_data, tmp_path, capsys, monkeypatch):
    """--save-dir "~/x" (quoted) is a folder named ~ in the working folder, not the home folder."""
    monkeypatch.chdir(tmp_path)
    refused(omniglot_main.main, "--data-dir", omniglot_data, "--save-dir", "~/x", *TINY,
            text="--save-dir ~/x: the shell did not expand its ~ (quoted?), so it would be a folder named '~' here",
            roots=[tmp_path], capsys=capsys)
    assert not (tmp_path / "~").exists()
    for path, variable in (("$HOME/x", "$HOME"), ("runs/${USER}", "${USER}")):  # '$HOME/x' single-quoted
        refused(omniglot_main.main, "--data-dir", omniglot_data, "--save-dir", path, *TINY, roots=[tmp_path],
                capsys=capsys, text=f"--save-dir {path}: the shell did not expand {variable} (single-quoted, or "
                                    f"read from a file?), so it would be a folder named '{variable}'")
    assert sorted(os.listdir(tmp_path)) == []
