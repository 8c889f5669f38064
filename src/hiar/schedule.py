"""Flow-matching schedule math (paper Sec. 2.1). Pure functions, no model.

Conventions: ``sigma`` is the noise level in [0, 1] (x_t = (1 - sigma) x0 + sigma eps); the model
is fed ``timestep = 1000 * sigma`` as Wan2.1 and Self-Forcing do. A *level list* is a 1-D tensor
sigma_1 > ... > sigma_S > sigma_{S+1} = 0: the S student steps and the final clean level.

``sigma`` arguments broadcast over a video ``[B, C, F, H, W]``: a float, a ``[B]`` tensor (one
level per sample), or a ``[B, F]`` tensor (one level per frame, for causal/diffusion-forcing use).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

NUM_TRAIN_TIMESTEPS = 1000

# Self-Forcing's and HiAR's 4-step student: raw timesteps warped by the shift (Eq. 1).
DEFAULT_STUDENT_TIMESTEPS = (1000, 750, 500, 250)
DEFAULT_SHIFT = 5.0


def shift_sigma(t: torch.Tensor | float, shift: float = DEFAULT_SHIFT) -> torch.Tensor | float:
    """Eq. 1: sigma(t) = s t / (1 + (s - 1) t)."""
    return shift * t / (1 + (shift - 1) * t)


def student_levels(
    timesteps: Sequence[float] = DEFAULT_STUDENT_TIMESTEPS,
    shift: float = DEFAULT_SHIFT,
    num_train_timesteps: int = NUM_TRAIN_TIMESTEPS,
) -> torch.Tensor:
    """Raw timesteps (e.g. [1000, 750, 500, 250]) -> levels [sigma_1, ..., sigma_S, 0] (float64).

    With the defaults: 1, 0.9375, 0.8333..., 0.625, 0.
    """
    if not timesteps:
        raise ValueError("a schedule needs at least one timestep")
    t = torch.tensor([float(x) for x in timesteps], dtype=torch.float64) / num_train_timesteps
    if (t <= 0).any() or (t > 1).any():
        raise ValueError(f"timesteps must lie in (0, {num_train_timesteps}], got {list(timesteps)}")
    sigmas = shift_sigma(t, shift)
    if not bool((sigmas[1:] < sigmas[:-1]).all()):
        raise ValueError(f"timesteps must be strictly decreasing, got {list(timesteps)}")
    return torch.cat([sigmas, sigmas.new_zeros(1)])


def uniform_levels(num_steps: int, shift: float = DEFAULT_SHIFT, include: torch.Tensor | None = None) -> torch.Tensor:
    """A fine ODE grid of ``num_steps`` shifted steps from 1 to 0 (Wan's sampler grid).

    ``include`` levels (e.g. the student's) are inserted into the grid, so that a trajectory
    integrated on it passes *exactly* through them (the released code does not; we do, so the
    forward-KL targets align with the student's levels).
    """
    if num_steps < 1:
        raise ValueError(f"a grid needs at least one step, got num_steps={num_steps}")
    t = torch.linspace(1.0, 0.0, num_steps + 1, dtype=torch.float64)
    sigmas = shift_sigma(t, shift)
    if include is not None:
        include = include.to(torch.float64).flatten()
        # A grid point that equals an included level up to rounding (e.g. t = 49/98 vs 0.5) would
        # leave a ~1e-16 step, i.e. a wasted model call: keep the included value only.
        near = (sigmas[:, None] - include[None, :]).abs().min(dim=1).values <= 1e-9
        sigmas = torch.cat([sigmas[~near], include])
    sigmas = torch.unique(sigmas.clamp(0, 1))  # sorted ascending, duplicates removed
    return sigmas.flip(0)


def timestep(sigma: torch.Tensor | float, num_train_timesteps: int = NUM_TRAIN_TIMESTEPS) -> torch.Tensor | float:
    """Model input for a level: Wan is conditioned on 1000 * sigma."""
    return sigma * num_train_timesteps


def _expand(sigma: torch.Tensor | float, x: torch.Tensor) -> torch.Tensor | float:
    if not isinstance(sigma, torch.Tensor):
        return sigma
    sigma = sigma.to(device=x.device, dtype=x.dtype)
    if sigma.ndim == 0:
        return sigma
    if sigma.ndim == 1:  # [B]
        return sigma.view(-1, *([1] * (x.ndim - 1)))
    if sigma.ndim == 2:  # [B, F] per frame, for x = [B, C, F, H, W]
        return sigma[:, None, :, None, None]
    raise ValueError(f"sigma must be a float, [B] or [B, F]; got shape {tuple(sigma.shape)}")


def add_noise(x0: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
    """Eq. 1: x_t = (1 - sigma) x0 + sigma eps."""
    s = _expand(sigma, x0)
    return (1 - s) * x0 + s * noise


def velocity_target(x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """Eq. 2: v* = eps - x0."""
    return noise - x0


def x0_from_velocity(xt: torch.Tensor, velocity: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
    """x0_hat = x_t - sigma v (exact for the linear path of Eq. 1)."""
    return xt - _expand(sigma, xt) * velocity


def euler(xt: torch.Tensor, velocity: torch.Tensor, sigma: torch.Tensor | float, sigma_next: torch.Tensor | float) -> torch.Tensor:
    """Eq. 3: x_{j+1} = x_j + v (sigma_{j+1} - sigma_j)."""
    return xt + velocity * (_expand(sigma_next, xt) - _expand(sigma, xt))


def renoise(x0_hat: torch.Tensor, noise: torch.Tensor, sigma_next: torch.Tensor | float) -> torch.Tensor:
    """x_{j+1} = (1 - sigma_{j+1}) x0_hat + sigma_{j+1} eps (what the released code uses)."""
    return add_noise(x0_hat, noise, sigma_next)
