"""The released code's hybrid schedules as values of the context rule: each equals a hand-written
loop of its definition (no cache, full recomputation), reduces exactly to HiAR and Self-Forcing at
its ends, allows the orders its dependencies allow, and has the call counts the planner gives."""

from __future__ import annotations

import functools

import pytest
import torch

from hiar import schedule
from hiar.attention import block_causal
from hiar.pipeline import PipelineJob, spawn_pipeline
from hiar.sampling import (
    ContextRule, GridSampler, Hybrid, NoiseBank, Order, OrderError, SamplerConfig, check_order, valid_orders,
)
from tests.helpers import tiny_model

LATENT = (4, 8, 8)
S, K = 4, 3
N_BLOCKS = 5


def run(model, text, num_blocks=N_BLOCKS, **cfg):
    sampler = GridSampler(model, SamplerConfig(**cfg), text, seeds=[3], latent_shape=LATENT)
    return sampler.sample(num_blocks), sampler.report


def _cell(model, text, spec, ctx, ctx_sigmas, x, sigma):
    """One cell recomputed from scratch: [context blocks at their sigmas, x at sigma] -> x0 of x."""
    seq = torch.cat(ctx + [x], dim=2)
    t = torch.tensor([[1000 * s for s in ctx_sigmas for _ in range(K)] + [1000 * sigma] * K])
    return x - sigma * model(seq, t, text, attention=spec)[:, :, -K:]


def _next(x0, bank, n, j, levels):
    nxt = levels[j + 1]
    return x0 if nxt == 0 else (1 - nxt) * x0 + nxt * bank(n, j + 1)


def frame_first_steps_reference(model, text, M, spec, n_blocks=N_BLOCKS):
    """The released ``inference_hybrid(frame_first_steps=M)``: phase 1 runs the first M steps of
    every block block-first, each block then cached at its state after M steps (clean if M = S);
    phase 2 runs the other steps step-first, the cache rebuilt per step at its output level."""
    levels = schedule.student_levels().tolist()
    bank = NoiseBank([3], (4, K, 8, 8))
    x = [bank(n, 0) for n in range(n_blocks)]
    with torch.no_grad():
        phase1 = []
        for n in range(n_blocks):
            for j in range(M):
                x[n] = _next(_cell(model, text, spec, phase1, [levels[M]] * n, x[n], levels[j]), bank, n, j, levels)
            phase1.append(x[n])
        for j in range(M, S):
            outputs = []
            for n in range(n_blocks):
                x[n] = _next(_cell(model, text, spec, outputs, [levels[j + 1]] * n, x[n], levels[j]), bank, n, j, levels)
                outputs.append(x[n])
    return torch.cat(x, dim=2)


def hybrid_block0_reference(model, text, first, spec, n_blocks=N_BLOCKS):
    """The released ``inference_hybrid_block0(num_frame_first_blocks=first)``: the first blocks
    block-first with clean context; then the rest step-first, each step's cache rebuilt from the
    first blocks (clean) and the later blocks at the step's output level."""
    levels = schedule.student_levels().tolist()
    bank = NoiseBank([3], (4, K, 8, 8))
    x = [bank(n, 0) for n in range(n_blocks)]
    with torch.no_grad():
        clean = []
        for n in range(first):
            for j in range(S):
                x[n] = _next(_cell(model, text, spec, clean, [0.0] * n, x[n], levels[j]), bank, n, j, levels)
            clean.append(x[n])
        for j in range(S):
            outputs = []
            for n in range(first, n_blocks):
                ctx = clean + outputs
                sig = [0.0] * first + [levels[j + 1]] * len(outputs)
                x[n] = _next(_cell(model, text, spec, ctx, sig, x[n], levels[j]), bank, n, j, levels)
                outputs.append(x[n])
    return torch.cat(x, dim=2)


@pytest.mark.parametrize("window, sink", [(None, 0), (9, 3)])
@pytest.mark.parametrize("M", [2, 3])
def test_frame_first_steps_is_the_released_two_phase_loop(model, text, M, window, sink):
    expected = frame_first_steps_reference(model, text, M, block_causal(K, window, sink))
    hiar, _ = run(model, text, window=window, sink=sink)
    assert (expected - hiar).abs().max() > 1e-4  # the reference tells the hybrid from HiAR
    for fused in (True, False):
        out, _ = run(model, text, context=Hybrid(first_steps=M), order=Order.BLOCK_FIRST, window=window, sink=sink, fused=fused)
        assert (out - expected).abs().max() <= 1e-5, fused


@pytest.mark.parametrize("window, sink", [(None, 0), (9, 3)])
@pytest.mark.parametrize("first", [1, 2])
def test_first_blocks_is_the_released_hybrid_block0_loop(model, text, first, window, sink):
    expected = hybrid_block0_reference(model, text, first, block_causal(K, window, sink))
    for fused in (True, False):
        out, _ = run(model, text, context=Hybrid(first_blocks=first), order=Order.BLOCK_FIRST, window=window, sink=sink, fused=fused)
        assert (out - expected).abs().max() <= 1e-5, fused


def test_hybrids_reduce_exactly_to_hiar_and_self_forcing(model, text):
    hiar, rh = run(model, text, context=ContextRule.OUTPUT, order=Order.DIAGONAL)
    sf, rs = run(model, text, context=ContextRule.CLEAN, order=Order.BLOCK_FIRST)
    for rule in (Hybrid(first_blocks=0), Hybrid(first_steps=0), Hybrid(first_steps=1)):
        out, r = run(model, text, context=rule, order=Order.DIAGONAL)
        assert torch.equal(out, hiar) and r.model_calls == rh.model_calls, rule
    for rule in (Hybrid(first_blocks=N_BLOCKS), Hybrid(first_blocks=N_BLOCKS + 3), Hybrid(first_steps=S)):
        out, r = run(model, text, context=rule, order=Order.BLOCK_FIRST)
        assert torch.equal(out, sf) and r.model_calls == rs.model_calls, rule
    assert not torch.allclose(run(model, text, context=Hybrid(first_blocks=2), order=Order.BLOCK_FIRST)[0], hiar)


def test_the_dependency_check_learns_each_hybrids_orders():
    every = list(Order)
    assert valid_orders(Hybrid(first_steps=1), S, N_BLOCKS) == every  # = HiAR
    assert valid_orders(Hybrid(first_steps=2), S, N_BLOCKS) == [Order.BLOCK_FIRST]
    assert valid_orders(Hybrid(first_blocks=1), S, N_BLOCKS) == [Order.BLOCK_FIRST]
    assert valid_orders(Hybrid(first_blocks=0), S, None) == [Order.BLOCK_FIRST, Order.DIAGONAL]
    with pytest.raises(OrderError, match=r"cell \(block 1, step 0\) needs block 0 after 2 of its steps"):
        check_order(Order.DIAGONAL, Hybrid(first_steps=2), S, N_BLOCKS)
    with pytest.raises(OrderError, match=r"cell \(block 1, step 0\) needs block 0 fully denoised"):
        check_order(Order.STEP_FIRST, Hybrid(first_blocks=2), S, N_BLOCKS)


@pytest.mark.parametrize(
    "rule, fused_calls, unfused_calls",
    [
        # first M steps share one cache (level M), the others one each: S - M + 1 stages, each with a trailing write
        (Hybrid(first_steps=2), S * N_BLOCKS + (S - 2 + 1), S * N_BLOCKS + N_BLOCKS * (S - 2 + 1)),
        (Hybrid(first_steps=3), S * N_BLOCKS + (S - 3 + 1), S * N_BLOCKS + N_BLOCKS * (S - 3 + 1)),
        # one cache per step; a block-first block's clean context is written into each of them
        (Hybrid(first_blocks=2), S * N_BLOCKS + S, S * N_BLOCKS + S * N_BLOCKS),
    ],
)
def test_hybrid_call_counts(model, text, rule, fused_calls, unfused_calls):
    fused, rf = run(model, text, context=rule, order=Order.BLOCK_FIRST)
    unfused, ru = run(model, text, context=rule, order=Order.BLOCK_FIRST, fused=False)
    assert (fused - unfused).abs().max() <= 1e-6
    assert (rf.model_calls, ru.model_calls) == (fused_calls, unfused_calls)


def test_hybrid_settings_are_checked(model, text):
    with pytest.raises(ValueError, match="first_steps must be in 0..4"):
        SamplerConfig(context=Hybrid(first_steps=5))
    with pytest.raises(ValueError, match=">= 0"):
        Hybrid(first_blocks=-1)
    sampler = GridSampler(model, SamplerConfig(context=Hybrid(first_steps=3), order=Order.BLOCK_FIRST), text,
                          seeds=[0], latent_shape=LATENT)
    with pytest.raises(ValueError, match="with exit step 2, blocks stop before"):
        sampler.sample(2, exit_step=2)
    job = PipelineJob(functools.partial(tiny_model), SamplerConfig(context=Hybrid(first_steps=2), order=Order.BLOCK_FIRST),
                      text, [3], LATENT, 2)
    with pytest.raises(ValueError, match="OUTPUT or INPUT"):
        spawn_pipeline(job)


def test_generate_offers_the_hybrids_as_methods(tmp_path, capsys):
    from hiar.checkpoint import save_model
    from hiar.cli.main import main
    from hiar.generate import method_config
    from hiar.model import build_model
    from hiar.video import read_video

    assert method_config("hybrid-blocks").context == Hybrid(first_blocks=1)
    assert method_config("hybrid-steps", first_steps=3).context == Hybrid(first_steps=3)
    torch.manual_seed(0)
    ckpt = str(save_model(build_model("toy").eval(), tmp_path / "toy.safetensors"))
    prompt = "a fast red circle on a dark background"
    out = tmp_path / "h.mp4"
    assert main(["generate", prompt, "--checkpoint", ckpt, "--method", "hybrid-blocks", "--first-blocks", "2",
                 "--frames", "9", "-o", str(out), "--quiet"]) == 0
    assert read_video(out, native=True).shape[0] == 9
    assert "HYBRID(FIRST_BLOCKS=2, FIRST_STEPS=0)" in capsys.readouterr().err
    code = main(["generate", prompt, "--checkpoint", ckpt, "--first-steps", "2", "--frames", "3", "-o", str(out), "--quiet"])
    assert code == 2 and "--method hiar runs context OUTPUT" in capsys.readouterr().err
    code = main(["generate", prompt, "--checkpoint", ckpt, "--method", "hybrid-steps", "--order", "diagonal",
                 "--frames", "6", "-o", str(tmp_path / "bad.mp4"), "--quiet"])
    assert code == 2 and "needs block 0 after 2 of its steps" in capsys.readouterr().err


def test_an_unbounded_hybrid_stream_matches_a_finite_run(model, text):
    cfg = dict(context=Hybrid(first_blocks=2), order=Order.BLOCK_FIRST, window=6)
    finite, _ = run(model, text, **cfg)
    sampler = GridSampler(model, SamplerConfig(**cfg), text, seeds=[3], latent_shape=LATENT)
    blocks = []
    for n, block in sampler.stream(num_blocks=None):
        blocks.append(block)
        if n == N_BLOCKS - 1:
            break
    assert torch.equal(torch.cat(blocks, dim=2), finite)
