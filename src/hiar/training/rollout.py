"""Self-rollout of the causal student over the denoising grid, for DMD training.

The student generates a whole clip with the sampler of :mod:`hiar.sampling` (the same engine, noise
bank and KV caches as inference), stopping every block at one *exit step* e (1..S) shared by all
blocks and returning the x0 predictions there. With ``grad=True`` only the cells of step e keep a
graph: gradients reach the parameters through the exit step only (earlier steps and the context
written into the caches are detached). The exit step is drawn from a generator keyed by the seed and
the global step, so every DDP rank and a resumed run draw the same one.

Methods (a setting, not a fork):

* ``self_forcing``: context rule CLEAN, block-first order (the only valid one for t_c = 0);
* ``hiar``: context rule OUTPUT (t_c = t_{j+1}), any valid order (diagonal by default);
* ``hiar_input_context``: context rule INPUT (t_c = t_j), the paper's Table 2 ablation;
* ``causvid``: context rule CLEAN with *teacher-forced* context (clean data blocks).
"""

from __future__ import annotations

import torch

from hiar.sampling import ContextRule, GridSampler, Order, SamplerConfig, Transition
from hiar.training import keys

# The context rule of each method; CLEAN methods run block-first (their only valid order).
METHODS = {"self_forcing": ContextRule.CLEAN, "hiar": ContextRule.OUTPUT, "causvid": ContextRule.CLEAN,
           "hiar_input_context": ContextRule.INPUT}


def rollout_config(method: str, levels, *, block_frames: int = 3, transition: Transition = Transition.RENOISE,
                   order: Order | None = None) -> SamplerConfig:
    """The sampler config of a training method (``order`` None: the method's natural order)."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {list(METHODS)}, got {method!r}")
    levels = tuple(float(s) for s in levels)
    context = METHODS[method]
    if context is not ContextRule.CLEAN:
        return SamplerConfig(levels=levels, context=context, order=order or Order.DIAGONAL,
                             transition=transition, block_frames=block_frames)
    if order not in (None, Order.BLOCK_FIRST):
        raise ValueError(f"method {method} uses clean context (t_c = 0): only order block_first is valid, got {order.value}")
    return SamplerConfig(levels=levels, context=ContextRule.CLEAN, order=Order.BLOCK_FIRST,
                         transition=transition, block_frames=block_frames)


def draw_exit_step(seed: int, step: int, num_steps: int, purpose: str = "generator") -> int:
    """The exit step (1..S) of global step ``step``: the same on every rank and after a resume."""
    return 1 + keys.randint(num_steps, seed, "exit-step", purpose, step)


def rollout_seeds(seed: int, step: int, indices: list[int], purpose: str = "generator") -> list[int]:
    """Noise-bank seeds of the rollout of each sample (keyed by its global index)."""
    return [keys.seed31(seed, "rollout", purpose, step, i) for i in indices]


def self_rollout(
    model,
    config: SamplerConfig,
    text: torch.Tensor,
    *,
    seeds: list[int],
    latent_shape: tuple[int, int, int],
    num_blocks: int,
    exit_step: int,
    grad: bool,
    teacher_context: torch.Tensor | None = None,
) -> torch.Tensor:
    """Roll the student out over ``num_blocks`` blocks, every block stopping after ``exit_step`` steps.

    Returns the x0 predictions ``[B, C, num_blocks * k, H, W]``; with ``grad`` they carry the graph
    of the exit-step cells only. ``teacher_context`` (clean latents ``[B, C, F, H, W]``) gives
    CausVid's teacher-forced context (``config.context`` must be CLEAN).
    """
    # Activation checkpointing would recompute the exit-step cells in backward against KV caches that
    # have been written to since (and, for a fused call, already hold the context block it re-writes):
    # wrong gradients. So it is off during the rollout (it stays on for the full-clip calls).
    checkpointing = getattr(model, "gradient_checkpointing", False)
    model.gradient_checkpointing = False
    try:
        with torch.set_grad_enabled(grad):  # the prompt's cross-attention K/V are part of the exit step's graph
            sampler = GridSampler(model, config, text, seeds=seeds, latent_shape=latent_shape,
                                  teacher_context=teacher_context)
            return sampler.sample(num_blocks, exit_step=exit_step, grad=grad)
    finally:
        model.gradient_checkpointing = checkpointing
