"""A run folder never loses a file: one process trains in it at a time, --overwrite removes only the files
of a run, every check comes before the first write, and a damaged resume, a full disk, a diverged loss
or a Ctrl-C end in one line that says what is kept and where the run can continue."""
import errno
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from metagmvae.folders import LOCK_FILE, RECORD, OutputFolder, RunDir
from metagmvae.gmvae import ItemsAlike
from metagmvae import runfiles
from metagmvae.runfiles import UserError, load_checkpoint
from metagmvae.training import TrainingDiverged, save_after_validation
from mimgnet import main as mimgnet_main
from omniglot import main as omniglot_main
from omniglot import trainer as omniglot_trainer
from omniglot.model import OmniglotGMVAE
from simclr import main as simclr_main

from .conftest import REPO_ROOT, interrupted_at_call, torchrun
from .test_hostile_inputs import (OMNIGLOT_FLAGS, assert_refused, assert_refused_in_process, check_refusal,
                                  snapshot)
from .test_reliability import write_features

PROGRESS_BAR = re.compile(r"\d+%\|.*\| *\d+/\d+ \[")  # tqdm's lines on stderr


def error_lines(stderr):
    """The lines of stderr that are not tqdm progress bars."""
    return [line for line in stderr.splitlines() if line.strip() and not PROGRESS_BAR.search(line)]


def train_args(data, save_dir, *flags):
    return ["--data-dir", str(data), "--save-dir", str(save_dir), *OMNIGLOT_FLAGS, "--freq-iters", "2",
            *map(str, flags)]


def run_in_process(main, argv, capsys):
    """main(argv) in this process -> (exit code, stdout, stderr)."""
    capsys.readouterr()
    try:
        main(argv)
        code = 0
    except SystemExit as e:
        code = e.code
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture(scope="module")
def trained_run(omniglot_data, tmp_path_factory):
    """A finished 4-step Omniglot run of seed 1 (checkpoints at steps 2 and 4)."""
    save = tmp_path_factory.mktemp("trained") / "run"
    omniglot_main.main(train_args(omniglot_data, save, "--train-iters", "4", "--seed", "1"))
    return save


@pytest.fixture
def run_copy(trained_run, tmp_path):
    return shutil.copytree(trained_run, tmp_path / "run")


def test_two_runs_started_together_one_trains_the_other_is_refused(omniglot_data, tmp_path):
    """Two commands launched back to back on one new folder: both pass their checks at about the same moment,
    then one takes the folder and trains (30 steps) while the other is refused."""
    save = tmp_path / "run"
    processes = {seed: subprocess.Popen([sys.executable, "omniglot/main.py",
                                         *train_args(omniglot_data, save, "--train-iters", "30", "--freq-iters", "10",
                                                     "--seed", seed)],
                                        cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for seed in (1, 2)}
    stderr = {seed: process.communicate(timeout=300)[1] for seed, process in processes.items()}
    [winner] = [seed for seed, process in processes.items() if process.returncode == 0]
    [loser] = [seed for seed, process in processes.items() if process.returncode != 0]
    check_refusal(processes[loser].returncode, stderr[loser], f"--save-dir {save} is in use: another process (PID "
                  f"{processes[winner].pid}) is writing in it; wait for it to end or choose another --save-dir", False)
    assert json.loads((save / "config.json").read_text())["seed"] == winner
    assert json.loads((save / "results.json").read_text())["config"]["seed"] == winner
    assert load_checkpoint(save / "last.pt")["config"]["seed"] == winner
    assert not (save / LOCK_FILE).exists()


@pytest.mark.parametrize("main, flags", [
    (omniglot_main.main, ["--resume"]),
    (mimgnet_main.main, []),
    (simclr_main.main, ["--batch-size", "2", "--hidden-size", "4", "--device", "cpu"]),
])
def test_a_folder_in_use_is_refused_by_every_command(omniglot_data, simclr_data, run_copy, tmp_path, capsys, main,
                                                     flags):
    held = tmp_path / "held"
    if main is omniglot_main.main:
        held, kind = run_copy, "Omniglot run"
        argv = train_args(omniglot_data, held, "--train-iters", "6", *flags)
    elif main is mimgnet_main.main:
        kind = "Mini-ImageNet run"
        argv = ["--data-dir", write_features(tmp_path / "features"), "--save-dir", held, "--latent-size", "4",
                "--eval-shots", "1", "--eval-episodes", "2", "--device", "cpu", "--overwrite"]
    else:
        kind = "SimCLR run"
        argv = ["--data-dir", simclr_data, "--save-dir", held, "--feature-save-dir", tmp_path / "out",
                "--overwrite", *flags]
    with OutputFolder(held, kind, "--save-dir"):  # held by this process
        assert_refused_in_process(main, *argv, text=f"is in use: another process (PID {os.getpid()}) is writing",
                                  roots=[held], capsys=capsys)


def test_under_torchrun_rank_0_checks_the_lock_and_every_process_stops(omniglot_data, run_copy):
    before = snapshot(run_copy)
    with OutputFolder(run_copy, "Omniglot run", "--save-dir"):
        result = torchrun(*train_args(omniglot_data, run_copy, "--overwrite"))
    assert result.returncode != 0
    assert result.stderr.count(f"is in use: another process (PID {os.getpid()}) is writing in it") == 2  # both ranks
    assert snapshot(run_copy) == before


def test_a_killed_holder_leaves_no_lock(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", "import time; from metagmvae.folders import OutputFolder\n"
                               f"with OutputFolder({str(tmp_path)!r}, 'Omniglot run', '--save-dir'):\n"
                               "    print(flush=True); time.sleep(300)"],
                              cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True)
    holder.stdout.readline()
    with pytest.raises(UserError, match=f"PID {holder.pid}"):
        with OutputFolder(tmp_path, "Omniglot run", "--save-dir"):
            pass
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    holder.stdout.close()
    assert (tmp_path / LOCK_FILE).exists()  # the file stays, the lock is gone with its process
    with OutputFolder(tmp_path, "Omniglot run", "--save-dir"):
        assert (tmp_path / LOCK_FILE).read_text() == f"meta-gmvae PID {os.getpid()}\n"
    assert not (tmp_path / LOCK_FILE).exists()


def test_overwrite_removes_only_the_files_of_a_run(omniglot_data, run_copy, capsys):
    torch.save({"weights": torch.arange(5.0)}, run_copy / "my_pretrained.pt")
    (run_copy / "notes.txt").write_text("lr sweep: try 1e-4 next\n")
    (run_copy / "figures" / "sketch.svg").write_text("<svg/>\n")
    mine = snapshot(run_copy)
    mine = {p: data for p, data in mine.items() if p.name in ("my_pretrained.pt", "notes.txt", "sketch.svg")}
    code, out, err = run_in_process(omniglot_main.main, train_args(omniglot_data, run_copy, "--train-iters", "2",
                                                                    "--seed", "2", "--overwrite"), capsys)
    assert code == 0, err
    assert (f"replaced the run in {run_copy}; kept the files this project did not write: figures/, my_pretrained.pt, "
            "notes.txt") in out
    assert {p: p.read_bytes() for p in mine} == mine
    assert json.loads((run_copy / "config.json").read_text())["seed"] == 2
    assert load_checkpoint(run_copy / "last.pt")["step"] == 2


def test_overwrite_refuses_files_of_our_names_that_no_run_of_ours_wrote(omniglot_data, tmp_path, capsys):
    folder = tmp_path / "mine"
    folder.mkdir()
    torch.save({"weights": torch.zeros(2)}, folder / "last.pt")
    (folder / "results.json").write_text('{"accuracy": 0.9}\n')
    for flags in ([], ["--overwrite"]):
        assert_refused_in_process(omniglot_main.main, *train_args(omniglot_data, folder, *flags),
                                  text=f"--save-dir {folder} holds last.pt, results.json but no record of this project "
                                       f"({RECORD})", roots=[folder], capsys=capsys)


@pytest.mark.parametrize("flags, text", [
    (["--lr", "nan"], "--lr must be a finite number > 0 (got nan)"),
    (["--eval-way", "9"], "--eval-way 9 is larger than the 8 classes of the val split"),
])
def test_overwrite_checks_every_flag_and_the_data_before_removing(omniglot_data, run_copy, capsys, flags, text):
    assert_refused_in_process(omniglot_main.main, *train_args(omniglot_data, run_copy, "--overwrite", *flags),
                              text=text, roots=[run_copy], capsys=capsys)


def test_a_run_stopped_before_its_first_checkpoint_does_not_block_a_rerun(omniglot_data, tmp_path, capsys,
                                                                          monkeypatch):
    save = tmp_path / "run"

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(omniglot_trainer, "train_step", interrupted)
        code, _, err = run_in_process(omniglot_main.main, train_args(omniglot_data, save, "--train-iters", "2"),
                                      capsys)
    assert code == 130 and error_lines(err) == [
        "omniglot/main.py: error: interrupted (Ctrl-C); the run wrote no checkpoint yet: run again without --resume "
        "to start it anew"]
    assert sorted(p.name for p in save.iterdir()) == [RECORD, "config.json"]
    assert_refused_in_process(omniglot_main.main, *train_args(omniglot_data, save, "--train-iters", "2", "--resume"),
                              text=f"--resume: {save} holds no last.pt (the run wrote no checkpoint yet); run without "
                                   "--resume to start the run anew", roots=[save], capsys=capsys)
    code, _, err = run_in_process(omniglot_main.main, train_args(omniglot_data, save, "--train-iters", "2"), capsys)
    assert code == 0, err
    assert load_checkpoint(save / "last.pt")["step"] == 2


@pytest.mark.parametrize("step, kept", [(1, "no checkpoint was written yet"),
                                        (3, "the last good checkpoint, {save}/last.pt (step 2), is kept")])
def test_a_diverged_loss_says_which_checkpoint_is_kept(omniglot_data, tmp_path, capsys, monkeypatch, step, kept):
    real_train_step = omniglot_trainer.train_step

    def diverging(model, optimizer, x, rng, objective, at, *args):
        if at == step:
            raise TrainingDiverged(f"loss is nan at step {at}")
        return real_train_step(model, optimizer, x, rng, objective, at, *args)

    monkeypatch.setattr(omniglot_trainer, "train_step", diverging)
    save = tmp_path / "run"
    code, _, err = run_in_process(omniglot_main.main, train_args(omniglot_data, save, "--train-iters", "4"), capsys)
    assert code == 2 and error_lines(err) == [
        f"omniglot/main.py: error: loss is nan at step {step}; {kept.format(save=save)}"], err


def after_last_save(monkeypatch, action):
    """Make RunDir.save_checkpoint call action() once a 2-step run's last checkpoint is saved."""
    save_checkpoint = RunDir.save_checkpoint

    def save_then_act(run, name, state):
        save_checkpoint(run, name, state)
        if name == "last" and state["step"] == 2:
            action()
    monkeypatch.setattr(RunDir, "save_checkpoint", save_then_act)


def test_the_final_test_refuses_a_checkpoint_replaced_during_the_run(omniglot_data, tmp_path, capsys, monkeypatch):
    """A best_*.pt replaced before the test (another model's weights) would put that model's accuracy in
    results.json: the test reads the checkpoints as the run's record lists them."""
    save = tmp_path / "run"

    def replace_best():
        state = load_checkpoint(save / "best_1shot.pt")
        state["model"] = {name: tensor + 1 for name, tensor in state["model"].items()}
        torch.save(state, save / "best_1shot.pt")
    after_last_save(monkeypatch, replace_best)
    code, _, err = run_in_process(omniglot_main.main, train_args(omniglot_data, save, "--train-iters", "2"), capsys)
    assert code == 2 and error_lines(err) == [
        f"omniglot/main.py: error: {save / 'best_1shot.pt'} is not the checkpoint this run wrote (changed since, not "
        f"in its record {RECORD}, or a link), so the test would score another model: put the run's own file back "
        "and run the same command with --resume to test it"], err
    assert not (save / "results.json").exists()


def test_a_run_folder_moved_during_the_run_is_tested_and_finished_where_it_is(omniglot_data, tmp_path, capsys,
                                                                             monkeypatch):
    """The folder renamed after its last checkpoint: the figures read its metrics.csv and the test its
    checkpoints where the folder is now, not at the old path (which holds another folder), and results.json
    lands beside them."""
    save, moved = tmp_path / "run", tmp_path / "moved"

    def move():
        save.rename(moved)
        save.mkdir()
    after_last_save(monkeypatch, move)
    code, _, err = run_in_process(omniglot_main.main, train_args(omniglot_data, save, "--train-iters", "2"), capsys)
    assert code == 0, err
    assert set(json.loads((moved / "results.json").read_text())["test"]) == {"5way-1shot", "5way-5shot"}
    assert (moved / "figures" / "curves.png").is_file()  # from its own metrics.csv, read where it is now
    assert os.listdir(save) == []


def test_a_run_folder_deleted_during_the_run_ends_in_one_line(omniglot_data, tmp_path, capsys, monkeypatch):
    save = tmp_path / "run"
    after_last_save(monkeypatch, lambda: shutil.rmtree(save))
    code, _, err = run_in_process(omniglot_main.main, train_args(omniglot_data, save, "--train-iters", "2"), capsys)
    assert code == 2 and len(error_lines(err)) == 1 and "Traceback" not in err, err
    assert f"{save} no longer exists (deleted while this command ran)" in err


def test_a_model_trained_into_encoding_items_alike_is_said_to_have_diverged(omniglot_data, tmp_path, capsys,
                                                                           monkeypatch):
    """A loss that grows huge but stays finite: the validation finds the items encoded alike. The line says the
    training diverged and that --resume would continue from the diverged weights, not that the items are alike."""
    real_validate = omniglot_trainer.validate
    calls = []

    def diverged_at_second(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise ItemsAlike("the model encodes all items of an episode alike (...)")
        return real_validate(*args, **kwargs)

    monkeypatch.setattr(omniglot_trainer, "validate", diverged_at_second)
    save = tmp_path / "run"
    code, _, err = run_in_process(omniglot_main.main, train_args(omniglot_data, save, "--train-iters", "4"), capsys)
    assert code == 2 and error_lines(err) == [
        "omniglot/main.py: error: the model encodes all items of an episode alike (...). Here the model is the one "
        "this run trained: the training diverged (a --lr too high for it; --grad-clip bounds the steps). The "
        f"checkpoints may hold the diverged weights (the last: {save / 'last.pt'} (step 2)), so --resume would "
        "diverge again: start anew with --overwrite and a lower --lr"], err


def test_ctrl_c_says_where_the_run_resumes(omniglot_data, tmp_path):
    save = tmp_path / "run"
    process = subprocess.Popen([sys.executable, "omniglot/main.py",
                                *train_args(omniglot_data, save, "--train-iters", "100000")],
                               cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                               # as from a terminal: a shell starts background jobs (CI's) with SIGINT ignored,
                               # which the child would inherit and Python would respect
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 300
    while not (save / "last.pt").exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr[-3000:]
    assert "Traceback" not in stderr
    [line] = error_lines(stderr)
    step = load_checkpoint(save / "last.pt")["step"]
    assert line == (f"omniglot/main.py: error: interrupted (Ctrl-C); --resume continues the run from "
                    f"{save}/last.pt (step {step})")
    assert step >= 2 and not (save / LOCK_FILE).exists() and not list(save.glob(".*.tmp"))


def test_disk_full_while_writing_a_checkpoint_keeps_every_file(omniglot_data, tmp_path, capsys, monkeypatch):
    save, before = tmp_path / "run", {}
    real_fsync = os.fsync

    def fsync_with_full_disk(fd):
        """The disk fills as the step-4 checkpoint is written: fsync of a .pt once last.pt (step 2) exists."""
        name = os.readlink(f"/proc/self/fd/{fd}")
        if (save / "last.pt").exists() and name.endswith(".tmp") and ".pt." in name:
            before.update((p, data) for p, data in snapshot(save).items() if not p.name.startswith("."))
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync_with_full_disk)
    code, _, err = run_in_process(omniglot_main.main, train_args(omniglot_data, save, "--train-iters", "4"), capsys)
    monkeypatch.undo()
    assert code == 2 and "Traceback" not in err
    [line] = error_lines(err)
    assert re.fullmatch(rf"omniglot/main.py: error: cannot write {save}/(last|best_\dshot).pt: the disk is full "
                        r"\(No space left on device\); \S+ keeps its previous content", line), line
    after = {p: data for p, data in snapshot(save).items() if p.name != RECORD}
    assert before and after == before  # nothing changed at or after the failed write, no .tmp or .lock left
    assert load_checkpoint(save / "last.pt")["step"] == 2
    code, _, err = run_in_process(omniglot_main.main, train_args(omniglot_data, save, "--train-iters", "4",
                                                                  "--resume"), capsys)
    assert code == 0, err
    assert load_checkpoint(save / "last.pt")["step"] == 4


def damage_metrics(run):
    (run / "metrics.csv").unlink()
    return "metrics.csv is missing (it holds the run's rows up to step 4 of last.pt); restore it"


def garble_metrics(run):
    (run / "metrics.csv").write_bytes(b"step,loss\n4,\x00\xff\xfe oops\n")
    return "metrics.csv is damaged (not a table of numbers)"


def cut_metrics(run):
    rows = (run / "metrics.csv").read_text().splitlines()
    (run / "metrics.csv").write_text("\n".join(rows[:-1]) + "\n")
    return "metrics.csv has no row for step 4 of last.pt"


def truncate_last(run):
    (run / "last.pt").write_bytes((run / "last.pt").read_bytes()[:3000])
    return (f"last.pt is not a readable checkpoint (not a file written by torch.save, or a truncated one); expected "
            f"a .pt checkpoint of this project or the authors' .pth; best_1shot.pt, best_5shot.pt in {run} hold "
            "checkpoints of this run: copy one to last.pt to resume")


def truncate_last_beside_foreign_checkpoints(run):
    """best_5shot.pt changed since the run wrote it, best_9shot.pt copied in from elsewhere: neither is named."""
    (run / "last.pt").write_bytes((run / "last.pt").read_bytes()[:3000])
    (run / "best_5shot.pt").write_bytes((run / "best_5shot.pt").read_bytes()[:3000])
    shutil.copy(run / "best_1shot.pt", run / "best_9shot.pt")
    return f"; best_1shot.pt in {run} holds a checkpoint of this run: copy one to last.pt to resume"


def reshape_last(run):
    edit_last(run, lambda state: state["model"].__setitem__("decoder.0.weight", torch.zeros(3)))
    return "last.pt: weights do not fit the Omniglot model (other shapes: decoder.0.weight)"


@pytest.mark.parametrize("damage", [damage_metrics, garble_metrics, cut_metrics, truncate_last,
                                    truncate_last_beside_foreign_checkpoints, reshape_last])
def test_resume_refuses_a_damaged_run_before_writing(omniglot_data, run_copy, capsys, damage):
    text = damage(run_copy)
    assert_refused_in_process(omniglot_main.main, *train_args(omniglot_data, run_copy, "--train-iters", "6",
                                                              "--seed", "1", "--resume"),
                              text=text, roots=[run_copy], capsys=capsys)


def test_the_advice_for_a_damaged_last_pt_resumes_the_run(omniglot_data, run_copy, capsys):
    """Copying best_1shot.pt to last.pt, as the refusal says, resumes from it: its bytes are the run's own
    (the record lists them as best_1shot.pt); a last.pt of other bytes stays refused."""
    truncate_last(run_copy)
    shutil.copyfile(run_copy / "best_1shot.pt", run_copy / "last.pt")
    code, out, err = run_in_process(omniglot_main.main, train_args(omniglot_data, run_copy, "--train-iters", "6",
                                                                    "--seed", "1", "--resume"), capsys)
    assert code == 0 and "5way-1shot:" in out, err
    assert load_checkpoint(run_copy / "last.pt")["step"] == 6
    recorded = json.loads((run_copy / RECORD).read_text())["files"]["last.pt"]
    assert recorded["size"] == (run_copy / "last.pt").stat().st_size


def edit_last(run, edit, keep_record=False):
    """Change the run's last.pt with edit(state), written as the run's own (its record lists the new bytes,
    so --resume reads it) unless keep_record (the record still lists the old bytes)."""
    state = load_checkpoint(run / "last.pt")
    edit(state)
    if keep_record:
        torch.save(state, run / "last.pt")
        return
    with OutputFolder(run, "Omniglot run", "--save-dir") as folder, folder.writing("last.pt") as f:
        torch.save(state, f)


def set_group(key, value):
    return lambda state: state["optimizer"]["param_groups"][0].__setitem__(key, value)


def set_moment(key, value):
    return lambda state: state["optimizer"]["state"][0].__setitem__(key, value)


@pytest.mark.parametrize("edit, text", [
    (lambda s: s.update(step="4"), "last.pt: 'step' is '4', not a count of training steps >= 1"),
    (lambda s: s.update(step=0), "last.pt: 'step' is 0, not a count"),
    (lambda s: s.update(best={"1shot": "x"}), "last.pt: 'best' is {'1shot': 'x'}, not {'<shot>shot': an accuracy"),
    (lambda s: s.update(best={"1shot": float("nan")}), "last.pt: 'best' is {'1shot': nan}"),
    (lambda s: s.update(best={"1shot": float("inf")}), "last.pt: 'best' is {'1shot': inf}"),
    (lambda s: s.update(wall_time_s=-100.0), "last.pt: 'wall_time_s' is -100.0, not a number of seconds >= 0 within "
                                             "float32's range"),
    (lambda s: s.update(wall_time_s=float("nan")), "last.pt: 'wall_time_s' is nan"),
    # finite, but metrics.csv (float32 numbers) could not hold the next row's: the run would refuse its own file
    (lambda s: s.update(wall_time_s=1e300), "last.pt: 'wall_time_s' is 1e+300, not a number of seconds >= 0"),
    (set_group("lr", 1e6), "last.pt: 'optimizer/param_groups/0/lr' is 1000000.0, not 0.001 (what the run's flags"),
    (set_group("betas", (2.0, 2.0)), "'optimizer/param_groups/0/betas' is (2.0, 2.0), not (0.9, 0.999)"),
    (set_group("eps", 0.0), "'optimizer/param_groups/0/eps' is 0.0, not 1e-08"),
    (set_moment("exp_avg", torch.zeros(3)), "last.pt: 'optimizer/state/0/exp_avg' is a torch.float32 tensor of shape "
                                            "(3,), not a torch.float32 tensor of its parameter's shape (8, 1, 3, 3)"),
    (set_moment("exp_avg_sq", -torch.ones(8, 1, 3, 3)), "'optimizer/state/0/exp_avg_sq' holds negative values"),
    (set_moment("step", torch.tensor(2.5)), "'optimizer/state/0/step' is tensor(2.5000), not a count of steps >= 1"),
])
def test_resume_refuses_a_run_state_that_no_run_writes_before_writing(omniglot_data, run_copy, capsys, edit, text):
    edit_last(run_copy, edit)
    assert_refused_in_process(omniglot_main.main, *train_args(omniglot_data, run_copy, "--train-iters", "6",
                                                              "--seed", "1", "--resume"),
                              text=text, roots=[run_copy], capsys=capsys)


def test_resume_reads_no_last_pt_that_differs_from_the_record(omniglot_data, run_copy, capsys):
    """The record proves last.pt ours before any of its fields is read (a step of '4' once gave a TypeError)."""
    edit_last(run_copy, lambda s: s.update(step="4"), keep_record=True)
    assert_refused_in_process(omniglot_main.main, *train_args(omniglot_data, run_copy, "--train-iters", "6",
                                                              "--seed", "1", "--resume"),
                              text=f"--resume: {run_copy}/last.pt is not the last.pt this project wrote",
                              roots=[run_copy], capsys=capsys)


def test_resume_with_fewer_steps_than_done_is_refused(omniglot_data, run_copy, capsys):
    """results.json would record --train-iters 3 for a model of 4 steps; 4 tests the run as it is."""
    assert_refused_in_process(omniglot_main.main, *train_args(omniglot_data, run_copy, "--train-iters", "3",
                                                              "--seed", "1", "--resume"),
                              text=f"--train-iters 3 is below the 4 steps the run in {run_copy} has done: give "
                                   "--train-iters 4 to test it as it is", roots=[run_copy], capsys=capsys)
    code, out, _ = run_in_process(omniglot_main.main, train_args(omniglot_data, run_copy, "--train-iters", "4",
                                                                  "--seed", "1", "--resume"), capsys)
    assert code == 0 and "5way-1shot:" in out
    assert json.loads((run_copy / "results.json").read_text())["train_iters"] == 4


def shifted_copy(data, folder):
    """A copy of the Omniglot arrays whose first training drawing is moved one pixel down: other data."""
    other = shutil.copytree(data, folder)
    drawings = np.load(other / "train.npy")
    drawings[0, 0] = np.roll(drawings[0, 0], 1, axis=0)
    np.save(other / "train.npy", drawings)
    return other


def test_resume_removes_the_results_of_the_runs_earlier_end(omniglot_data, run_copy, capsys, monkeypatch):
    """A finished run continued to more steps and stopped before its end leaves no results.json: the numbers
    of the earlier end were measured on checkpoints the continued run has replaced."""
    monkeypatch.setattr(omniglot_trainer, "save_after_validation", interrupted_at_call(save_after_validation, 2))
    code, out, _ = run_in_process(omniglot_main.main, train_args(omniglot_data, run_copy, "--train-iters", "8",
                                                                 "--seed", "1", "--resume"), capsys)
    assert code == 130
    assert f"removed results.json from {run_copy}: the checkpoints they describe change" in out
    assert not (run_copy / "results.json").exists() and load_checkpoint(run_copy / "last.pt")["step"] == 6


def test_resume_on_other_data_is_refused_and_on_the_same_data_moved_goes_on(omniglot_data, run_copy, tmp_path,
                                                                           capsys):
    other = shifted_copy(omniglot_data, tmp_path / "other")
    digest = load_checkpoint(run_copy / "last.pt")["config"]["data_sha256"]
    assert_refused_in_process(omniglot_main.main, *train_args(other, run_copy, "--train-iters", "6", "--seed", "1",
                                                              "--resume"),
                              text=f"--resume: --data-dir {other} holds other data than the run of {run_copy}/last.pt "
                                   f"trained on (sha256 ", roots=[run_copy], capsys=capsys)
    moved = shutil.copytree(omniglot_data, tmp_path / "moved")
    code, out, _ = run_in_process(omniglot_main.main, train_args(moved, run_copy, "--train-iters", "6", "--seed",
                                                                  "1", "--resume"), capsys)
    assert code == 0 and "5way-1shot:" in out
    results = json.loads((run_copy / "results.json").read_text())
    assert results["config"]["data_sha256"] == digest and results["train_iters"] == 6


def test_resume_of_a_run_saved_without_a_data_digest_is_not_checked(omniglot_data, tmp_path, capsys, monkeypatch):
    """A run of the code before data digests (its config the flags alone) continues, on any data that passes
    the data checks, and its checkpoints get the digest from then on."""
    with monkeypatch.context() as before_digests:
        before_digests.setattr(omniglot_trainer, "run_config", lambda args, splits: vars(args))
        omniglot_main.main(train_args(omniglot_data, tmp_path / "run", "--train-iters", "2", "--seed", "1"))
    assert "data_sha256" not in load_checkpoint(tmp_path / "run" / "last.pt")["config"]
    other = shifted_copy(omniglot_data, tmp_path / "other")
    code, _, err = run_in_process(omniglot_main.main, train_args(other, tmp_path / "run", "--train-iters", "4",
                                                                  "--seed", "1", "--resume"), capsys)
    assert code == 0, err
    assert "data_sha256" in load_checkpoint(tmp_path / "run" / "last.pt")["config"]


def test_eval_only_refuses_a_save_dir_it_cannot_write_before_evaluating(omniglot_data, tmp_path):
    model = OmniglotGMVAE(8, 4)
    torch.save({"model": model.state_dict(), "model_config": model.config}, tmp_path / "model.pt")
    (tmp_path / "results").write_text("not a folder\n")
    for save_dir in (tmp_path / "results", tmp_path / "results" / "eval"):
        assert_refused("omniglot/main.py", "--data-dir", omniglot_data, "--eval-only", "--checkpoint",
                              tmp_path / "model.pt", "--save-dir", save_dir, *OMNIGLOT_FLAGS,
                              text=f"cannot write to --save-dir {save_dir}: {tmp_path / 'results'} is not a folder",
                              roots=[tmp_path])


def test_what_the_system_refuses_on_a_path_and_running_out_of_memory_are_one_line(omniglot_data, tmp_path, capsys,
                                                                                  monkeypatch):
    """A name longer than the file system allows (an OSError naming the path, raised wherever the path is first
    touched) and torch's CPU allocator failing mid-step: one line, exit code 2, the checkpoints kept."""
    long_name = tmp_path / ("j" * 256)
    for flags in (["--save-dir", long_name], ["--data-dir", long_name, "--save-dir", tmp_path / "x"]):
        code, _, err = run_in_process(omniglot_main.main, list(map(str, [
            *train_args(omniglot_data, tmp_path / "run"), *flags])), capsys)
        lines = error_lines(err)
        assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
        assert lines[0].startswith(f"omniglot/main.py: error: {long_name}") and lines[0].endswith(": File name too long")
    save = tmp_path / "run"
    code, _, err = run_in_process(omniglot_main.main, train_args(omniglot_data, save, "--train-iters", "2"), capsys)
    assert code == 0, err
    real_train_step = omniglot_trainer.train_step

    def out_of_memory(model, optimizer, x, rng, objective, at, *args):
        if at == 3:
            raise RuntimeError("[enforce fail at alloc_cpu.cpp:118] DefaultCPUAllocator: can't allocate memory: you "
                               "tried to allocate 1342177280 bytes. Error code 12 (Cannot allocate memory)")
        return real_train_step(model, optimizer, x, rng, objective, at, *args)
    monkeypatch.setattr(omniglot_trainer, "train_step", out_of_memory)
    before = (save / "last.pt").read_bytes()
    code, _, err = run_in_process(omniglot_main.main, train_args(omniglot_data, save, "--train-iters", "4",
                                                                 "--resume"), capsys)
    assert code == 2 and error_lines(err) == [
        "omniglot/main.py: error: out of memory ([enforce fail at alloc_cpu.cpp:118] DefaultCPUAllocator: can't "
        "allocate memory: you tried to allocate 1342177280 bytes. Error code 12 (Cannot allocate memory)): the sizes "
        "given need more memory than this machine has (in a run: the batch, sample or MC sample sizes); files already "
        "written are kept (a run continues with --resume)"], err
    assert (save / "last.pt").read_bytes() == before


def test_an_unwritable_figures_folder_is_refused_at_start(omniglot_data, tmp_path, capsys, monkeypatch):
    """figures/ is written at every validation: a run would train up to the first one, then stop."""
    save = tmp_path / "run"
    code, _, err = run_in_process(omniglot_main.main, train_args(omniglot_data, save, "--train-iters", "2"), capsys)
    assert code == 0, err
    access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode: Path(path) != save / "figures" and access(path, mode))
    code, _, err = run_in_process(omniglot_main.main, train_args(omniglot_data, save, "--train-iters", "4",
                                                                 "--resume"), capsys)
    assert code == 2 and error_lines(err) == [
        f"omniglot/main.py: error: cannot write to --save-dir {save / 'figures'}: {save / 'figures'} is not "
        "writable"], err
    assert load_checkpoint(save / "last.pt")["step"] == 2


def test_a_training_step_beyond_the_machines_memory_is_refused_at_start(omniglot_data, tmp_path, capsys,
                                                                        monkeypatch):
    """The decoder's activations (measured: 5.6 float32 values per decoded image, channel and 14 x 14 pixel)
    are counted before the first step: a run that the system would kill minutes later, without a word."""
    monkeypatch.setattr(runfiles, "physical_memory", lambda: 1_000_000)  # 1 x 10 x 2 images a step, h = 64
    save = tmp_path / "run"
    code, _, err = run_in_process(omniglot_main.main, train_args(omniglot_data, save, "--batch-size", "1",
                                                                 "--hidden-size", "64"), capsys)
    assert code == 2 and error_lines(err) == [
        "omniglot/main.py: error: --hidden-size 64 with 20 images decoded a step (--batch-size x --sample-size x "
        "--train-mc-sample-size): the decoder's activations of one step would take 4.79 MiB, more than the 977 KiB "
        "of memory of this machine"], err
    assert not save.exists()


def test_a_run_stopped_between_its_checkpoints_at_the_first_validation_resumes_from_a_best(omniglot_data, tmp_path,
                                                                                          capsys, monkeypatch):
    """A full disk at best_5shot.pt of the first validation leaves best_1shot.pt and no last.pt; the advice
    (copy a best_*.pt to last.pt) must then work: metrics.csv is written first, so it holds that step's row."""
    save_checkpoint = RunDir.save_checkpoint

    def disk_full_at_best_5shot(run, name, state):
        if name == "best_5shot":
            raise UserError(f"cannot write {run.path / 'best_5shot.pt'}: the disk is full")
        save_checkpoint(run, name, state)
    monkeypatch.setattr(RunDir, "save_checkpoint", disk_full_at_best_5shot)
    save = tmp_path / "run"
    code, _, err = run_in_process(omniglot_main.main, train_args(omniglot_data, save, "--train-iters", "4"), capsys)
    assert code == 2 and "the disk is full" in err
    monkeypatch.undo()
    code, _, err = run_in_process(omniglot_main.main, train_args(omniglot_data, save, "--train-iters", "4",
                                                                 "--resume"), capsys)
    assert code == 2 and "best_1shot.pt in" in err and "copy one to last.pt to resume" in err, err
    shutil.copyfile(save / "best_1shot.pt", save / "last.pt")
    code, _, err = run_in_process(omniglot_main.main, train_args(omniglot_data, save, "--train-iters", "4",
                                                                 "--resume"), capsys)
    assert code == 0, err
    assert load_checkpoint(save / "last.pt")["step"] == 4


def test_ctrl_c_after_the_folder_moved_names_the_checkpoint_where_it_is(omniglot_data, tmp_path, capsys, monkeypatch):
    """The run folder moved mid-run, another folder at the old path: the line names this run's last.pt where
    it is now, not whatever the old path holds."""
    save, moved = tmp_path / "run", tmp_path / "moved"

    def move():
        save.rename(moved)
        save.mkdir()
    after_last_save(monkeypatch, move)
    real_train_step = omniglot_trainer.train_step

    def ctrl_c_at_step_3(model, optimizer, x, rng, objective, at, *args):
        if at == 3:
            raise KeyboardInterrupt
        return real_train_step(model, optimizer, x, rng, objective, at, *args)
    monkeypatch.setattr(omniglot_trainer, "train_step", ctrl_c_at_step_3)
    code, _, err = run_in_process(omniglot_main.main, train_args(omniglot_data, save, "--train-iters", "4"), capsys)
    assert code == 130 and error_lines(err) == [
        f"omniglot/main.py: error: interrupted (Ctrl-C); --resume continues the run from {moved / 'last.pt'} "
        "(step 2)"], err


def test_an_unreadable_file_is_named_as_such_not_as_damaged(omniglot_data, tmp_path, capsys, monkeypatch):
    """No permission to read last.pt (or a recorded data file): the line says so and gives no advice that would
    replace or unrecord an intact file (copy a best_*.pt over last.pt, remove the record). Read permission is
    taken away by making open() refuse it: tests may run as root, whom chmod does not stop."""
    save = tmp_path / "run"
    code, _, err = run_in_process(omniglot_main.main, train_args(omniglot_data, save, "--train-iters", "2"), capsys)
    assert code == 0, err
    data = tmp_path / "data"
    real_open, blocked = open, {"last.pt"}

    def no_permission(path, *args, **kwargs):
        if Path(path).name in blocked:
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, *args, **kwargs)
    monkeypatch.setattr(runfiles, "open", no_permission, raising=False)
    code, _, err = run_in_process(omniglot_main.main, train_args(omniglot_data, save, "--train-iters", "4",
                                                                 "--resume"), capsys)
    assert code == 2 and error_lines(err) == [
        f"omniglot/main.py: error: cannot read checkpoint {save / 'last.pt'} (Permission denied): give this user "
        "read access; the file is left as it is"], err
    with OutputFolder(data, "Omniglot arrays", "--out") as folder:  # a recorded build
        for name in ("train.npy", "val.npy", "test.npy"):
            folder.write_bytes(name, (omniglot_data / name).read_bytes())
    blocked = {"val.npy"}
    code, _, err = run_in_process(omniglot_main.main, train_args(data, tmp_path / "other"), capsys)
    assert code == 2 and error_lines(err) == [
        f"omniglot/main.py: error: cannot read {data / 'val.npy'} (Permission denied): give this user read access; "
        "the file is left as it is"], err


def test_a_lock_file_that_cannot_be_removed_does_not_hide_the_error(tmp_path, monkeypatch):
    """The folder made read-only while a command ran: removing its lock file fails, and must not replace the
    error in flight (the failed write, which names its file) with its own."""
    unlink = os.unlink

    def lock_stays(name, *args, **kwargs):
        if name == LOCK_FILE:
            raise PermissionError(13, "Permission denied", name)
        return unlink(name, *args, **kwargs)
    with pytest.raises(UserError, match="cannot write x.pt: Permission denied"):
        with OutputFolder(tmp_path / "out", "Omniglot run", "--save-dir"):
            monkeypatch.setattr(os, "unlink", lock_stays)
            raise UserError("cannot write x.pt: Permission denied")
