"""Given frames (image-to-video, video extension): written into the context before generating, the
same numbers in every valid order, fused or not, batched, windowed, pipelined; equal to a
recomputation with no cache; a known answer on real shapes clips; one-line errors for bad inputs."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch

from hiar import schedule
from hiar.attention import block_causal
from hiar.conditioning import encode_given, padding_for
from hiar.generate import generate, method_config, shapes_world
from hiar.pipeline import PipelineJob, spawn_pipeline
from hiar.sampling import ContextRule, GridSampler, InitContext, NoiseBank, Order, SamplerConfig
from tests.helpers import CausalFourCodec, ConstantText, CopyModel, released_block_loop, tiny_model

LATENT = (4, 8, 8)
S, K = 4, 3
N_BLOCKS = 4
GIVEN_BLOCKS = 2


def given_latents(blocks: int = GIVEN_BLOCKS) -> torch.Tensor:
    return torch.randn(1, 4, blocks * K, 8, 8, generator=torch.Generator().manual_seed(4))


def run(model, text, num_blocks=N_BLOCKS, given=None, **cfg):
    given = given_latents() if given is None else given
    sampler = GridSampler(model, SamplerConfig(**cfg), text, seeds=[3], latent_shape=LATENT, initial_latents=given)
    return sampler.sample(num_blocks), sampler.report


@pytest.mark.parametrize("rule", [ContextRule.OUTPUT, ContextRule.INPUT])
@pytest.mark.parametrize("init", list(InitContext))
@pytest.mark.parametrize("window, sink", [(None, 0), (6, 0), (6, 3)])
def test_every_valid_order_gives_the_same_video_after_given_frames(model, text, rule, init, window, sink):
    kw = dict(context=rule, init_context=init, window=window, sink=sink)
    ref, _ = run(model, text, order=Order.BLOCK_FIRST, **kw)
    for order, batched, fused in [(Order.STEP_FIRST, False, True), (Order.DIAGONAL, False, True),
                                  (Order.DIAGONAL, True, True), (Order.DIAGONAL, False, False)]:
        out, _ = run(model, text, order=order, batched=batched, fused=fused, **kw)
        assert (out - ref).abs().max() <= 1e-6, (order, batched, fused)
    assert ref.shape == (1, 4, K * N_BLOCKS, 8, 8)  # the generated blocks only


@pytest.mark.parametrize(
    "rule, order, fused_calls, unfused_calls",
    [
        # fused: the given blocks ride along with each stage's first call, at no extra call
        (ContextRule.OUTPUT, Order.DIAGONAL, S * (N_BLOCKS + 1), S * (2 * N_BLOCKS + GIVEN_BLOCKS)),
        (ContextRule.CLEAN, Order.BLOCK_FIRST, S * N_BLOCKS + 1, (S + 1) * N_BLOCKS + GIVEN_BLOCKS),
        (ContextRule.INPUT, Order.STEP_FIRST, S * N_BLOCKS, S * (N_BLOCKS + GIVEN_BLOCKS)),
    ],
)
def test_given_frames_cost_no_call_when_fused(model, text, rule, order, fused_calls, unfused_calls):
    fused, rf = run(model, text, context=rule, order=order)
    unfused, ru = run(model, text, context=rule, order=order, fused=False)
    assert (fused - unfused).abs().max() <= 1e-6
    assert (rf.model_calls, ru.model_calls) == (fused_calls, unfused_calls)


def test_given_frames_change_the_video_and_clean_and_level_differ(model, text):
    plain = GridSampler(model, SamplerConfig(), text, seeds=[3], latent_shape=LATENT).sample(N_BLOCKS)
    clean, _ = run(model, text, init_context=InitContext.CLEAN)
    level, _ = run(model, text, init_context=InitContext.LEVEL)
    assert (plain - clean).abs().max() > 1e-3 and (clean - level).abs().max() > 1e-3
    # Under a CLEAN rule every stage's level is 0: both settings are the same
    a, _ = run(model, text, context=ContextRule.CLEAN, order=Order.BLOCK_FIRST, init_context=InitContext.CLEAN)
    b, _ = run(model, text, context=ContextRule.CLEAN, order=Order.BLOCK_FIRST, init_context=InitContext.LEVEL)
    assert torch.equal(a, b)


@pytest.mark.parametrize("init", list(InitContext))
@pytest.mark.parametrize("window, sink", [(None, 0), (9, 3)])
def test_cached_hierarchical_sampling_after_given_frames_equals_uncached_recomputation(model, text, init, window, sink):
    """Step-first HiAR recomputed with no cache: every cell re-runs the model over the given blocks
    (clean, or at the step's output level: noised with the given blocks' own bank noise), the earlier
    generated blocks at the output level, and its own block; the mask alone decides what it sees."""
    levels = schedule.student_levels().tolist()
    spec = block_causal(K, window, sink)
    bank = NoiseBank([3], (4, K, 8, 8))
    given = given_latents()
    n_blocks = 5
    x = [bank(n, 0) for n in range(n_blocks)]
    with torch.no_grad():
        for j in range(S):
            nxt = levels[j + 1]
            if init is InitContext.CLEAN or nxt == 0:
                ctx, ctx_t = [given], [0.0] * K * GIVEN_BLOCKS
            else:
                ctx = [(1 - nxt) * given[:, :, b * K:(b + 1) * K] + nxt * bank(b - GIVEN_BLOCKS, j + 1)
                       for b in range(GIVEN_BLOCKS)]
                ctx_t = [1000 * nxt] * K * GIVEN_BLOCKS
            outputs = []
            for n in range(n_blocks):
                seq = torch.cat(ctx + outputs + [x[n]], dim=2)
                t = torch.tensor([ctx_t + [1000 * nxt] * K * n + [1000 * levels[j]] * K])
                v = model(seq, t, text, attention=spec)[:, :, -K:]
                x0 = x[n] - levels[j] * v
                x[n] = x0 if nxt == 0 else (1 - nxt) * x0 + nxt * bank(n, j + 1)
                outputs.append(x[n])
    expected = torch.cat(x, dim=2)
    out, _ = run(model, text, num_blocks=n_blocks, window=window, sink=sink, order=Order.STEP_FIRST, init_context=init)
    assert (out - expected).abs().max() <= 1e-5


def test_self_forcing_after_given_frames_is_the_released_loop(model, text):
    """The released code: the given blocks are written at t = 0 into the cache one by one, then
    block-first Self-Forcing as usual."""
    levels = schedule.student_levels()
    spec = block_causal(K)
    bank = NoiseBank([3], (4, K, 8, 8))
    cache = model.new_cache(spec)
    given = given_latents()
    blocks = []
    with torch.no_grad():
        for b in range(GIVEN_BLOCKS):
            model(given[:, :, b * K:(b + 1) * K], torch.tensor([0.0]), text, attention=spec, cache=cache, write_frames=K)
        for n in range(N_BLOCKS):
            blocks.append(released_block_loop(model, bank, n, levels[: S + 1], text, spec, cache))
    out, _ = run(model, text, context=ContextRule.CLEAN, order=Order.BLOCK_FIRST)
    assert (out - torch.cat(blocks, dim=2)).abs().max() <= 1e-6


def test_given_frames_can_be_the_sink(model, text):
    cfg = SamplerConfig(window=6, sink=3)
    sampler = GridSampler(model, cfg, text, seeds=[0], latent_shape=LATENT, initial_latents=given_latents())
    for _ in sampler.stream(num_blocks=8):
        pass
    for stage in sampler.stages:
        frames = stage.cache.frames().tolist()
        assert set(range(3)) <= set(frames)  # the first given block, kept forever
        assert len(frames) == 3 + 6 - 3


def test_pipelined_equals_single_process_after_given_frames(text):
    cfg = SamplerConfig(context=ContextRule.OUTPUT, window=6, sink=3, init_context=InitContext.LEVEL)
    given = given_latents()
    ref = GridSampler(tiny_model(), cfg, text, seeds=[3], latent_shape=LATENT, initial_latents=given).sample(N_BLOCKS)
    out = spawn_pipeline(PipelineJob(functools.partial(tiny_model), cfg, text, [3], LATENT, N_BLOCKS, initial_latents=given))
    assert (out - ref).abs().max() <= 1e-6


def test_initial_latents_must_be_whole_blocks_of_the_latent_shape(model, text):
    with pytest.raises(ValueError, match="whole blocks of 3 frames"):
        GridSampler(model, SamplerConfig(), text, seeds=[0], latent_shape=LATENT, initial_latents=torch.zeros(1, 4, 4, 8, 8))
    with pytest.raises(ValueError, match=r"initial latents must be \[1 or 1, 4, F, 8, 8\]"):
        GridSampler(model, SamplerConfig(), text, seeds=[0], latent_shape=LATENT, initial_latents=torch.zeros(1, 3, 3, 8, 8))


# ------------------------------------------------------------------------------------------------
# Known answer on the shapes world: a model that copies its context


def _copy_config(method: str, init: InitContext):
    return method_config(method, init_context=init, window=21)


@pytest.mark.parametrize("method", ["hiar", "self-forcing", "hybrid-blocks", "hybrid-steps"])
@pytest.mark.parametrize("init", list(InitContext))
def test_continuing_a_real_clip_keeps_its_objects_with_a_context_copying_model(method, init):
    """With a model that copies the block before the one it denoises, a rule whose last step reads
    clean context continues a clip with its last block, exactly: the given frames come first,
    unchanged, and the first generated segment shows the clip's colours and shapes."""
    from hiar.eval.shapes_scores import score_video
    from hiar.world.shapes import default_world, render_clip

    shapes = default_world()
    spec = shapes.sample_spec(3)
    prompt = shapes.prompt(spec)
    clip, _ = render_clip(spec, 6)  # two blocks of a real clip
    model = CopyModel()
    video, _ = generate(model, shapes_world(model), prompt, num_frames=6, config=_copy_config(method, init),
                        init_frames=clip, progress=False)
    assert video.shape == (3, 12, 32, 32)
    assert torch.equal(video[:, :6], clip)
    last = clip[:, 3:6]
    assert (video[:, 6:] - torch.cat([last, last], dim=1)).abs().max() <= 1e-5
    real = score_video(clip[:, 3:6], prompt).details
    generated = score_video(video[:, 6:9], prompt).details
    assert generated["colour"] == pytest.approx(real["colour"], abs=1e-6) and real["colour"] > 0.9
    assert generated["shape"] == pytest.approx(real["shape"], abs=1e-6)


def test_image_to_video_with_a_context_copying_model_holds_the_image():
    """One image is padded to a still block (copies of itself): the copy model then holds it."""
    from hiar.world.shapes import default_world, render_clip

    shapes = default_world()
    image, _ = render_clip(shapes.sample_spec(5), 1)
    model = CopyModel()
    video, report = generate(model, shapes_world(model), "a red circle on a dark background", num_frames=6,
                             config=_copy_config("hiar", InitContext.CLEAN), init_frames=image, progress=False)
    assert video.shape == (3, 7, 32, 32)
    assert (video - image).abs().max() <= 1e-5
    assert report.blocks == 2


# ------------------------------------------------------------------------------------------------
# Codecs and frame counts


def test_given_frames_are_padded_to_whole_blocks_for_each_codec():
    from hiar.world.shapes import IdentityCodec

    assert [padding_for(p, IdentityCodec(), 3) for p in (1, 2, 3, 4)] == [2, 1, 0, 2]
    wan = CausalFourCodec()
    assert padding_for(1, wan, 3) == 8  # one image -> 9 pixel frames -> 3 latent frames
    assert padding_for(9, wan, 3) == 0 and padding_for(5, wan, 3) == 4
    with pytest.raises(ValueError, match=r"encodes 1 \+ 4 n pixel frames \(5, 9, 13, ...\), got 6"):
        padding_for(6, wan, 3)
    pixels = torch.rand(3, 5, 8, 8) * 2 - 1
    given = encode_given(pixels, wan, 3)
    assert given.latents.shape == (1, 3, 3, 8, 8) and given.pad_frames == 4
    assert torch.equal(given.latents[0, :, -1], pixels[:, -1])  # the given frames are at the end
    assert torch.equal(given.latents[0, :, 0], pixels[:, 0])  # the padding copies the first frame


def test_a_mixing_codec_decodes_the_generated_latents_after_the_given_ones():
    from hiar.generate import World

    codec = CausalFourCodec()
    world = World("fake-wan", codec, ConstantText(), height=8, width=8, fps=16)
    model = CopyModel("tiny")
    pixels = torch.rand(3, 5, 8, 8) * 2 - 1
    video, report = generate(model, world, "x", num_frames=12, config=method_config("hiar"), init_frames=pixels,
                             progress=False)
    assert video.shape == (3, 5 + 12, 8, 8)
    assert torch.equal(video[:, :5], pixels)
    assert report.blocks == 1  # 12 new pixel frames = 3 latent frames after the given ones
    last_block = encode_given(pixels, codec, 3).latents[0, :, -3:]
    # the copy model repeats the last given block: its latents decode 4 pixel frames each
    assert (video[:, 5:] - last_block.repeat_interleave(4, dim=1).clamp(-1, 1)).abs().max() <= 1e-5


# ------------------------------------------------------------------------------------------------
# The command line


PROMPT = "a fast red circle and a slow blue square on a dark background"


@pytest.fixture(scope="module")
def toy_checkpoint(tmp_path_factory):
    from hiar.checkpoint import save_model
    from hiar.model import build_model

    torch.manual_seed(0)
    return str(save_model(build_model("toy").eval(), tmp_path_factory.mktemp("toy") / "toy.safetensors"))


@pytest.fixture(scope="module")
def clip_files(tmp_path_factory):
    from PIL import Image

    from hiar.video import write_video
    from hiar.world.shapes import default_world, render_clip

    folder = tmp_path_factory.mktemp("given")
    clip, _ = render_clip(default_world().sample_spec(7), 8)
    frames = ((clip.permute(1, 2, 3, 0).numpy() + 1) * 127.5).round().astype(np.uint8)  # [F, H, W, 3]
    Image.fromarray(frames[0]).save(folder / "frame.png")
    Image.fromarray(frames[0].repeat(8, axis=0).repeat(8, axis=1)).save(folder / "frame_x8.png")
    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(folder / "odd.png")
    (folder / "notes.txt").write_text("not a picture")
    write_video(folder / "clip.mp4", frames, fps=16)
    return folder, frames


def _generate(tmp_path, checkpoint, *args):
    from hiar.cli.main import main

    out = tmp_path / "out.mp4"
    return main(["generate", PROMPT, "--checkpoint", checkpoint, "-o", str(out), "--quiet", *args]), out


@pytest.mark.parametrize("image", ["frame.png", "frame_x8.png"])
def test_cli_image_to_video_starts_with_the_image(tmp_path, toy_checkpoint, clip_files, image):
    from hiar.video import read_video

    folder, frames = clip_files
    code, out = _generate(tmp_path, toy_checkpoint, "--init-image", str(folder / image), "--frames", "6")
    assert code == 0
    video = read_video(out, native=True)
    assert video.shape == (7, 32, 32, 3)
    assert np.abs(video[0].astype(int) - frames[0].astype(int)).mean() < 4  # H.264 at crf 18


def test_cli_video_extension_starts_with_the_clip(tmp_path, toy_checkpoint, clip_files):
    from hiar.video import read_video

    folder, frames = clip_files
    code, out = _generate(tmp_path, toy_checkpoint, "--init-video", str(folder / "clip.mp4"), "--init-frames", "4",
                          "--frames", "6", "--init-context", "level", "--method", "self-forcing")
    assert code == 0
    video = read_video(out, native=True)
    assert video.shape[0] == 4 + 6
    assert np.abs(video[:4].astype(int) - frames[:4].astype(int)).mean() < 4


@pytest.mark.parametrize("args, message", [
    (["--init-image", "odd.png"], "frames are 20x30, not an integer multiple of the expected 32x32"),
    (["--init-image", "notes.txt"], "not a readable image"),
    (["--init-image", "missing.png"], "image not found"),
    (["--init-video", "notes.txt"], "not a readable video"),
    (["--init-video", "clip.mp4", "--init-frames", "40"], "has 8 frames, fewer than the 40 asked for"),
    (["--init-frames", "4"], "give --init-video too"),
])
def test_cli_bad_given_frames_get_one_line(tmp_path, capsys, toy_checkpoint, clip_files, args, message):
    folder, _ = clip_files
    args = [str(folder / a) if a.endswith((".png", ".txt", ".mp4")) else a for a in args]
    code, out = _generate(tmp_path, toy_checkpoint, *args, "--frames", "3")
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and message in err[-1] and len([e for e in err if "error" in e]) == 1
    assert not out.exists()
