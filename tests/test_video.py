"""Video files: mp4 round trip, streaming, Ctrl-C safety, upscaling, contact sheets."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from hiar.video import (VideoWriter, contact_sheet, read_video, resize_to, to_uint8_frames, video_upscale_factor,
                        write_video)
from hiar.world.shapes import ShapesWorld


@pytest.fixture(scope="module")
def clip():
    world = ShapesWorld()
    frames, _ = world.render(world.sample_spec(2), 20)
    return frames  # [3, F, H, W] in [-1, 1]


def test_round_trip_frame_count_and_content(tmp_path, clip):
    path = write_video(tmp_path / "clip.mp4", clip, fps=16)
    assert path.exists() and not list(tmp_path.glob("clip*.partial.mp4"))
    assert video_upscale_factor(path) == 8  # 32 px -> 256 px for viewing
    raw = read_video(path)
    assert raw.shape == (20, 256, 256, 3) and raw.dtype == np.uint8
    native = read_video(path, native=True)
    assert native.shape == (20, 32, 32, 3)
    expected = to_uint8_frames(clip).astype(np.int16)
    error = np.abs(native.astype(np.int16) - expected)
    assert error.mean() < 3.0
    # frames are not shuffled or repeated: each decoded frame is closest to its own source frame
    d = np.abs(native[:, None].astype(np.int16) - expected[None]).mean(axis=(2, 3, 4))
    assert (d.argmin(axis=1) == np.arange(20)).all()
    assert np.array_equal(resize_to(raw, (32, 32)), native)


def test_layouts_and_streaming_give_the_same_video(tmp_path, clip):
    a = write_video(tmp_path / "a.mp4", clip)
    with VideoWriter(tmp_path / "b.mp4") as video:
        uint8 = to_uint8_frames(clip)  # [F, H, W, 3]
        for start in range(0, 20, 6):
            video.write(uint8[start:start + 6])
    assert video.frames_written == 20
    assert np.array_equal(read_video(a), read_video(tmp_path / "b.mp4"))
    assert to_uint8_frames(clip[None]).shape == (20, 32, 32, 3)  # [1, 3, F, H, W]
    assert to_uint8_frames(clip[:, 0]).shape == (1, 32, 32, 3)  # one frame [3, H, W]


def test_interrupted_writing_leaves_a_playable_file(tmp_path, clip):
    path = tmp_path / "stopped.mp4"
    with pytest.raises(KeyboardInterrupt):
        with VideoWriter(path) as video:
            video.write(clip[:, :7])
            video.write(clip[:, 7:12])
            raise KeyboardInterrupt
    assert path.exists() and not list(tmp_path.glob("stopped*.partial.mp4"))
    assert read_video(path, native=True).shape == (12, 32, 32, 3)


def test_ctrl_c_in_a_real_process_leaves_a_playable_file(tmp_path):
    path = tmp_path / "run.mp4"
    script = textwrap.dedent(f"""
        import sys, time, torch
        from hiar.video import VideoWriter
        with VideoWriter({str(path)!r}, upscale=2) as video:
            for i in range(100000):
                video.write(torch.full((3, 1, 16, 16), (i % 50) / 25 - 1.0))
                if i == 9:
                    print("ready", flush=True)
                if i >= 9:
                    time.sleep(0.01)
    """)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    # Start with Python's own Ctrl-C handler even when pytest runs with SIGINT ignored: a non-interactive
    # shell starts background jobs so (as CI may), an ignored signal is inherited across exec, and
    # Python then keeps ignoring it instead of raising KeyboardInterrupt.
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                            text=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        assert proc.stdout.readline().strip() == "ready"
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0  # it was stopped by the KeyboardInterrupt
    frames = read_video(path, native=True)
    assert frames.shape[0] >= 10 and frames.shape[1:] == (16, 16, 3)
    assert not list(tmp_path.glob("run*.partial.mp4"))


def test_a_hard_kill_leaves_a_partial_file_that_plays_to_its_last_whole_second(tmp_path):
    """SIGKILL runs no cleanup: the fragmented mp4, flushed per packet, still plays up to its last whole
    fragment (a second of video), and the lock it leaves is stale: the next writer takes it over."""
    from hiar.video import VideoWriter, playable_frames

    path = tmp_path / "killed.mp4"
    script = textwrap.dedent(f"""
        import time, torch
        from hiar.video import VideoWriter
        video = VideoWriter({str(path)!r}, fps=16, upscale=2)
        for i in range(100):
            video.write(torch.full((3, 1, 16, 16), (i % 50) / 25 - 1.0))
        print("ready", flush=True)
        time.sleep(120)
    """)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, env=env, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
    finally:
        proc.kill()
        proc.wait(timeout=60)
    (partial,) = tmp_path.glob("killed.*.partial.mp4")
    frames = playable_frames(partial)
    assert 16 <= frames <= 100  # whole fragments (a keyframe at least every second starts one)
    assert read_video(partial, native=True).shape == (frames, 16, 16, 3)
    with VideoWriter(path) as video:  # the killed writer's lock is stale
        video.write(np.zeros((1, 16, 16, 3), np.uint8))
    assert read_video(path).shape[0] == 1


def test_writer_without_frames_leaves_nothing(tmp_path):
    with VideoWriter(tmp_path / "empty.mp4"):
        pass
    assert list(tmp_path.iterdir()) == []


def test_odd_sizes_and_explicit_upscale(tmp_path):
    frames = (np.random.default_rng(0).random((5, 9, 13, 3)) * 255).astype(np.uint8)
    path = write_video(tmp_path / "odd.mp4", frames, upscale=3)
    assert read_video(path).shape == (5, 28, 40, 3)  # 27x39 padded to even
    assert read_video(path, native=True).shape == (5, 9, 13, 3)


def test_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.mp4"):
        read_video(tmp_path / "missing.mp4")
    with pytest.raises(FileNotFoundError, match="nope"):
        VideoWriter(tmp_path / "nope" / "a.mp4")
    with pytest.raises(ValueError, match=".mp4"):
        VideoWriter(tmp_path / "a.avi")
    (tmp_path / "junk.mp4").write_bytes(b"not a video")
    with pytest.raises(ValueError, match="junk.mp4"):
        read_video(tmp_path / "junk.mp4")
    with pytest.raises(ValueError, match="integer multiple"):
        resize_to(np.zeros((2, 50, 50, 3), np.uint8), (32, 32))
    with pytest.raises(ValueError, match="shape"):
        to_uint8_frames(np.zeros((4, 5, 6, 7)))


def test_contact_sheet(tmp_path, clip):
    other = torch.flip(clip, dims=[1])
    path = contact_sheet({"real clip": clip, "reversed": other}, tmp_path / "sheet.png", columns=5, cell=64, title="t")
    img = Image.open(path)
    assert img.mode == "RGB"
    assert img.width > 5 * 64 and img.height > 2 * 64
    # cells show the frames: the first cell of row one is the first frame, scaled up
    pixels = np.asarray(img)
    assert pixels.std() > 10
