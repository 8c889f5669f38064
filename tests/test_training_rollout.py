"""The DMD self-rollout: gradient only through the exit step; equal to the sampler without gradient."""

from __future__ import annotations

import pytest
import torch

from hiar import schedule
from hiar.sampling import GridSampler, Order
from hiar.training.rollout import draw_exit_step, rollout_config, rollout_seeds, self_rollout
from tests.helpers import tiny_model

LEVELS = schedule.student_levels()
K = 2  # frames per block (small for speed)
SHAPE = (4, 4, 4)  # C, H, W of the tiny preset


def text(B=1):
    return torch.randn(B, 5, 16, generator=torch.Generator().manual_seed(9))


@pytest.mark.parametrize("method", ["hiar", "self_forcing", "hiar_input_context"])
def test_gradient_reaches_parameters_only_through_the_exit_step(method):
    gen = tiny_model(0).train()
    cfg = rollout_config(method, LEVELS, block_frames=K)
    calls, backward = [], []

    def hook(module, args, kwargs, out):
        t = args[1].detach().clone()
        calls.append((out.requires_grad, t))
        if out.requires_grad:
            out.register_hook(lambda g, i=len(calls) - 1: backward.append(i))

    handle = gen.register_forward_hook(hook, with_kwargs=True)
    exit_step, num_blocks = 2, 3
    x = self_rollout(gen, cfg, text(), seeds=[3], latent_shape=SHAPE, num_blocks=num_blocks, exit_step=exit_step, grad=True)
    handle.remove()
    assert x.requires_grad and x.shape == (1, 4, num_blocks * K, 4, 4)
    with_grad = [i for i, (g, _) in enumerate(calls) if g]
    assert len(with_grad) == num_blocks  # one exit-step cell per block, nothing else keeps a graph
    exit_t = float(schedule.timestep(LEVELS[exit_step - 1]))
    for i in with_grad:  # each graph-carrying call denoises its block at the exit step's level
        assert torch.allclose(calls[i][1][:, -K:], torch.full((1, K), exit_t))
    assert len(calls) > len(with_grad)  # the earlier steps (and context writes) ran, without a graph
    (x ** 2).mean().backward()
    assert sorted(backward) == with_grad  # backward passed through exactly those calls
    assert all(p.grad is not None for p in gen.parameters())
    assert sum(float(p.grad.abs().sum()) for p in gen.parameters()) > 0


@pytest.mark.parametrize("method,order", [("hiar", None), ("hiar", Order.STEP_FIRST), ("self_forcing", None),
                                          ("hiar_input_context", None)])
def test_rollout_equals_the_sampler_without_gradient(method, order):
    gen = tiny_model(1)
    cfg = rollout_config(method, LEVELS, block_frames=K, order=order)
    for exit_step in (4, 2):
        a = self_rollout(gen, cfg, text(2), seeds=[5, 6], latent_shape=SHAPE, num_blocks=3, exit_step=exit_step, grad=False)
        b = GridSampler(gen, cfg, text(2), seeds=[5, 6], latent_shape=SHAPE).sample(3, exit_step=exit_step)
        assert torch.equal(a, b)
        assert not a.requires_grad
    # the graph-carrying rollout computes the same numbers
    c = self_rollout(gen, cfg, text(2), seeds=[5, 6], latent_shape=SHAPE, num_blocks=3, exit_step=2, grad=True)
    assert torch.allclose(c.detach(), b, atol=1e-6)


def test_causvid_rollout_reads_teacher_forced_clean_context():
    gen = tiny_model(2)
    clean = torch.randn(1, 4, 3 * K, 4, 4, generator=torch.Generator().manual_seed(1))
    cfg = rollout_config("causvid", LEVELS, block_frames=K)
    a = self_rollout(gen, cfg, text(), seeds=[7], latent_shape=SHAPE, num_blocks=3, exit_step=3, grad=False,
                     teacher_context=clean)
    b = GridSampler(gen, cfg, text(), seeds=[7], latent_shape=SHAPE, teacher_context=clean).sample(3, exit_step=3)
    own = self_rollout(gen, cfg, text(), seeds=[7], latent_shape=SHAPE, num_blocks=3, exit_step=3, grad=False)
    assert torch.equal(a, b)
    assert torch.equal(a[:, :, :K], own[:, :, :K])  # the first block has no context
    assert not torch.allclose(a[:, :, K:], own[:, :, K:])


def test_exit_step_is_keyed_by_step_and_covers_every_step():
    draws = [draw_exit_step(0, s, 4) for s in range(100)]
    assert draws == [draw_exit_step(0, s, 4) for s in range(100)]
    assert set(draws) == {1, 2, 3, 4}
    assert draws != [draw_exit_step(0, s, 4, "critic") for s in range(100)]
    assert rollout_seeds(0, 3, [1, 2]) == [rollout_seeds(0, 3, [1])[0], rollout_seeds(0, 3, [2])[0]]


def test_rollout_config_methods():
    assert rollout_config("self_forcing", LEVELS).order is Order.BLOCK_FIRST
    assert rollout_config("hiar", LEVELS).context.name == "OUTPUT"
    assert rollout_config("hiar_input_context", LEVELS).context.name == "INPUT"  # the t_c = t_j ablation
    assert rollout_config("hiar_input_context", LEVELS).order is Order.DIAGONAL
    with pytest.raises(ValueError, match="block_first"):
        rollout_config("self_forcing", LEVELS, order=Order.DIAGONAL)
    with pytest.raises(ValueError, match="method"):
        rollout_config("dmd2", LEVELS)


def test_rollout_gradients_do_not_change_with_activation_checkpointing():
    """Checkpointed recomputation would read KV caches written since the forward: the rollout turns it off."""
    grads = []
    for flag in (False, True):
        gen = tiny_model(4).train()
        gen.gradient_checkpointing = flag
        cfg = rollout_config("hiar", LEVELS, block_frames=K)
        x = self_rollout(gen, cfg, text(), seeds=[1], latent_shape=SHAPE, num_blocks=3, exit_step=3, grad=True)
        (x ** 2).mean().backward()
        grads.append([p.grad.clone() for p in gen.parameters()])
        assert gen.gradient_checkpointing == flag  # restored
    assert all(torch.equal(a, b) for a, b in zip(*grads))


def _rollout_grads(method, exit_step, *, fused, batched=False):
    import dataclasses

    gen = tiny_model(5).double().train()
    cfg = dataclasses.replace(rollout_config(method, LEVELS, block_frames=K), fused=fused, batched=batched)
    x = self_rollout(gen, cfg, text().double(), seeds=[11], latent_shape=SHAPE, num_blocks=3,
                     exit_step=exit_step, grad=True)
    (x * torch.linspace(-1, 1, x.numel(), dtype=x.dtype).view_as(x)).sum().backward()
    return x.detach(), torch.cat([p.grad.flatten() for p in gen.parameters()])


@pytest.mark.parametrize("method,exit_step", [("hiar", e) for e in (1, 2, 3, 4)] + [("self_forcing", 1), ("self_forcing", 2)]
                         + [("hiar_input_context", 2)])
def test_fused_rollout_gradient_equals_the_reference_with_context_written_without_grad(method, exit_step):
    """The context is a constant (paper Sec. 3.3; released code writes it under no_grad): a fused
    [context, block] exit-step call must not send gradient through the context rows."""
    reference = _rollout_grads(method, exit_step, fused=False)  # every context write is its own no-grad call
    for kwargs in ({"fused": True}, {"fused": True, "batched": method != "self_forcing"}):
        x, g = _rollout_grads(method, exit_step, **kwargs)
        assert torch.allclose(x, reference[0], rtol=0, atol=1e-12)
        assert float((g - reference[1]).norm() / reference[1].norm()) < 1e-6, kwargs
