"""The run folder's guards (issue 10): a resume falls back past a missing or damaged checkpoint and never
restarts silently; a changed config is refused unless accepted; one trainer per folder (run.lock);
leftovers of failed writes are removed; --no-resume does not mix runs (unless --overwrite); and the CLI
says each of these in one line."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time

import pytest
import torch
import torch.multiprocessing as mp
import yaml

from hiar.training import run_stage, stage_config
from hiar.training.stages.teacher import TeacherStage
from tests.training_helpers import DATA, TINY, common, free_port, weights


def teacher(out, **kw):
    base = dict(model=TINY, steps=4, checkpoint_every=2, keep_checkpoints=2, ema_decay=0.5, optimizer={"lr": 1e-3})
    base.update(kw)
    return stage_config("teacher", common(out, **base))


def step_dirs(out):
    return sorted(p.name for p in (out / "checkpoints").iterdir() if p.is_dir())


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def damage(folder, how):
    if how == "missing":
        shutil.rmtree(folder)
    elif how == "truncated":  # the marker's sizes no longer match
        path = folder / "model.safetensors"
        path.write_bytes(path.read_bytes()[:100])
    elif how == "truncated_unmarked":  # as written by hiar before the marker: must load to count
        (folder / "complete.json").unlink()
        path = folder / "model_ema.safetensors"
        path.write_bytes(path.read_bytes()[:100])
    elif how == "garbage_state":  # same size, so the marker matches, but it does not load
        path = folder / "state.pt"
        path.write_bytes(b"\0" * path.stat().st_size)
    else:
        raise ValueError(how)


# -- 1. resume: latest names a missing or damaged folder ------------------------------------------


@pytest.mark.parametrize("how", ["missing", "truncated", "truncated_unmarked", "garbage_state"])
def test_resume_falls_back_to_the_newest_usable_checkpoint(tmp_path, capsys, how):
    out = tmp_path / "run"
    run_stage(teacher(out))
    assert (out / "checkpoints/latest").read_text().strip() == "step-0000004"
    damage(out / "checkpoints/step-0000004", how)
    capsys.readouterr()
    summary = run_stage(teacher(out, steps=6))
    assert summary["start_step"] == 2 and summary["end_step"] == 6
    err = capsys.readouterr().err
    assert "step-0000004" in err and "resuming from step-0000002 instead" in err
    # and it is an exact resume: the same weights as a run that was never damaged
    run_stage(teacher(tmp_path / "straight", steps=6))
    a, b = weights(out / "model.safetensors"), weights(tmp_path / "straight/model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_no_usable_checkpoint_is_refused_naming_the_folder(tmp_path):
    from hiar.training.runfolder import ResumeError

    out = tmp_path / "run"
    run_stage(teacher(out))
    damage(out / "checkpoints/step-0000004", "truncated")
    damage(out / "checkpoints/step-0000002", "garbage_state")
    before = {p.name: p.stat().st_mtime_ns for p in (out / "checkpoints").rglob("*")}
    with pytest.raises(ResumeError, match=r"cannot resume .*run: no usable checkpoint in .*checkpoints "
                                          r"\(latest -> step-0000004: model.safetensors is 100 bytes.*step-0000002"):
        run_stage(teacher(out, steps=6))
    assert {p.name: p.stat().st_mtime_ns for p in (out / "checkpoints").rglob("*")} == before  # nothing rewritten
    # every step folder gone but the pointer left: refused too, never a silent restart at step 0
    for name in step_dirs(out):
        shutil.rmtree(out / "checkpoints" / name)
    with pytest.raises(ResumeError, match=r"latest -> step-0000004: missing"):
        run_stage(teacher(out, steps=6))
    assert step_dirs(out) == []


def test_a_missing_latest_pointer_resumes_from_the_newest_folder(tmp_path, capsys):
    out = tmp_path / "run"
    run_stage(teacher(out))
    (out / "checkpoints/latest").unlink()
    capsys.readouterr()
    assert run_stage(teacher(out, steps=6))["start_step"] == 4
    assert "latest is missing: resuming from step-0000004" in capsys.readouterr().err


def test_checkpoints_get_a_marker_and_unmarked_folders_of_older_runs_still_resume(tmp_path):
    out = tmp_path / "run"
    run_stage(teacher(out))
    marker = json.loads((out / "checkpoints/step-0000004/complete.json").read_text())
    assert marker["step"] == 4
    assert set(marker["files"]) == {"model.safetensors", "model_ema.safetensors", "state.pt"}
    assert marker["files"]["state.pt"] == (out / "checkpoints/step-0000004/state.pt").stat().st_size
    for name in step_dirs(out):  # a run folder written by hiar before the marker existed
        (out / "checkpoints" / name / "complete.json").unlink()
    summary = run_stage(teacher(out))  # finished: skipped
    assert summary["start_step"] == summary["end_step"] == 4
    assert run_stage(teacher(out, steps=6))["start_step"] == 4


# -- 2. resume with a changed config ---------------------------------------------------------------


def test_a_changed_config_is_refused_unless_accepted(tmp_path, capsys):
    from hiar.training.runfolder import ConfigChangedError

    out = tmp_path / "run"
    run_stage(teacher(out, steps=2))
    saved = (out / "config.yaml").read_text()
    with pytest.raises(ConfigChangedError, match=r"batch_size: 2 -> 3; optimizer.lr: 0.001 -> 0.002; "
                                                 r"add --accept-config-changes") as err:
        run_stage(teacher(out, steps=4, batch_size=3, optimizer={"lr": 2e-3}))
    assert "\n" not in str(err.value)
    assert (out / "config.yaml").read_text() == saved and step_dirs(out) == ["step-0000002"]

    capsys.readouterr()
    summary = run_stage(teacher(out, steps=4, optimizer={"lr": 2e-3}), accept_config_changes=True)
    assert summary["start_step"] == 2
    assert "optimizer.lr: 0.001 -> 0.002" in capsys.readouterr().err
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    lrs = {r["step"]: r["lr_model"] for r in log if "lr_model" in r}
    assert lrs == {1: 1e-3, 2: 1e-3, 3: 2e-3, 4: 2e-3}  # the new value is used, not the checkpoint's
    event = next(r for r in log if r.get("event") == "config_changed")
    assert event["step"] == 2 and event["changes"] == {"optimizer.lr": ["0.001", "0.002"]}
    assert yaml.safe_load((out / "config.yaml").read_text())["optimizer"]["lr"] == 2e-3
    assert (out / "config.previous-1.yaml").read_text() == saved
    state = torch.load(out / "checkpoints/step-0000004/state.pt", weights_only=True)
    assert state["optimizers"]["model"]["param_groups"][0]["lr"] == 2e-3
    # resumed again with the now-recorded config: no question asked
    assert run_stage(teacher(out, steps=4, optimizer={"lr": 2e-3}))["start_step"] == 4


def test_more_steps_and_watching_keys_may_change_freely(tmp_path, capsys):
    out = tmp_path / "run"
    run_stage(teacher(out, steps=2))
    capsys.readouterr()
    assert run_stage(teacher(out, steps=2))["start_step"] == 2  # the same config: silent
    assert "config" not in capsys.readouterr().err
    summary = run_stage(teacher(out, steps=3, log_every=2, progress=True, tensorboard=True, checkpoint_every=3,
                                keep_checkpoints=1, device="cpu"))
    assert summary["start_step"] == 2 and summary["end_step"] == 3
    assert "config" not in capsys.readouterr().err
    assert not list(out.glob("config.previous-*.yaml"))
    assert yaml.safe_load((out / "config.yaml").read_text())["steps"] == 3


def test_the_config_check_reads_older_config_files_through_the_current_class(tmp_path):
    from hiar.config import to_dict
    from hiar.training.runfolder import config_changes

    cfg = teacher(tmp_path)
    saved = yaml.safe_load(yaml.safe_dump(to_dict(cfg)))
    del saved["noise"]["max_sigma"]  # a key added to the class since: at its default, not a change
    saved["optimizer"]["betas"] = (0.9, 0.999)  # a tuple where the file has a list
    assert config_changes(saved, cfg) == []
    saved["noise"]["shift"] = 5.0
    saved["stepz"] = 1  # a key the class no longer knows: compared as written
    assert config_changes(saved, cfg) == [("noise.shift", "5.0", "3.0"), ("stepz", "1", "(absent)")]


# -- 3. one trainer per folder ----------------------------------------------------------------------


def test_a_second_trainer_on_the_same_folder_fails_at_once(tmp_path, monkeypatch):
    from hiar.training.runfolder import RunLockedError

    out = tmp_path / "run"
    started, release = threading.Event(), threading.Event()
    original = TeacherStage.step
    first = {}

    def wait_in_first(self, step):
        if step == 1 and threading.current_thread() is first.get("thread"):
            started.set()
            release.wait(60)
        return original(self, step)

    monkeypatch.setattr(TeacherStage, "step", wait_in_first)
    results = {}
    thread = threading.Thread(target=lambda: results.update(summary=run_stage(teacher(out))))
    first["thread"] = thread
    thread.start()
    try:
        assert started.wait(60)
        lock = json.loads((out / "run.lock").read_text())
        assert lock["pid"] == os.getpid() and lock["host"]
        t0 = time.perf_counter()
        with pytest.raises(RunLockedError, match=rf"in use by another hiar train \(PID {os.getpid()} on ") as err:
            run_stage(teacher(out))
        assert time.perf_counter() - t0 < 5 and "\n" not in str(err.value)
    finally:
        release.set()
        thread.join(60)
    assert results["summary"]["end_step"] == 4  # the first run was not disturbed
    assert not (out / "run.lock").exists()


def test_a_stale_lock_is_taken_over_with_a_note(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    pid = dead_pid()
    (out / "run.lock").write_text(json.dumps({"pid": pid, "host": "elsewhere"}))
    run_stage(teacher(out, steps=2))
    err = capsys.readouterr().err
    assert f"took over the stale lock {out / 'run.lock'} of PID {pid} on elsewhere" in err
    assert not (out / "run.lock").exists()


def test_a_file_system_without_locks_runs_with_a_note(tmp_path, monkeypatch, capsys):
    import errno
    import fcntl

    def no_locks(fd, operation):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    assert run_stage(teacher(tmp_path / "run", steps=1))["end_step"] == 1
    assert "cannot lock" in capsys.readouterr().err and not (tmp_path / "run/run.lock").exists()


@pytest.mark.parametrize("crash", [KeyboardInterrupt, RuntimeError])
def test_the_lock_is_released_on_errors_and_ctrl_c(tmp_path, monkeypatch, crash):
    out = tmp_path / "run"
    original = TeacherStage.step

    def crash_at_3(self, step):
        if step == 3:
            assert (out / "run.lock").is_file()
            raise crash("stop")
        return original(self, step)

    monkeypatch.setattr(TeacherStage, "step", crash_at_3)
    with pytest.raises(crash):
        run_stage(teacher(out))
    assert not (out / "run.lock").exists()
    monkeypatch.setattr(TeacherStage, "step", original)
    assert run_stage(teacher(out))["start_step"] == 2


# -- 4. leftovers of failed writes -----------------------------------------------------------------


def test_leftovers_of_a_failed_write_are_removed_on_the_next_start(tmp_path, capsys):
    out = tmp_path / "run"
    run_stage(teacher(out, steps=2))
    ckpt = out / "checkpoints"
    left = ckpt / f".tmp-step-0000004-{dead_pid()}"
    left.mkdir()
    (left / "model.safetensors").write_bytes(b"half")
    (ckpt / ".latest.abcd_123.tmp").write_text("step-0000004")
    (out / ".model.safetensors.k2j4h5g6.tmp").write_bytes(b"half")
    busy = ckpt / f".tmp-step-0000004-{os.getppid()}"  # a running process's: not ours to remove
    busy.mkdir()
    (out / "notes.tmp").write_text("mine")  # not a trainer's name
    capsys.readouterr()
    assert run_stage(teacher(out, steps=4))["start_step"] == 2
    err = capsys.readouterr().err
    assert "removed what an interrupted write left" in err and left.name in err
    assert not left.exists() and not (ckpt / ".latest.abcd_123.tmp").exists()
    assert not (out / ".model.safetensors.k2j4h5g6.tmp").exists()
    assert busy.is_dir() and f"PID {os.getppid()} is running" in err
    assert (out / "notes.tmp").read_text() == "mine"


def test_a_failed_checkpoint_write_leaves_no_temporary_folder(tmp_path, monkeypatch):
    import hiar.checkpoint

    out = tmp_path / "run"
    real = hiar.checkpoint.save_model

    def disk_full(model, path, **kw):
        if "step-0000004" in str(path):
            raise OSError(28, "No space left on device")
        return real(model, path, **kw)

    monkeypatch.setattr(hiar.checkpoint, "save_model", disk_full)
    with pytest.raises(OSError, match="No space"):
        run_stage(teacher(out))
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["latest", "step-0000002"]


# -- 5. --no-resume on a used folder ----------------------------------------------------------------


def test_no_resume_refuses_a_folder_with_checkpoints_unless_overwrite(tmp_path, capsys):
    from hiar.training import RunFolderError

    out = tmp_path / "run"
    run_stage(teacher(out, steps=2, checkpoint_every=1))
    log = (out / "log.jsonl").read_text()
    with pytest.raises(RunFolderError, match=r"holds checkpoints of an earlier run \(step-0000001, step-0000002\).*"
                                             r"--overwrite"):
        run_stage(teacher(out, steps=3, checkpoint_every=3), resume=False)
    assert step_dirs(out) == ["step-0000001", "step-0000002"] and (out / "log.jsonl").read_text() == log

    capsys.readouterr()
    summary = run_stage(teacher(out, steps=3, checkpoint_every=3), resume=False, overwrite=True)
    assert summary["start_step"] == 0 and summary["end_step"] == 3
    assert "--overwrite: removed the earlier run's checkpoints/" in capsys.readouterr().err
    assert step_dirs(out) == ["step-0000003"]  # the old run's step folders are gone
    assert [json.loads(line)["step"] for line in (out / "log.jsonl").read_text().splitlines()] == [1, 2, 3]


def test_running_a_finished_stage_again_keeps_its_model_file(tmp_path, capsys):
    """A finished run is not re-exported: its model file (whose metadata names the commit that made
    it) stays byte for byte what was evaluated; a longer ``steps`` still continues and exports."""
    out = tmp_path / "run"
    run_stage(teacher(out, steps=2, checkpoint_every=1))
    model = out / "model.safetensors"
    before, mtime = model.read_bytes(), model.stat().st_mtime_ns
    capsys.readouterr()
    summary = run_stage(teacher(out, steps=2, checkpoint_every=1))
    assert summary["start_step"] == summary["end_step"] == 2
    assert model.read_bytes() == before and model.stat().st_mtime_ns == mtime
    assert f"already finished at step 2/2; {model} is kept" in capsys.readouterr().err
    assert run_stage(teacher(out, steps=3, checkpoint_every=1))["end_step"] == 3
    assert model.stat().st_mtime_ns != mtime


def test_the_model_names_the_commit_given_where_the_code_has_no_git_folder(tmp_path, monkeypatch):
    """A copy of the tree without .git (a GPU machine, say) names its commit through HIAR_CODE_COMMIT."""
    from hiar.checkpoint import read_checkpoint

    monkeypatch.setenv("HIAR_CODE_COMMIT", "0123abcd")
    out = tmp_path / "run"
    run_stage(teacher(out, steps=1))
    meta = read_checkpoint(out / "model.safetensors").metadata
    assert meta["commit"] == "0123abcd" and meta["trained_on"] == "cpu x1"


def test_no_resume_is_fine_on_a_folder_without_checkpoints(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.yaml").write_text("stage: teacher\n")
    assert run_stage(teacher(out, steps=1), resume=False)["end_step"] == 1


# -- the guards under several processes -------------------------------------------------------------


def ddp_runs(rank: int, world: int, port: int, out) -> None:
    """One gloo rank: a run, its resume, then a resume with a changed config (refused on every rank)."""
    import torch.distributed as dist

    from hiar.training.runfolder import ConfigChangedError

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        run_stage(teacher(out, steps=2, batch_size=1))
        start = run_stage(teacher(out, steps=4, batch_size=1))["start_step"]
        try:
            run_stage(teacher(out, steps=4, batch_size=1, optimizer={"lr": 5e-3}))
            refusal = None
        except ConfigChangedError as err:
            refusal = str(err)
        dist.barrier()
        (out / f"rank{rank}.json").write_text(json.dumps({"start": start, "refusal": refusal}))
    finally:
        dist.destroy_process_group()


def test_guards_under_two_gloo_ranks(tmp_path):
    out = tmp_path / "ddp"
    ctx = mp.start_processes(ddp_runs, args=(2, free_port(), out), nprocs=2, join=False, start_method="spawn")
    deadline = time.time() + 240
    while not ctx.join(timeout=5):
        if time.time() > deadline:
            for p in ctx.processes:
                p.kill()
            pytest.fail("the ranks did not finish (one waits for the other)")
    for rank in range(2):
        result = json.loads((out / f"rank{rank}.json").read_text())
        assert result["start"] == 2
        assert result["refusal"] and "optimizer.lr: 0.001 -> 0.005" in result["refusal"]
    assert not (out / "run.lock").exists()


# -- 6. the CLI: one line, non-zero exit -----------------------------------------------------------


def test_cli_reports_each_run_folder_error_in_one_line(tmp_path, capsys, monkeypatch):
    from hiar.cli.main import main
    from hiar.training.runfolder import ConfigChangedError, RunLock

    monkeypatch.delenv("HIAR_DEBUG", raising=False)
    config = tmp_path / "teacher.yaml"
    config.write_text(yaml.safe_dump({"stage": "teacher", "model": TINY, "data": DATA, "batch_size": 2, "steps": 2,
                                      "checkpoint_every": 1, "optimizer": {"lr": 1e-3}, "progress": True,
                                      "log_every": 1, "tensorboard": False}))
    out = tmp_path / "run"
    recipe = ["train", str(config), "--set", f"output_dir={out}", "--set", "progress=false"]

    def hiar(*extra):
        capsys.readouterr()
        rc = main([*recipe, *extra])
        captured = capsys.readouterr()
        hiar.out = captured.out
        return rc, captured.err

    def one_error_line(err):
        assert err.startswith("hiar train: error: ") and err.count("\n") == 1 and "Traceback" not in err
        return err

    assert hiar()[0] == 0
    rc, err = hiar()  # the recipe run again with the same overrides: silent skip
    assert rc == 0 and "error" not in err and "config" not in err
    rc, err = hiar("--set", "optimizer.lr=2.0e-3")
    assert rc == 2 and "optimizer.lr: 0.001 -> 0.002" in one_error_line(err) and "--accept-config-changes" in err
    rc, err = hiar("--no-resume")
    assert rc == 2 and "--overwrite" in one_error_line(err)
    lock = RunLock(out)
    lock.acquire()
    try:
        rc, err = hiar()
        assert rc == 2 and f"PID {os.getpid()}" in one_error_line(err)
    finally:
        lock.release()
    rc, err = hiar("--overwrite", "--resume")
    assert rc == 2 and "--overwrite" in one_error_line(err)
    monkeypatch.setenv("HIAR_DEBUG", "1")
    with pytest.raises(ConfigChangedError):
        main([*recipe, "--set", "optimizer.lr=2.0e-3"])
    monkeypatch.delenv("HIAR_DEBUG")
    rc, err = hiar("--set", "optimizer.lr=2.0e-3", "--set", "steps=3", "--accept-config-changes")
    assert rc == 0 and "finished at step 3/3" in hiar.out and "optimizer.lr: 0.001 -> 0.002" in err
    for name in step_dirs(out):
        shutil.rmtree(out / "checkpoints" / name)
    rc, err = hiar("--set", "optimizer.lr=2.0e-3", "--set", "steps=3")
    assert rc == 2 and "no usable checkpoint" in one_error_line(err)
    rc, err = hiar("--set", "steps=3", "--overwrite")
    assert rc == 0 and "--overwrite: removed" in err
