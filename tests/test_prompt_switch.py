"""Prompt switching mid-stream (LongLive's interactive long video) on the denoising grid.

A :class:`PromptSchedule` says under which prompt each block is made; at a switch the caches are
kept (kv-keep: each context block stays as computed under its own prompt) or re-run under the new
prompt (kv-recache). Every order, batched or not, fused or not, and the pipelined runner give the
same numbers; each policy equals a hand-written loop of its definition; the recache costs exactly
the calls and tokens of the blocks it re-runs.
"""

from __future__ import annotations

import functools

import pytest
import torch

from hiar import schedule
from hiar.attention import block_causal
from hiar.model import FrameText
from hiar.pipeline import PipelineJob, spawn_pipeline
from hiar.sampling import (
    ContextRule, GridSampler, Hybrid, InitContext, NoiseBank, Order, PromptSchedule, SamplerConfig, SwitchPolicy,
    planned_recache,
)
from tests.helpers import released_block_loop, tiny_model, uncached_step_first_hiar

LATENT = (4, 8, 8)  # tiny preset: 4 channels, 8x8 -> 4x4 patches (16 tokens a frame)
K, S = 3, 4
N_BLOCKS = 5
TOKENS_PER_BLOCK = K * 16
SWITCH = PromptSchedule((0, 3))  # prompt 1 from block 3 on

ORDERS = [  # (order, batched, fused)
    (Order.BLOCK_FIRST, False, True), (Order.STEP_FIRST, False, True), (Order.DIAGONAL, False, True),
    (Order.DIAGONAL, True, True), (Order.DIAGONAL, False, False), (Order.BLOCK_FIRST, False, False),
]


@pytest.fixture(scope="module")
def texts():
    torch.manual_seed(11)
    return [torch.randn(1, 5, 16), torch.randn(1, 4, 16)]


def run(model, texts, prompts=SWITCH, num_blocks=N_BLOCKS, given=None, **cfg):
    sampler = GridSampler(model, SamplerConfig(**cfg), texts, seeds=[3], latent_shape=LATENT, prompts=prompts,
                          initial_latents=given)
    return sampler.sample(num_blocks), sampler.report


def close(a, b, tol=1e-6):
    return a.shape == b.shape and float((a - b).abs().max()) <= tol


# ------------------------------------------------------------------------------------------------
# Every order, the same numbers


@pytest.mark.parametrize("switch", list(SwitchPolicy))
@pytest.mark.parametrize("rule", [ContextRule.OUTPUT, ContextRule.INPUT])
@pytest.mark.parametrize("window, sink", [(None, 0), (6, 0), (9, 3)])
def test_every_order_gives_the_same_video_across_a_switch(model, texts, switch, rule, window, sink):
    ref, _ = run(model, texts, context=rule, window=window, sink=sink, switch=switch, order=Order.BLOCK_FIRST)
    for order, batched, fused in ORDERS[1:]:
        out, _ = run(model, texts, context=rule, window=window, sink=sink, switch=switch, order=order,
                     batched=batched, fused=fused)
        assert close(out, ref), (order, batched, fused)
    plain, _ = run(model, texts[0], prompts=None, context=rule, window=window, sink=sink)
    assert torch.equal(ref[:, :, :3 * K], plain[:, :, :3 * K])  # the blocks before the switch are the plain run's
    assert not close(ref, plain, 1e-3)


@pytest.mark.parametrize("switch", list(SwitchPolicy))
@pytest.mark.parametrize("init", list(InitContext))
def test_every_order_gives_the_same_video_across_a_switch_after_given_frames(model, texts, switch, init):
    torch.manual_seed(5)
    given = torch.randn(1, 4, 2 * K, 8, 8)
    kw = dict(given=given, context=ContextRule.OUTPUT, window=9, sink=3, switch=switch, init_context=init)
    ref, _ = run(model, texts, order=Order.BLOCK_FIRST, **kw)
    for order, batched, fused in ORDERS[1:]:
        out, _ = run(model, texts, order=order, batched=batched, fused=fused, **kw)
        assert close(out, ref), (order, batched, fused)


def test_two_switches_back_and_forth_in_every_order(model, texts):
    prompts = PromptSchedule([0, 1, 3])
    three = texts + [texts[0] * 0.5]
    for switch in SwitchPolicy:
        ref, report = run(model, three, prompts=prompts, switch=switch, order=Order.STEP_FIRST)
        out, _ = run(model, three, prompts=prompts, switch=switch, batched=True)
        assert close(out, ref)


@pytest.mark.parametrize("switch", list(SwitchPolicy))
def test_hybrids_across_a_switch_reduce_to_hiar_and_self_forcing(model, texts, switch):
    kw = dict(window=9, sink=3, switch=switch, order=Order.BLOCK_FIRST)
    hiar, _ = run(model, texts, context=ContextRule.OUTPUT, **kw)
    self_forcing, _ = run(model, texts, context=ContextRule.CLEAN, **kw)
    assert close(run(model, texts, context=Hybrid(first_steps=1), **kw)[0], hiar)
    assert close(run(model, texts, context=Hybrid(first_steps=S), **kw)[0], self_forcing)
    blocks, _ = run(model, texts, context=Hybrid(first_blocks=2), **kw)
    assert close(run(model, texts, context=Hybrid(first_blocks=2), fused=False, **kw)[0], blocks)


@pytest.mark.parametrize("switch", list(SwitchPolicy))
def test_a_schedule_of_one_prompt_is_the_plain_sampler(model, texts, switch):
    plain, plain_report = run(model, texts[0], prompts=None, window=6)
    one, one_report = run(model, [texts[0]], prompts=PromptSchedule(), window=6, switch=switch)
    same_text, _ = run(model, [texts[0], texts[0]], window=6, switch=SwitchPolicy.KV_KEEP)
    assert torch.equal(one, plain) and torch.equal(same_text, plain)
    assert one_report.model_calls == plain_report.model_calls and one_report.recache_calls == 0


@pytest.mark.parametrize("switch", list(SwitchPolicy))
def test_pipelined_equals_single_process_across_a_switch(texts, switch):
    cfg = SamplerConfig(window=9, sink=3, switch=switch)
    ref = GridSampler(tiny_model(), cfg, texts, seeds=[3], latent_shape=LATENT, prompts=SWITCH).sample(N_BLOCKS)
    out = spawn_pipeline(PipelineJob(functools.partial(tiny_model), cfg, texts, [3], LATENT, N_BLOCKS, prompts=SWITCH))
    assert close(out, ref)


# ------------------------------------------------------------------------------------------------
# Each policy is its definition


def self_forcing_loop(model, texts, prompt_of, spec, n_blocks, recache: bool):
    """The released Self-Forcing loop (S steps, then a clean pass at t = 0 that writes the cache),
    with each block's text its prompt's. kv-keep: nothing else. kv-recache (LongLive): before the
    first block under a new prompt, a new cache into which the clean blocks that block can see
    (its window and the sink) are run again, as one clip, under the new prompt."""
    levels = schedule.student_levels()
    bank = NoiseBank([3], (4, K, 8, 8))
    cache = model.new_cache(spec)
    blocks = []
    with torch.no_grad():
        for n in range(n_blocks):
            text = texts[prompt_of(n)]
            if recache and n and prompt_of(n) != prompt_of(n - 1):
                lo = 0 if spec.window is None else (n + 1) * K - spec.window
                seen = [m for m in range(n) if m * K < spec.sink or (m + 1) * K > lo]
                frames = torch.cat([torch.arange(m * K, (m + 1) * K) for m in seen])
                cache = model.new_cache(spec)
                model(torch.cat([blocks[m] for m in seen], dim=2), torch.tensor([0.0]), text, attention=spec,
                      cache=cache, frames=frames, write_frames=len(frames))
            blocks.append(released_block_loop(model, bank, n, levels[: S + 1], text, spec, cache))
    return torch.cat(blocks, dim=2)


@pytest.mark.parametrize("switch", list(SwitchPolicy))
@pytest.mark.parametrize("window, sink", [(None, 0), (6, 0), (9, 3), (12, 3)])
@pytest.mark.parametrize("fused", [True, False])
def test_self_forcing_across_a_switch_is_the_released_loop_with_the_text_swapped(model, texts, switch, window, sink, fused):
    """kv-keep: the plain loop with the text swapped from the switch on (block 2's cache write stays
    under prompt 0, though the fused sampler writes it in block 3's call); kv-recache: that loop plus
    LongLive's re-cache of the visible blocks at the switch."""
    expected = self_forcing_loop(model, texts, SWITCH.prompt, block_causal(K, window, sink), N_BLOCKS,
                                 recache=switch is SwitchPolicy.KV_RECACHE)
    out, _ = run(model, texts, context=ContextRule.CLEAN, order=Order.BLOCK_FIRST, window=window, sink=sink,
                 switch=switch, fused=fused)
    assert close(out, expected)


def test_kv_recache_is_a_fresh_run_continuing_the_frames_before_the_switch_under_the_new_prompt(model, texts):
    """Without a window, a recache re-runs every earlier block under the new prompt, as given frames
    are written: so the blocks after the switch are those of a fresh run under the new prompt that
    continues the blocks before it (with the same noise)."""
    b = SWITCH.starts[1]
    out, _ = run(model, texts, context=ContextRule.CLEAN, order=Order.BLOCK_FIRST)
    fresh = GridSampler(model, SamplerConfig(context=ContextRule.CLEAN, order=Order.BLOCK_FIRST), texts[1], seeds=[3],
                        latent_shape=LATENT, initial_latents=out[:, :, :b * K])
    bank = fresh.noise
    fresh.noise = lambda n, j: bank(n + b, j) if n >= 0 else bank(n, j)  # block n of the fresh run is block n + b
    after = fresh.sample(N_BLOCKS - b)
    assert close(after, out[:, :, b * K:])


def uncached_hiar(model, texts, prompt_of, n_blocks, recache: bool):
    """Step-first HiAR recomputed with no cache: every cell runs the model over all earlier blocks at
    its output level plus its own block. kv-keep: each block's frames cross-attend to its own prompt
    (text per frame); kv-recache: the cell's whole input to the cell's prompt."""
    ctx = [model.encode_text(t) for t in texts]

    def text_of(n):
        which = torch.tensor([prompt_of(m) for m in range(n + 1) for _ in range(K)])[None]
        return ctx[prompt_of(n)] if recache else FrameText(ctx, which)

    return uncached_step_first_hiar(model, block_causal(K), n_blocks, K, text_of)


@pytest.mark.parametrize("switch", list(SwitchPolicy))
def test_hiar_across_a_switch_equals_uncached_recomputation(model, texts, switch):
    expected = uncached_hiar(model, texts, SWITCH.prompt, N_BLOCKS, recache=switch is SwitchPolicy.KV_RECACHE)
    out, _ = run(model, texts, switch=switch)
    assert close(out, expected, 1e-5)


def test_frame_text_in_one_fused_call_equals_a_call_per_prompt(model, texts):
    """The fused call of a kv-keep switch: context frames under one prompt, the new block under another."""
    spec = block_causal(K)
    a, b = (model.encode_text(t) for t in texts)
    torch.manual_seed(0)
    x_ctx, x_new = torch.randn(1, 4, K, 8, 8), torch.randn(1, 4, K, 8, 8)
    separate, fused = model.new_cache(spec), model.new_cache(spec)
    with torch.no_grad():
        model(x_ctx, torch.tensor([0.0]), a, attention=spec, cache=separate, write_frames=K)
        want = model(x_new, torch.tensor([500.0]), b, attention=spec, cache=separate)
        t = torch.tensor([[0.0] * K + [500.0] * K])
        which = torch.tensor([[0] * K + [1] * K])
        got = model(torch.cat([x_ctx, x_new], dim=2), t, FrameText([a, b], which), attention=spec, cache=fused,
                    write_frames=K)[:, :, K:]
    assert close(got, want)
    assert all(close(p, q) for p, q in zip(fused.k + fused.v, separate.k + separate.v))


# ------------------------------------------------------------------------------------------------
# Cost


@pytest.mark.parametrize(
    "rule, order, window, rerun_blocks_per_stage, stages",
    [
        # switch at block 3. OUTPUT: blocks 0, 1 written again (block 2 was pending anyway)
        (ContextRule.OUTPUT, Order.DIAGONAL, None, 2, S),
        (ContextRule.OUTPUT, Order.DIAGONAL, 6, 0, S),  # the window is block 2 alone, still pending
        (ContextRule.OUTPUT, Order.DIAGONAL, 9, 1, S),
        (ContextRule.INPUT, Order.DIAGONAL, None, 3, S),  # the denoise calls wrote blocks 0..2: all again
        (ContextRule.INPUT, Order.DIAGONAL, 6, 1, S),
        (ContextRule.CLEAN, Order.BLOCK_FIRST, None, 2, 1),  # one stage
        (ContextRule.CLEAN, Order.BLOCK_FIRST, 9, 1, 1),
    ],
)
@pytest.mark.parametrize("fused", [True, False])
def test_recache_costs_the_tokens_it_runs_again_and_a_call_per_block_only_unfused(model, texts, rule, order, window,
                                                                                  rerun_blocks_per_stage, stages, fused):
    """The re-run blocks ride along with the new block's call as pending context does: fused, a
    recache adds tokens, not calls; unfused, one write-only call per block run again."""
    kw = dict(context=rule, order=order, window=window, fused=fused)
    _, plain = run(model, texts[0], prompts=None, **kw)
    _, keep = run(model, texts, switch=SwitchPolicy.KV_KEEP, **kw)
    _, recache = run(model, texts, switch=SwitchPolicy.KV_RECACHE, **kw)
    assert (keep.model_calls, keep.query_tokens, keep.recache_calls) == (plain.model_calls, plain.query_tokens, 0)
    assert recache.recache_calls == stages  # each stage's cache emptied once
    assert recache.recache_tokens == stages * rerun_blocks_per_stage * TOKENS_PER_BLOCK
    assert recache.query_tokens == plain.query_tokens + recache.recache_tokens
    assert recache.model_calls == plain.model_calls + (0 if fused else stages * rerun_blocks_per_stage)
    cfg = SamplerConfig(context=rule, order=order, window=window, fused=fused)
    assert planned_recache(cfg, N_BLOCKS, SWITCH) == (stages, stages * rerun_blocks_per_stage)  # what pipelined runs print


def test_schedules_are_checked(model, texts):
    with pytest.raises(ValueError, match=r"starts with prompt 0 at block 0, got starts \[1, 3\]"):
        PromptSchedule((1, 3))
    with pytest.raises(ValueError, match=r"must increase strictly, got \[0, 3, 3\]"):
        PromptSchedule((0, 3, 3))
    with pytest.raises(ValueError, match="the prompt schedule has 2 prompts, but 1 texts were given"):
        GridSampler(model, SamplerConfig(), texts[:1], seeds=[0], latent_shape=LATENT, prompts=SWITCH)
    assert [SWITCH.prompt(n) for n in (-2, 0, 2, 3, 99)] == [0, 0, 0, 1, 1]
