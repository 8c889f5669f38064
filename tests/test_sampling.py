"""The denoising grid: every valid order gives the same numbers; fusion, counts, windows, refusals."""

from __future__ import annotations

import functools

import pytest
import torch

from hiar import schedule
from hiar.attention import block_causal
from hiar.pipeline import PipelineError, PipelineJob, spawn_pipeline
from hiar.sampling import (
    ContextRule, GridSampler, NoiseBank, Order, OrderError, SamplerConfig, Transition, cells, check_order,
)
from tests.helpers import failing_tiny_model, released_block_loop, tiny_model, uncached_step_first_hiar

LATENT = (4, 8, 8)  # tiny preset: 4 channels, 8x8 -> 4x4 patches
N_BLOCKS = 5
S = 4


def run(model, text, num_blocks=N_BLOCKS, seeds=(3,), **cfg):
    sampler = GridSampler(model, SamplerConfig(**cfg), text, seeds=list(seeds), latent_shape=LATENT)
    return sampler.sample(num_blocks), sampler.report


@pytest.mark.parametrize("rule", [ContextRule.OUTPUT, ContextRule.INPUT])
@pytest.mark.parametrize("window", [None, 6])
def test_every_valid_order_gives_the_same_video(model, text, rule, window):
    ref, _ = run(model, text, context=rule, order=Order.BLOCK_FIRST, window=window)
    for order, batched in [(Order.STEP_FIRST, False), (Order.DIAGONAL, False), (Order.DIAGONAL, True)]:
        out, _ = run(model, text, context=rule, order=order, batched=batched, window=window)
        assert (out - ref).abs().max() <= 1e-6, (order, batched)
    assert ref.shape == (1, 4, 3 * N_BLOCKS, 8, 8)


@pytest.mark.parametrize("rule", [ContextRule.OUTPUT, ContextRule.INPUT])
def test_pipelined_equals_single_process(text, rule):
    cfg = SamplerConfig(context=rule, window=6)
    ref = GridSampler(tiny_model(), cfg, text, seeds=[3], latent_shape=LATENT).sample(N_BLOCKS)
    out = spawn_pipeline(PipelineJob(functools.partial(tiny_model), cfg, text, [3], LATENT, N_BLOCKS))
    assert out.shape == ref.shape
    assert (out - ref).abs().max() <= 1e-6


def test_a_failing_rank_ends_the_pipeline_with_its_error(text):
    job = PipelineJob(functools.partial(failing_tiny_model, 1, 2), SamplerConfig(), text, [3], LATENT, N_BLOCKS, timeout_s=60)
    with pytest.raises(PipelineError, match=r"rank1: RuntimeError: boom on rank 1"):
        spawn_pipeline(job)


def test_pipeline_refuses_clean_context_and_wrong_world_size(text):
    job = PipelineJob(functools.partial(tiny_model), SamplerConfig(context=ContextRule.CLEAN, order=Order.BLOCK_FIRST), text, [3], LATENT, 2)
    with pytest.raises(ValueError, match="OUTPUT or INPUT"):
        spawn_pipeline(job)


@pytest.mark.parametrize(
    "rule, order, fused_calls, unfused_calls",
    [
        (ContextRule.OUTPUT, Order.STEP_FIRST, S * (N_BLOCKS + 1), 2 * N_BLOCKS * S),  # N+1 per stage, 2N unfused
        (ContextRule.OUTPUT, Order.DIAGONAL, S * (N_BLOCKS + 1), 2 * N_BLOCKS * S),
        (ContextRule.CLEAN, Order.BLOCK_FIRST, S * N_BLOCKS + 1, (S + 1) * N_BLOCKS),  # S per block, S+1 unfused
        (ContextRule.INPUT, Order.STEP_FIRST, S * N_BLOCKS, S * N_BLOCKS),  # the denoise call writes its own context
    ],
)
def test_fused_equals_unfused_with_exact_call_counts(model, text, rule, order, fused_calls, unfused_calls):
    fused, rf = run(model, text, context=rule, order=order, fused=True)
    unfused, ru = run(model, text, context=rule, order=order, fused=False)
    assert (fused - unfused).abs().max() <= 1e-6
    assert rf.model_calls == fused_calls
    assert ru.model_calls == unfused_calls
    tokens_per_block = 3 * 4 * 4
    # Fusion changes how tokens are grouped into calls, not how many are computed.
    assert rf.query_tokens == ru.query_tokens == tokens_per_block * (ru.model_calls if rule is not ContextRule.INPUT else S * N_BLOCKS)


def test_clean_block_first_is_a_hand_written_self_forcing_loop(model, text):
    """S renoise steps per block, then a clean re-run at t = 0 that writes the cache."""
    levels = schedule.student_levels()
    spec = block_causal(3)
    bank = NoiseBank([3], (4, 3, 8, 8))
    cache = model.new_cache(spec)
    blocks = []
    with torch.no_grad():
        for n in range(N_BLOCKS):
            blocks.append(released_block_loop(model, bank, n, levels[: S + 1], text, spec, cache))
    expected = torch.cat(blocks, dim=2)
    out, _ = run(model, text, context=ContextRule.CLEAN, order=Order.BLOCK_FIRST)
    assert (out - expected).abs().max() <= 1e-6


def test_euler_and_renoise_differ_but_agree_on_the_last_step(model, text):
    euler, _ = run(model, text, transition=Transition.EULER)
    renoise, _ = run(model, text, transition=Transition.RENOISE)
    assert (euler - renoise).abs().max() > 1e-3
    one_step = dict(levels=(1.0, 0.0))
    a, _ = run(model, text, transition=Transition.EULER, **one_step)
    b, _ = run(model, text, transition=Transition.RENOISE, **one_step)
    assert torch.equal(a, b)


@pytest.mark.parametrize("sink", [0, 3])
def test_ten_windows_long_at_constant_cache_size(model, text, sink):
    window = 6
    cfg = SamplerConfig(window=window, sink=sink)
    sampler = GridSampler(model, cfg, text, seeds=[0], latent_shape=LATENT)
    shapes = []
    for n, block in sampler.stream(num_blocks=10 * window // 3):
        shapes.append([tuple(t.shape) for st in sampler.stages for t in st.cache.k + st.cache.v if t is not None])
        assert torch.isfinite(block).all()
    assert all(s == shapes[-1] for s in shapes[S:])  # constant once the pipeline is full
    cap_frames = sink + window - 3
    for stage in sampler.stages:
        assert stage.cache.k[0].shape[1] == cap_frames * 16
        assert len(stage.cache.frames()) == cap_frames
    # the sink frames are still there at the end
    if sink:
        assert set(range(sink)) <= set(sampler.stages[0].cache.frames().tolist())


def test_unbounded_stream_yields_blocks_in_order(model, text):
    sampler = GridSampler(model, SamplerConfig(window=6), text, seeds=[0], latent_shape=LATENT)
    got = []
    for n, block in sampler.stream(num_blocks=None):
        got.append(n)
        if n == 7:
            break
    assert got == list(range(8))
    assert sampler.report.first_block_latency_s is not None


def test_stream_matches_sample(model, text):
    full, _ = run(model, text, num_blocks=4)
    sampler = GridSampler(model, SamplerConfig(), text, seeds=[3], latent_shape=LATENT)
    blocks = [b for _, b in sampler.stream(num_blocks=4)]
    assert torch.equal(torch.cat(blocks, dim=2), full)


@pytest.mark.parametrize("order", [Order.STEP_FIRST, Order.DIAGONAL])
def test_clean_context_refuses_hierarchical_orders(order):
    with pytest.raises(OrderError, match=r"cell \(block 1, step 0\) needs block 0 fully denoised"):
        check_order(order, ContextRule.CLEAN, S, N_BLOCKS)


def test_step_first_needs_a_finite_video():
    with pytest.raises(OrderError, match="finite"):
        check_order(Order.STEP_FIRST, ContextRule.OUTPUT, S, None)


def test_orders_visit_every_cell_once():
    for order in Order:
        visited = list(cells(order, 6, S))
        assert sorted(visited) == [(n, j) for n in range(6) for j in range(S)]


def test_batch_equals_samples_run_alone(model):
    torch.manual_seed(2)
    text = torch.randn(2, 5, 16)
    both, _ = run(model, text, seeds=(5, 9), num_blocks=3)
    first, _ = run(model, text[:1], seeds=(5,), num_blocks=3)
    second, _ = run(model, text[1:], seeds=(9,), num_blocks=3)
    assert (both - torch.cat([first, second])).abs().max() <= 1e-5


def test_noise_bank_is_keyed_not_streamed():
    bank = NoiseBank([7, 8], (2, 3, 4, 4))
    a = bank(3, 1)
    bank(0, 0)
    assert torch.equal(bank(3, 1), a)
    assert not torch.equal(bank(3, 2), a)
    assert torch.equal(NoiseBank([8], (2, 3, 4, 4))(3, 1)[0], a[1])


def test_config_errors_are_clear():
    with pytest.raises(ValueError, match="decrease strictly to a final 0"):
        SamplerConfig(levels=(1.0, 0.5))
    with pytest.raises(ValueError, match="order=diagonal"):
        SamplerConfig(batched=True, order=Order.STEP_FIRST)


@pytest.mark.parametrize("window, sink", [(None, 0), (6, 0), (9, 3)])
def test_cached_hierarchical_sampling_equals_uncached_recomputation(model, text, window, sink):
    """Step-first HiAR recomputed with no cache: every cell re-runs the model over all earlier
    blocks at the output level plus its own block; the window/sink mask alone decides what it sees."""
    n_blocks = 6
    expected = uncached_step_first_hiar(model, block_causal(3, window, sink), n_blocks, 3, lambda n: text)
    out, _ = run(model, text, num_blocks=n_blocks, window=window, sink=sink, order=Order.STEP_FIRST)
    assert (out - expected).abs().max() <= 1e-5
