"""``hiar generate --world wan`` end to end, on tiny random Wan components saved the way a user's
folders look, with nothing downloaded.

A diffusers Wan2.1 pipeline folder (``transformer/`` written by diffusers' own
``WanTransformer3DModel``, ``vae/`` by ``AutoencoderKLWan``, ``text_encoder/`` + ``tokenizer/`` by
transformers), and a Self-Forcing / HiAR training checkpoint (``.pt`` with ``generator`` and
``generator_ema``, keys under ``model.``) holding the same transformer as its EMA weights. Each run
must write an mp4 of the asked frame count, block by block as the blocks finish, and run the
distilled student without classifier-free guidance (one call per fused cell, with the prompt alone:
no unconditional or negative-prompt branch); the two checkpoints must give the same video.
"""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass, field
from pathlib import Path

import av
import numpy as np
import pytest
import torch

import hiar.model
import hiar.video
from hiar.checkpoint import load_model
from hiar.cli.main import main
from hiar.video import read_video
from tests.helpers import save_tiny_umt5, save_tiny_wan_transformer, tiny_wan_vae

Z, TEXT_DIM = 16, 16  # Wan's 16 latent channels; a tiny umT5
SIZE = 32  # pixels: 4 x 4 latents, 2 x 2 patches
FRAMES = 17  # 1 + 4 * 4 -> 5 latent frames -> 2 blocks of 3 (the second cut to the 17 frames asked for)
PROMPT = "a fast red circle on a dark background"


@pytest.fixture(scope="module")
def pipeline_dir(tmp_path_factory):
    """A diffusers Wan pipeline folder: transformer/, vae/, text_encoder/, tokenizer/."""
    root = tmp_path_factory.mktemp("Wan2.1-T2V-tiny-Diffusers")
    save_tiny_wan_transformer(root / "transformer", in_channels=Z, text_dim=TEXT_DIM)
    tiny_wan_vae(z_dim=Z).save_pretrained(root / "vae")
    save_tiny_umt5(root, d_model=TEXT_DIM)
    return root


@pytest.fixture(scope="module")
def self_forcing_checkpoint(pipeline_dir, tmp_path_factory):
    """The pipeline's transformer as the EMA weights of a Self-Forcing training checkpoint, next to
    other (random) generator weights that must not be the ones loaded."""
    ema = load_model(pipeline_dir / "transformer").state_dict()
    generator = {k: torch.randn_like(v) for k, v in ema.items()}
    path = tmp_path_factory.mktemp("self_forcing") / "checkpoint_model_000600.pt"
    torch.save({"generator": {f"model.{k}": v for k, v in generator.items()},
                "generator_ema": {f"model.{k}": v for k, v in ema.items()}, "step": 600}, path)
    return path


@dataclass
class Run:
    """A finished ``hiar generate`` run: its video, what it printed, and what the spies saw."""

    out: Path
    err: str
    writes: list[int] = field(default_factory=list)  # frames per VideoWriter.write
    calls: list[tuple[int, int]] = field(default_factory=list)  # (latent rows, text rows) per model call


def generate_wan(checkpoint, pipeline_dir, out: Path, *extra: str) -> Run:
    """``hiar generate --world wan`` in this process, spying on the mp4's writes and the model's calls."""
    run = Run(out, "")
    write, forward = hiar.video.VideoWriter.write, hiar.model.WanModel.forward

    def spied_write(writer, frames):
        run.writes.append(frames.shape[1])
        return write(writer, frames)

    def spied_forward(model, x, timesteps, text, *args, **kwargs):
        run.calls.append((x.shape[0], text.tokens.shape[0]))
        return forward(model, x, timesteps, text, *args, **kwargs)

    stderr = io.StringIO()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stderr(stderr):
        mp.setattr(hiar.video.VideoWriter, "write", spied_write)
        mp.setattr(hiar.model.WanModel, "forward", spied_forward)
        code = main(["generate", PROMPT, "--world", "wan", "--checkpoint", str(checkpoint),
                     "--vae", str(pipeline_dir / "vae"), "--text-encoder", str(pipeline_dir),
                     "--height", str(SIZE), "--width", str(SIZE), "--frames", str(FRAMES), "--device", "cpu",
                     "--quiet", "-o", str(out), *extra])
    run.err = stderr.getvalue()
    assert code == 0, run.err
    return run


@pytest.fixture(scope="module")
def diffusers_run(pipeline_dir, tmp_path_factory) -> Run:
    return generate_wan(pipeline_dir, pipeline_dir, tmp_path_factory.mktemp("out") / "diffusers.mp4")


def count_frames(path) -> int:
    with av.open(str(path)) as container:
        return sum(1 for _ in container.decode(video=0))


def check_run(run: Run, model_calls: int) -> None:
    assert count_frames(run.out) == FRAMES
    assert read_video(run.out, native=True).shape == (FRAMES, SIZE, SIZE, 3)
    assert run.writes == [9, 8]  # streamed: a write per block as it finished (1 + 4 + 4; then 12 cut to 8)
    # The distilled students run without guidance: one call per cell, the prompt alone (no
    # unconditional / negative-prompt row, no second call).
    assert len(run.calls) == model_calls and all(rows == (1, 1) for rows in run.calls)
    assert f"{model_calls} model calls" in run.err


def test_a_diffusers_pipeline_folder_generates_a_streamed_video(diffusers_run, pipeline_dir):
    check_run(diffusers_run, model_calls=4 * (2 + 1))  # HiAR, fused: S (N + 1) for S = 4 steps, N = 2 blocks
    assert f"model: {pipeline_dir}\n" in diffusers_run.err


def test_a_self_forcing_checkpoint_generates_the_same_video(diffusers_run, pipeline_dir, self_forcing_checkpoint,
                                                             tmp_path):
    run = generate_wan(self_forcing_checkpoint, pipeline_dir, tmp_path / "self_forcing.mp4")
    check_run(run, model_calls=12)
    # the EMA weights are the pipeline's transformer (the generator's random ones would give another
    # video); float rounding may move a pixel by a level or two through H.264
    ours, reference = (read_video(r.out, native=True).astype(np.int16) for r in (run, diffusers_run))
    assert np.abs(ours - reference).mean() < 0.5 and np.abs(ours - reference).max() <= 8


def test_self_forcing_runs_without_guidance_too(pipeline_dir, self_forcing_checkpoint, tmp_path):
    run = generate_wan(self_forcing_checkpoint, pipeline_dir, tmp_path / "block_first.mp4", "--method", "self-forcing")
    check_run(run, model_calls=4 * 2 + 1)  # block-first, fused: S N + 1


def refused(pipeline_dir, tmp_path, capsys, *flags: str) -> str:
    """The one-line error of a run with ``flags`` (which override the good ones); no video is left."""
    args = {"--checkpoint": str(pipeline_dir), "--vae": str(pipeline_dir), "--text-encoder": str(pipeline_dir),
            "--height": str(SIZE), "--width": str(SIZE), **dict(zip(flags[::2], flags[1::2]))}
    code = main(["generate", PROMPT, "--world", "wan", "--frames", "5", "--device", "cpu", "--quiet",
                 "-o", str(tmp_path / "x.mp4"), *[a for kv in args.items() for a in kv]])
    err = capsys.readouterr().err.splitlines()[-1]  # after transformers' own loading bar
    assert code == 2 and err.startswith("hiar generate: error: "), err
    assert not (tmp_path / "x.mp4").exists()
    return err


def test_a_model_that_does_not_fit_the_vae_is_refused_naming_both(pipeline_dir, tmp_path, capsys):
    save_tiny_wan_transformer(tmp_path / "transformer", in_channels=4, text_dim=TEXT_DIM)
    err = refused(pipeline_dir, tmp_path, capsys, "--checkpoint", str(tmp_path / "transformer"))
    assert "the model (--checkpoint) takes 4 latent channels, but the VAE (--vae) has 16" in err


def test_a_model_that_does_not_fit_the_text_encoder_is_refused(pipeline_dir, tmp_path, capsys):
    save_tiny_wan_transformer(tmp_path / "transformer", in_channels=Z, text_dim=32)
    err = refused(pipeline_dir, tmp_path, capsys, "--checkpoint", str(tmp_path / "transformer"))
    assert "takes 512 text states of 32, but the text encoder (--text-encoder) gives 512 of 16" in err


def test_a_frame_size_the_model_cannot_patch_is_refused(pipeline_dir, tmp_path, capsys):
    err = refused(pipeline_dir, tmp_path, capsys, "--height", "40")
    assert "--height 40: Wan frames must be a multiple of 16 pixels" in err
    err = refused(pipeline_dir, tmp_path, capsys, "--width", "0")
    assert "--width must be a positive number of pixels, got 0" in err


def test_the_frame_size_flags_are_for_the_wan_world(tmp_path, capsys):
    code = main(["generate", PROMPT, "--height", "64", "-o", str(tmp_path / "x.mp4")])
    err = capsys.readouterr().err
    assert code == 2 and "--height sets the Wan world's frame size; the shapes world's frames have one size" in err
