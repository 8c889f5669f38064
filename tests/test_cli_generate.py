"""`hiar generate` end to end on the shapes world (random weights: the code path, not the looks)."""

from __future__ import annotations

import pytest
import torch

from hiar.cli.main import main
from hiar.generate import METHODS, generate, method_config, shapes_world
from hiar.sampling import ContextRule, Order
from hiar.video import read_video
from tests.helpers import CausalFourCodec, ConstantText, tiny_model

PROMPT = "a fast red circle and a slow blue square on a dark background"


def test_generate_writes_the_asked_number_of_frames(tmp_path, toy_checkpoint):
    out = tmp_path / "v.mp4"
    assert main(["generate", PROMPT, "--frames", "10", "-o", str(out), "--quiet", "--checkpoint", str(toy_checkpoint)]) == 0
    frames = read_video(out, native=True)
    assert frames.shape[0] == 10  # 4 blocks of 3, trimmed to 10
    assert frames.shape[1:] == (32, 32, 3)


def test_generate_by_seconds_and_method(tmp_path, toy_checkpoint):
    out = tmp_path / "sf.mp4"
    assert main(["generate", PROMPT, "--seconds", "0.5", "--method", "self-forcing", "-o", str(out), "--quiet",
                 "--checkpoint", str(toy_checkpoint)]) == 0
    assert read_video(out, native=True).shape[0] == 8  # 0.5 s at 16 fps


def test_invalid_order_is_refused_with_the_dependency(tmp_path, capsys, toy_checkpoint):
    out = tmp_path / "bad.mp4"
    code = main(["generate", PROMPT, "--method", "self-forcing", "--order", "step_first", "--frames", "6", "-o", str(out),
                 "--quiet", "--checkpoint", str(toy_checkpoint)])
    assert code == 2
    assert "needs block 0 fully denoised" in capsys.readouterr().err
    assert not out.exists()


def test_unknown_word_is_refused(tmp_path, capsys, toy_checkpoint):
    code = main(["generate", "a fast mauve circle", "--frames", "3", "-o", str(tmp_path / "x.mp4"), "--quiet",
                 "--checkpoint", str(toy_checkpoint)])
    assert code == 2
    assert "mauve" in capsys.readouterr().err


def test_methods_are_settings_of_one_sampler():
    assert method_config("hiar").context is ContextRule.OUTPUT
    assert method_config("self-forcing").order is Order.BLOCK_FIRST
    assert method_config("hiar", order=Order.STEP_FIRST).order is Order.STEP_FIRST
    with pytest.raises(ValueError, match="unknown method"):
        method_config("magic")
    assert set(METHODS) >= {"hiar", "self-forcing", "causvid"}


class Interrupting:
    """A writer that is stopped (Ctrl-C) after its second block."""

    def __init__(self):
        self.blocks = []

    def write(self, pixels):
        self.blocks.append(pixels)
        if len(self.blocks) == 2:
            raise KeyboardInterrupt


def test_generation_streams_blocks_to_the_writer_and_stops_cleanly():
    from hiar.model import build_model

    torch.manual_seed(0)
    model = build_model("toy").eval()
    world = shapes_world(model)
    writer = Interrupting()
    with pytest.raises(KeyboardInterrupt):
        generate(model, world, PROMPT, num_frames=30, config=method_config("hiar"), writer=writer, progress=False)
    assert [b.shape[1] for b in writer.blocks] == [3, 3]


def test_ctrl_c_leaves_a_playable_video_of_what_was_made(tmp_path, toy_checkpoint):
    import os
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "long.mp4"
    proc = subprocess.Popen(
        [sys.executable, "-m", "hiar.cli.main", "generate", PROMPT, "--frames", "30000", "-o", str(out), "--quiet",
         "--checkpoint", str(toy_checkpoint)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    try:
        deadline = time.time() + 120
        while not list(tmp_path.glob("long.*.partial.mp4")) and time.time() < deadline and proc.poll() is None:
            time.sleep(0.1)
        assert list(tmp_path.glob("long.*.partial.mp4")), proc.stderr.read() if proc.poll() is not None else "no frames in time"
        time.sleep(1.0)  # a few more blocks
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130
    assert "interrupted" in err
    frames = read_video(out, native=True)
    assert 3 <= frames.shape[0] < 30000  # the Ctrl-C may land mid-block: every frame encoded is kept
    assert not list(tmp_path.glob("*.partial.mp4")) and not list(tmp_path.glob(".*.lock"))


def test_codecs_that_mix_frames_decode_block_by_block():
    from hiar.generate import World, latent_frames

    codec = CausalFourCodec(latent_channels=4, spatial_factor=2)  # Wan's causal VAE in miniature
    world = World("fake-wan", codec, ConstantText(), height=16, width=16, fps=16)
    assert latent_frames(33, codec) == 9  # 1 + 4 * 8
    video, report = generate(tiny_model(), world, "anything", num_frames=33, config=method_config("hiar"), progress=False)
    assert video.shape == (3, 33, 16, 16)
    assert report.blocks == 3  # 9 latent frames = 3 blocks of 3
    assert codec.decode_calls == 3  # one per block, as it is final


def test_a_codec_that_mixes_frames_needs_a_stream_decoder():
    from hiar.generate import World, write_blocks

    class NoStream:
        latent_channels, temporal_factor, spatial_factor = 4, 4, 1

    world = World("fake-wan", NoStream(), ConstantText(), height=8, width=8, fps=16)
    with pytest.raises(TypeError, match=r"NoStream decodes 4 pixel frames per latent frame.*needs a stream_decoder\(\)"):
        write_blocks(iter([]), world, 9, progress=False)


def test_each_method_defaults_to_its_bundled_student_and_says_so(tmp_path, monkeypatch, capsys):
    import hiar.generate as g

    monkeypatch.setattr(g, "bundled_dir", lambda: tmp_path)  # an install without the bundled models
    code = main(["generate", PROMPT, "--method", "causvid", "--frames", "3", "-o", str(tmp_path / "c.mp4"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "shapes-causvid.safetensors is missing" in err and "train_shapes_bundle.sh" in err
    assert len(err.strip().splitlines()) == 1  # one line, no traceback
    code = main(["generate", PROMPT, "--method", "hiar-input-context", "--frames", "3", "-o", str(tmp_path / "i.mp4"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "no bundled shapes model for --method hiar-input-context" in err and "--checkpoint" in err
    assert not list(tmp_path.glob("*.mp4"))
    assert {m: g.BUNDLED_MODELS[m] for m in ("hiar", "self-forcing", "causvid")} == {
        "hiar": "shapes-hiar", "self-forcing": "shapes-self-forcing", "causvid": "shapes-causvid"}
