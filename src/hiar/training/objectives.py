"""Training objectives as functions (paper Sec. 2-3.3, Self-Forcing's recipe), and the EMA.

Pure losses on tensors first, then thin helpers that call a model (velocity -> x0, classifier-free
guidance, the critic's loss, the forward-KL regulariser). Every loss is a *mean* over all elements,
so a batch split over ranks and averaged gives the loss of the whole batch.

Conventions: ``sigma`` is a float, a ``[B]`` tensor or a per-frame ``[B, F]`` tensor (see
:mod:`hiar.schedule`); models take ``1000 * sigma``.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from hiar import schedule
from hiar.attention import BIDIRECTIONAL, AttentionSpec
from hiar.training import keys

# ------------------------------------------------------------------------------------------------
# Noise levels


@dataclass(frozen=True)
class SigmaSampler:
    """How a training noise level is drawn: t in [min_t, max_t], the shift of Eq. 1, then a clamp.

    ``kind="uniform"``: t ~ U[min_t, max_t] (DMD / Self-Forcing draw t in [0.02, 0.98], shift 5).
    ``kind="logit_normal"``: t = sigmoid(N(mean, std)) clamped to [min_t, max_t] (SD3's choice).
    ``kind="discrete"``: t = k / num_train_timesteps, k uniform over the integers with t in
    [min_t, max_t] and k < num_train_timesteps (the released Self-Forcing / HiAR code draws
    k ~ U{0..999}, shifts by 5 and clamps sigma to [0.02, 0.98]).
    Every kind then clamps sigma = shift(t) to [min_sigma, max_sigma]; the defaults (0, 1) change
    nothing, while the released setting puts the mass of the clamped ends on 0.02 and 0.98.
    """

    kind: str = "uniform"
    shift: float = 5.0
    min_t: float = 0.0
    max_t: float = 1.0
    mean: float = 0.0
    std: float = 1.0
    num_train_timesteps: int = schedule.NUM_TRAIN_TIMESTEPS
    min_sigma: float = 0.0
    max_sigma: float = 1.0

    def __post_init__(self):
        if self.kind not in ("uniform", "logit_normal", "discrete"):
            raise ValueError(f"sigma sampling must be 'uniform', 'logit_normal' or 'discrete', got {self.kind!r}")
        if not 0.0 <= self.min_t < self.max_t <= 1.0:
            raise ValueError(f"need 0 <= min_t < max_t <= 1, got {self.min_t}, {self.max_t}")
        if self.shift <= 0:
            raise ValueError(f"shift must be > 0, got {self.shift}")
        if not 0.0 <= self.min_sigma < 1.0:
            raise ValueError(f"min_sigma must be in [0, 1), got {self.min_sigma}")
        if not 0.0 < self.max_sigma <= 1.0:
            raise ValueError(f"max_sigma must be in (0, 1], got {self.max_sigma}")
        if self.min_sigma >= self.max_sigma:
            raise ValueError(f"min_sigma ({self.min_sigma}) must be < max_sigma ({self.max_sigma})")
        if isinstance(self.num_train_timesteps, bool) or not isinstance(self.num_train_timesteps, int) \
                or self.num_train_timesteps < 1:
            raise ValueError(f"num_train_timesteps must be an integer >= 1, got {self.num_train_timesteps!r}")
        if self.kind == "discrete":
            self._grid()  # raises when no grid point lies in [min_t, max_t]

    def _grid(self) -> tuple[int, int]:
        """The discrete kind's integer range ``[k_lo, k_hi]``: every k / N in [min_t, max_t], k < N.

        The tolerance keeps a bound that is a grid point (0.02 x 1000) on the grid despite rounding.
        """
        n = self.num_train_timesteps
        lo = math.ceil(self.min_t * n - 1e-9)
        hi = min(math.floor(self.max_t * n + 1e-9), n - 1)
        if lo > hi:
            raise ValueError(f"no timestep k / {n} (num_train_timesteps) lies in [min_t, max_t] = "
                             f"[{self.min_t}, {self.max_t}]")
        return lo, hi

    def t_of(self, gen: torch.Generator) -> float:
        if self.kind == "uniform":
            u = float(torch.rand((), generator=gen, dtype=torch.float64))
            return self.min_t + u * (self.max_t - self.min_t)
        if self.kind == "discrete":
            lo, hi = self._grid()
            return int(torch.randint(lo, hi + 1, (), generator=gen)) / self.num_train_timesteps
        z = float(torch.randn((), generator=gen, dtype=torch.float64)) * self.std + self.mean
        return min(max(1.0 / (1.0 + math.exp(-z)), self.min_t), self.max_t)

    def sigma_of(self, t: float) -> float:
        """shift(t) clamped to [min_sigma, max_sigma] (with the default clamp: shift(t) itself)."""
        sigma = float(schedule.shift_sigma(t, self.shift))
        return min(max(sigma, self.min_sigma), self.max_sigma)

    def __call__(self, *key_parts) -> float:
        """One sigma keyed by ``key_parts`` (see :mod:`hiar.training.keys`)."""
        return self.sigma_of(self.t_of(keys.generator(*key_parts)))


# ------------------------------------------------------------------------------------------------
# Pure losses


def loss_dtype(a: torch.Tensor, b: torch.Tensor) -> torch.dtype:
    """Losses are computed in float32, or float64 when an input is."""
    return torch.promote_types(torch.promote_types(a.dtype, b.dtype), torch.float32)


def mse(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean squared error in :func:`loss_dtype`."""
    dtype = loss_dtype(a, b)
    return F.mse_loss(a.to(dtype), b.to(dtype))


def flow_matching_loss(velocity: torch.Tensor, x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """Eq. 2: ||v_theta(x_t, t) - (eps - x0)||^2, mean over every element."""
    return mse(velocity, schedule.velocity_target(x0, noise))


def x0_regression_loss(x0_pred: torch.Tensor, target: torch.Tensor, frames: torch.Tensor | None = None) -> torch.Tensor:
    """ODE-init (CausVid / Self-Forcing): the x0 prediction ``[B, C, F, H, W]`` against the trajectory's
    endpoint; ``frames`` (bool ``[B, F]``): the mean over those frames only (all when None)."""
    if frames is None:
        return mse(x0_pred, target)
    dtype = loss_dtype(x0_pred, target)
    err = (x0_pred.to(dtype) - target.to(dtype)).square().mean(dim=(1, 3, 4))  # [B, F]
    weight = frames.to(dtype)
    return (err * weight).sum() / weight.sum().clamp(min=1)


def classifier_free_guidance(cond: torch.Tensor, uncond: torch.Tensor, scale: float) -> torch.Tensor:
    """uncond + scale (cond - uncond): scale 1 is the conditional prediction."""
    return uncond + scale * (cond - uncond)


def _per_sample(t: torch.Tensor | float, like: torch.Tensor) -> torch.Tensor | float:
    if not isinstance(t, torch.Tensor) or t.ndim == 0:
        return t
    t = t.to(device=like.device, dtype=like.dtype)
    return t.view(-1, *([1] * (like.ndim - 1))) if t.ndim == 1 else t[:, None, :, None, None]


def dmd_gradient(x: torch.Tensor, fake_x0: torch.Tensor, real_x0: torch.Tensor) -> torch.Tensor:
    """DMD's generator gradient (DMD2 / Self-Forcing): (fake - real) / mean|x - real|.

    The normaliser is per sample (mean over every non-batch dimension). Non-finite entries become 0
    (Self-Forcing's ``nan_to_num`` would turn the inf of a zero normaliser, x == real x0, into
    1.8e308; we zero it). Computed in float64 as Self-Forcing does, returned detached.
    """
    x, fake_x0, real_x0 = (t.detach().double() for t in (x, fake_x0, real_x0))
    dims = tuple(range(1, x.ndim))
    normaliser = (x - real_x0).abs().mean(dim=dims, keepdim=True)
    return torch.nan_to_num((fake_x0 - real_x0) / normaliser, nan=0.0, posinf=0.0, neginf=0.0)


def dmd_loss(x: torch.Tensor, fake_x0: torch.Tensor, real_x0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """0.5 ||x - sg(x - grad)||^2 (mean): its gradient with respect to ``x`` is ``grad / numel``.

    Returns ``(loss, grad)``; ``x`` is the generator's output with its graph.
    """
    grad = dmd_gradient(x, fake_x0, real_x0)
    target = (x.detach().double() - grad).detach()
    return 0.5 * F.mse_loss(x.double(), target), grad


def fkl_target(x_i: torch.Tensor, x_next: torch.Tensor, sigma_i, sigma_next) -> torch.Tensor:
    """Eq. 10's target: the trajectory's own Euler velocity (x_{i+1} - x_i) / (sigma_{i+1} - sigma_i)."""
    return (x_next - x_i) / (_per_sample(sigma_next, x_i) - _per_sample(sigma_i, x_i))


def fkl_loss(velocity: torch.Tensor, x_i: torch.Tensor, x_next: torch.Tensor, sigma_i, sigma_next) -> torch.Tensor:
    """Eq. 10: ||v_theta(x_i, t_i) - (x_{i+1} - x_i) / (sigma_{i+1} - sigma_i)||^2 (mean)."""
    return mse(velocity, fkl_target(x_i, x_next, sigma_i, sigma_next))


# ------------------------------------------------------------------------------------------------
# Helpers that call a model


def predict_velocity(model, x: torch.Tensor, sigma: torch.Tensor, text, attention: AttentionSpec = BIDIRECTIONAL) -> torch.Tensor:
    """``model`` at levels ``sigma`` ([B] or per frame [B, F], float64 fine) -> velocity."""
    t = schedule.timestep(sigma.to(device=x.device, dtype=torch.float32))
    return model(x, t, text, attention=attention)


def guided_velocity(model, x: torch.Tensor, sigma: torch.Tensor, cond: torch.Tensor, uncond: torch.Tensor,
                    scale: float, attention: AttentionSpec = BIDIRECTIONAL) -> torch.Tensor:
    """Classifier-free guided velocity; cond and uncond in one batched call (scale 1: cond only)."""
    if scale == 1.0:
        return predict_velocity(model, x, sigma, cond, attention)
    both = predict_velocity(model, torch.cat([x, x]), torch.cat([sigma, sigma]), torch.cat([cond, uncond]), attention)
    v_cond, v_uncond = both.chunk(2)
    return classifier_free_guidance(v_cond, v_uncond, scale)


def critic_loss(critic, sample: torch.Tensor, sigma: torch.Tensor, noise: torch.Tensor, text) -> torch.Tensor:
    """The fake score's loss: flow matching, bidirectional, on a *detached* generator sample."""
    x0 = sample.detach()
    xt = schedule.add_noise(x0, noise, sigma)
    return flow_matching_loss(predict_velocity(critic, xt, sigma, text), x0, noise)


# ------------------------------------------------------------------------------------------------
# EMA


class EMA:
    """Exponential moving average of a model's parameters (buffers copied), kept as a model.

    Before ``start`` updates the average simply tracks the weights (Self-Forcing's ``ema_start_step``).
    From then on, update ``k`` (0-based) uses ``min(decay, (1 + k) / (10 + k))`` (diffusers'
    ``EMAModel`` warm-up), so a short run's average is not dominated by its first weights.
    """

    def __init__(self, model: torch.nn.Module, decay: float, start: int = 0):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay, self.start = float(decay), int(start)
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    def decay_at(self, step: int) -> float:
        k = step - self.start
        return min(self.decay, (1 + k) / (10 + k))

    @torch.no_grad()
    def update(self, model: torch.nn.Module, step: int) -> None:
        """Fold ``model`` in after optimisation step ``step`` (0-based)."""
        ema = dict(self.model.named_parameters())
        src = dict(model.named_parameters())
        if step < self.start:
            for name, p in ema.items():
                p.copy_(src[name])
        else:
            decay = self.decay_at(step)
            for name, p in ema.items():
                p.lerp_(src[name].to(p.dtype), 1.0 - decay)
        for (name, b), (_, sb) in zip(self.model.named_buffers(), model.named_buffers()):
            b.copy_(sb)
