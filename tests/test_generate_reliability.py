"""`hiar generate` under stops and faults (issue 10): every signal and every failure leaves a playable
video of what was made, two runs never share a file, resources do not grow with the asked length or
with --window / --sink, and a broken model is an error, not a garbage video.

The subprocess tests run the real CLI on a random `toy` model (the `toy_checkpoint` fixture) and
open the result with PyAV.
"""

from __future__ import annotations

import functools
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import av
import pytest
import torch

from hiar.cli.main import main
from hiar.generate import World, method_config, write_blocks
from hiar.pipeline import PipelineError, PipelineJob
from hiar.sampling import ContextRule, GridSampler, Order, OrderError, SamplerConfig, check_order
from hiar.video import VideoWriter
from tests.helpers import failing_tiny_model, save_toy_checkpoint, tiny_model

PROMPT = "a fast red circle and a slow blue square on a dark background"
ENDLESS = "999999999999"  # frames: far more than any test waits for (item 11: this costs nothing up front)


def count_frames(path) -> int:
    """Frames PyAV decodes from ``path`` (what a player shows)."""
    with av.open(str(path)) as container:
        return sum(1 for _ in container.decode(video=0))


def hiar_process(*args, **popen) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(
        [str(Path(__file__).resolve().parents[1] / "src"), os.environ.get("PYTHONPATH", "")])}
    return subprocess.Popen([sys.executable, "-m", "hiar.cli.main", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, **popen)


def wait_for_frames(folder: Path, stem: str, proc: subprocess.Popen, seconds: float = 180) -> None:
    """Until the run has written its first block (its partial file exists), then a little more."""
    deadline = time.time() + seconds
    while not list(folder.glob(f"{stem}*.partial.mp4")) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.1)
    if proc.poll() is not None:
        pytest.fail(f"the run ended early: {proc.communicate()[1]}")
    assert list(folder.glob(f"{stem}*.partial.mp4")), "no frames written in time"
    time.sleep(1.0)


def frames_saved(err: str) -> int:
    m = re.search(r"(\d+) frames saved to", err)
    assert m, err
    return int(m.group(1))


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def gone(pid: int, seconds: float = 15) -> bool:
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            return True
        if state == "Z":
            return True
        time.sleep(0.1)
    return False


# -- 7, 8, 11: a real stop signal, single process and --pipeline ----------------------------------


@pytest.mark.parametrize("pipeline, sig, to_group", [
    (False, signal.SIGINT, False),
    (False, signal.SIGTERM, False),  # timeout, schedulers, torchrun
    (False, signal.SIGHUP, False),  # a closed terminal
    (True, signal.SIGINT, True),  # Ctrl-C in a terminal reaches the ranks too
    (True, signal.SIGTERM, False),
], ids=["single-INT", "single-TERM", "single-HUP", "pipeline-INT-group", "pipeline-TERM"])
def test_a_stop_signal_leaves_a_playable_video(tmp_path, toy_checkpoint, pipeline, sig, to_group):
    out = tmp_path / "long.mp4"
    proc = hiar_process("generate", PROMPT, "--frames", ENDLESS, "-o", out, "--quiet", "--checkpoint", toy_checkpoint,
                        *(["--pipeline"] if pipeline else []), start_new_session=True)
    try:
        t0 = time.time()
        wait_for_frames(tmp_path, "long", proc)
        first_frames_s = time.time() - t0
        ranks = children(proc.pid)
        if not pipeline:  # 11: memory does not grow with the asked length
            assert rss_bytes(proc.pid) < 1.5 * 2**30
            assert first_frames_s < 120
        if to_group:
            os.killpg(proc.pid, sig)
        else:
            proc.send_signal(sig)
        _, err = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 128 + sig, err
    assert "interrupted" in err and "Traceback" not in err, err
    saved = frames_saved(err)
    assert saved >= 3 and count_frames(out) == saved  # every frame it reports is in the file, and plays
    assert not list(tmp_path.glob("*.partial.mp4")) and not list(tmp_path.glob(".*.lock"))
    if pipeline:
        assert len(ranks) >= 4 and all(gone(pid) for pid in ranks)  # no rank outlives the run


def test_a_stop_signal_during_a_close_waits_for_it():
    from hiar.signals import Interrupted, exit_code, signals_deferred, stop_signals_raise

    done = []
    with pytest.raises(Interrupted) as stop:
        with stop_signals_raise():
            with signals_deferred():  # what VideoWriter.close runs in
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(0.05)  # the handler has run by now: it only took note
                done.append("closed")
    assert done == ["closed"] and stop.value.signum == signal.SIGTERM and exit_code(stop.value) == 143
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # restored


# -- 4: two runs to one output --------------------------------------------------------------------


def test_each_writer_has_its_own_partial_file_and_a_second_writer_is_refused(tmp_path):
    from hiar.video import VideoBusyError

    path = tmp_path / "v.mp4"
    first = VideoWriter(path)
    first.write(torch.zeros(3, 3, 8, 8))
    with pytest.raises(VideoBusyError, match=rf"{re.escape(str(path))} is being written by another run \(PID {os.getpid()}"):
        VideoWriter(path)
    assert first.close() == path and count_frames(path) == 3
    second = VideoWriter(path)  # free again once the first is closed
    assert second.partial_path != first.partial_path and second.partial_path.name.startswith("v.")
    second.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v.mp4"]


def test_a_second_run_to_the_same_output_is_refused_at_once(tmp_path, toy_checkpoint, capsys):
    out = tmp_path / "shared.mp4"
    proc = hiar_process("generate", PROMPT, "--frames", ENDLESS, "-o", out, "--quiet", "--checkpoint", toy_checkpoint)
    try:
        wait_for_frames(tmp_path, "shared", proc)
        t0 = time.perf_counter()
        code = main(["generate", PROMPT, "--frames", "3", "-o", str(out), "--quiet", "--checkpoint", str(toy_checkpoint)])
        err = capsys.readouterr().err
        assert code == 2 and time.perf_counter() - t0 < 10
        assert f"{out} is being written by another run (PID {proc.pid}" in err and err.count("\n") == 1
        proc.send_signal(signal.SIGINT)
        _, first_err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130
    assert count_frames(out) == frames_saved(first_err)  # the file is the first run's, whole


# -- 8: a failed rank -----------------------------------------------------------------------------


class FirstChannels:
    """A codec for the `tiny` preset's 4 latent channels: the first 3 are the pixels."""

    latent_channels, temporal_factor, spatial_factor = 4, 1, 1

    def decode(self, latents):
        return latents[:, :3].tanh()


def test_a_failed_rank_leaves_a_playable_file_of_every_finished_block(tmp_path):
    from hiar.pipeline import SpawnedPipeline

    text = torch.randn(1, 5, 16, generator=torch.Generator().manual_seed(1))
    # The last rank fails on its 3rd call: blocks 0 and 1 (calls 1 and 2) were final and sent before.
    job = PipelineJob(functools.partial(failing_tiny_model, 3, 3), SamplerConfig(), text, [3], (4, 8, 8), 6, timeout_s=60)
    world = World("tiny", FirstChannels(), None, 8, 8, 16)
    path = tmp_path / "failed.mp4"
    with pytest.raises(PipelineError, match=r"failed on rank3: RuntimeError: boom on rank 3") as err:
        with VideoWriter(path) as writer, SpawnedPipeline(job) as run:
            write_blocks(run, world, 18, writer=writer, progress=False)
    assert "\n" not in str(err.value)
    assert count_frames(path) == 6


def test_the_spawned_pipeline_streams_blocks_as_they_are_final():
    from hiar.pipeline import SpawnedPipeline

    text = torch.randn(1, 5, 16, generator=torch.Generator().manual_seed(1))
    cfg = SamplerConfig(window=6)
    ref = GridSampler(tiny_model(), cfg, text, seeds=[3], latent_shape=(4, 8, 8)).sample(4)
    got = []
    with SpawnedPipeline(PipelineJob(functools.partial(tiny_model), cfg, text, [3], (4, 8, 8), 4)) as run:
        for n, block in run:
            got.append(block)
            assert len(run.block_done_s) == n + 1  # each block arrives on its own, as soon as it is final
    assert (torch.cat(got, dim=2) - ref).abs().max() <= 1e-6


# -- 9: torchrun, another rank killed -------------------------------------------------------------


def rank_of(pid: int) -> int | None:
    try:
        env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return None
    for item in env:
        if item.startswith(b"RANK="):
            return int(item[5:])
    return None


def test_torchrun_pipeline_keeps_a_playable_file_when_another_rank_is_killed(tmp_path, toy_checkpoint):
    out = tmp_path / "tr.mp4"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(
        [str(Path(__file__).resolve().parents[1] / "src"), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "4", "-m", "hiar.cli.main",
         "generate", PROMPT, "--pipeline", "--frames", ENDLESS, "-o", str(out), "--quiet", "--checkpoint", str(toy_checkpoint)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, start_new_session=True)
    try:
        wait_for_frames(tmp_path, "tr", proc, seconds=240)
        ranks = {rank_of(pid): pid for pid in children(proc.pid)}
        assert set(ranks) == {0, 1, 2, 3}, ranks
        os.kill(ranks[0], signal.SIGKILL)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode != 0
    assert out.exists() and not list(tmp_path.glob("*.partial.mp4")), err
    assert count_frames(out) == frames_saved(err) >= 3
    rank3 = [line for line in err.splitlines() if "rank 3" in line or "interrupted" in line]
    assert rank3, err  # the writing rank said, in a line of its own, what it kept


# -- 10: a full disk ------------------------------------------------------------------------------


def test_a_full_disk_is_one_line_and_keeps_the_frames_that_fit(tmp_path, toy_checkpoint):
    """A file-size limit (RLIMIT_FSIZE: writes past it fail with EFBIG) stands in for a disk that fills:
    the same failed write as ENOSPC, without needing a small file system."""
    import resource

    def limit_file_size():
        resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))

    out = tmp_path / "full.mp4"
    proc = hiar_process("generate", PROMPT, "--frames", "300", "-o", out, "--quiet", "--checkpoint", toy_checkpoint,
                        preexec_fn=limit_file_size)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 2 and "Traceback" not in err, err
    line = err.strip().splitlines()[-1]
    assert line.startswith(f"hiar generate: error: writing {out} failed: File too large; {out} keeps the first ")
    kept = int(re.search(r"keeps the first (\d+) of", line).group(1))
    assert 0 < kept < 300 and count_frames(out) == kept
    assert not list(tmp_path.glob("*.partial.mp4")) and not list(tmp_path.glob(".*.lock"))


# -- 11: the order check does not walk the whole run ----------------------------------------------


def test_the_order_check_costs_the_same_for_any_length():
    import tracemalloc

    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        for order, rule in [(Order.DIAGONAL, ContextRule.OUTPUT), (Order.BLOCK_FIRST, ContextRule.CLEAN),
                            (Order.STEP_FIRST, ContextRule.INPUT)]:
            check_order(order, rule, 4, 10**12)
        with pytest.raises(OrderError, match="needs block 0 fully denoised"):
            check_order(Order.STEP_FIRST, ContextRule.CLEAN, 4, 10**12)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert time.perf_counter() - t0 < 1.0 and peak < 1_000_000


# -- 12: --window and --sink are bounded ----------------------------------------------------------


def test_window_and_sink_longer_than_the_video_are_cut_to_it(tmp_path, toy_checkpoint, capsys):
    from hiar.generate import fit_attention

    cfg, notes = fit_attention(method_config("hiar", window=10**12, sink=10**12), num_blocks=10)
    assert (cfg.window, cfg.sink) == (30, 30) and set(notes) == {"window", "sink"}
    out = tmp_path / "w.mp4"
    code = main(["generate", PROMPT, "--frames", "30", "--window", str(10**12), "--sink", str(10**12), "-o", str(out),
                 "--quiet", "--checkpoint", str(toy_checkpoint)])
    err = capsys.readouterr().err
    assert code == 0 and count_frames(out) == 30
    assert f"--window {10**12} is longer than the video (30 latent frames): using 30" in err
    assert f"--sink {10**12} is longer than the video (30 latent frames): using 30" in err


def test_a_window_too_big_for_memory_is_refused_before_allocating(tmp_path, toy_checkpoint, capsys):
    out = tmp_path / "huge.mp4"
    code = main(["generate", PROMPT, "--frames", ENDLESS, "--window", str(10**9), "-o", str(out), "--quiet",
                 "--checkpoint", str(toy_checkpoint)])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and f"--window {10**9} with --sink 0 needs" in err and "lower --window" in err
    assert not list(tmp_path.iterdir())


def test_kv_cache_bytes_is_what_the_caches_hold():
    from hiar.generate import kv_cache_bytes

    model = tiny_model()
    text = torch.randn(1, 5, 16, generator=torch.Generator().manual_seed(1))
    for cfg in (SamplerConfig(window=6, sink=3), SamplerConfig(context=ContextRule.CLEAN, order=Order.BLOCK_FIRST, window=9)):
        sampler = GridSampler(model, cfg, text, seeds=[0], latent_shape=(4, 8, 8))
        sampler.sample(5)
        assert kv_cache_bytes(model, cfg, (4, 8, 8)) == sampler.report.cache_bytes > 0


# -- 13: a broken checkpoint ----------------------------------------------------------------------


def test_a_checkpoint_with_nan_weights_is_an_error_naming_it_and_the_block(tmp_path, capsys):
    ckpt = save_toy_checkpoint(tmp_path / "broken.safetensors", poison=float("nan"))
    out = tmp_path / "nan.mp4"
    code = main(["generate", PROMPT, "--frames", "9", "-o", str(out), "--quiet", "--checkpoint", str(ckpt)])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    (line,) = [line for line in err.splitlines() if "error" in line]
    assert line.startswith(f"hiar generate: error: model {ckpt}: the output is not finite (NaN or inf) in block 0")
    assert "no video was written" in line
    assert not out.exists()


def test_blocks_before_a_non_finite_one_are_kept(tmp_path):
    from hiar.generate import NonFiniteOutputError

    world = World("tiny", FirstChannels(), None, 8, 8, 16)
    blocks = [(n, torch.full((1, 4, 3, 8, 8), float("inf") if n == 2 else 0.1 * n)) for n in range(4)]
    with pytest.raises(NonFiniteOutputError, match="block 2"):
        with VideoWriter(tmp_path / "v.mp4") as writer:
            write_blocks(iter(blocks), world, 12, writer=writer, progress=False)
    assert count_frames(tmp_path / "v.mp4") == 6
