"""Stage 3, ODE init (CausVid / Self-Forcing): the causal student regresses the trajectories' clean
endpoints from their states at the student's levels, an independent level per block, block-causal.
With ``clean_context`` some blocks are given clean instead (context for later blocks, no loss): each
block on its own, or a sample's first blocks (``clean_context_layout``), as the trajectory's endpoint or
as the model's own estimate of it (``clean_context_source``), perturbed or not (``clean_context_noise``)."""

from __future__ import annotations

import torch

from hiar import schedule
from hiar.attention import block_causal
from hiar.training import keys
from hiar.training.objectives import predict_velocity, x0_regression_loss
from hiar.training.stages.common import export_trainable
from hiar.training.trainer import Stage
from hiar.training.trajectories import TrajectoryDataset


def per_block_inputs(latents: torch.Tensor, level_index: torch.Tensor, block_frames: int) -> torch.Tensor:
    """From trajectories ``[B, S+1, C, F, H, W]`` and per-block level indices ``[B, nb]``, the input
    ``[B, C, F, H, W]`` whose block b is the trajectory's state at level ``level_index[:, b]``."""
    B, _, C, F, H, W = latents.shape
    per_frame = level_index.repeat_interleave(block_frames, dim=1)[:, :F]  # [B, F]
    by_frame = latents.permute(0, 3, 1, 2, 4, 5)  # [B, F, S+1, C, H, W]
    gather = per_frame.to(latents.device)[:, :, None, None, None, None].expand(B, F, 1, C, H, W)
    return by_frame.gather(2, gather)[:, :, 0].permute(0, 2, 1, 3, 4)


class OdeInitStage(Stage):
    name = "ode_init"

    def setup(self) -> None:
        cfg, t = self.cfg, self.trainer
        self.model = t.build_model(cfg.model, "student")
        self.levels = cfg.student.levels
        self.data = TrajectoryDataset(cfg.trajectories, levels=self.levels)
        frames = self.data.sample_shape[1]
        self.k = cfg.student.block_frames
        if frames % self.k:
            raise ValueError(f"trajectories have {frames} frames, not a multiple of student.block_frames={self.k}")
        self.attention = block_causal(self.k)
        t.add_trainable("model", self.model, cfg.optimizer, ema_decay=cfg.ema_decay, ema_start=cfg.ema_start)

    def inputs(self, step: int, idx: list[int], latents: torch.Tensor, text: torch.Tensor):
        """The model's input ``x``, its per-frame levels ``sigma`` and level indices ``[B, F]`` (S: clean)."""
        S = len(self.levels) - 1
        nb = latents.shape[3] // self.k
        level_index = torch.tensor([self.draw_levels(step, i, nb) for i in idx])
        per_frame = level_index.repeat_interleave(self.k, dim=1)  # [B, F]
        x = per_block_inputs(latents, level_index, self.k).to(self.trainer.device)
        if self.cfg.clean_context_source == "model" and bool((per_frame == S).any()):
            x = self.own_clean_context(latents, per_frame, text, x)
        if self.cfg.clean_context_noise > 0:
            x = self.perturb_clean_context(step, idx, per_frame, x)
        return x, self.levels[per_frame], per_frame  # sigma in float64; 0 for a clean block

    def perturb_clean_context(self, step: int, idx: list[int], per_frame: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``x`` with each sample's clean frames renoised to a keyed level in [0, clean_context_noise]
        (keyed noise too, so a resumed run perturbs alike). Their sigma stays 0: the model is not told."""
        S = len(self.levels) - 1
        x = x.clone()
        for row, sample in enumerate(idx):
            clean = (per_frame[row] == S).to(x.device)
            if not bool(clean.any()):
                continue
            level = self.cfg.clean_context_noise * keys.uniform(self.cfg.seed, "ode-clean-noise", step, sample)
            noise = keys.randn(x.shape[1:], self.cfg.seed, "ode-clean-noise", step, sample).to(x.device, x.dtype)
            x[row, :, clean] = schedule.renoise(x[row, :, clean], noise[:, clean], level)
        return x

    @torch.no_grad()
    def own_clean_context(self, latents: torch.Tensor, per_frame: torch.Tensor, text: torch.Tensor,
                          x: torch.Tensor) -> torch.Tensor:
        """``x`` with every clean frame replaced by the model's x0 estimate from the trajectory's state at
        the last noisy level (every block there). Block-causal, so the frames up to the last clean one
        are all the call needs."""
        S = len(self.levels) - 1
        clean = per_frame == S
        upto = int(clean.nonzero()[:, 1].max()) + 1
        B = latents.shape[0]
        state = latents[:, S - 1, :, :upto].to(x.device)
        sigma = torch.full((B, upto), float(self.levels[S - 1]), dtype=torch.float64)
        with self.trainer.autocast():
            velocity = predict_velocity(self.model, state, sigma, text.to(x.device), self.attention)
        own = schedule.x0_from_velocity(state, velocity.float(), sigma).to(x.dtype)
        x = x.clone()
        mask = clean[:, None, :upto, None, None].to(x.device)
        x[:, :, :upto] = torch.where(mask, own, x[:, :, :upto])
        return x

    def step(self, step: int) -> dict[str, float]:
        cfg, t = self.cfg, self.trainer
        idx = t.indices(step)
        latents, text = self.data.batch(idx)  # [B, S+1, C, F, H, W]
        S = len(self.levels) - 1
        x, sigma, per_frame = self.inputs(step, idx, latents, text)
        target, text = latents[:, S].to(t.device), text.to(t.device)
        with t.autocast():
            velocity = predict_velocity(self.model, x, sigma, text, self.attention)
        x0 = schedule.x0_from_velocity(x, velocity.float(), sigma)
        if cfg.clean_context > 0:  # a clean block is its own target (x0 = x at sigma 0): context only, no loss
            loss = x0_regression_loss(x0, target, frames=(per_frame < S).to(t.device))
        else:
            loss = x0_regression_loss(x0, target)
        return {"loss": t.optimize("model", loss, step)}

    def draw_levels(self, step: int, sample: int, blocks: int) -> list[int]:
        """The level index of each block of sample ``sample``: a student level (0 .. S-1), or S (clean)
        as ``clean_context`` and its layout say. Keyed, so a resumed run draws the same levels; the noisy
        draws do not depend on ``clean_context``."""
        cfg, S = self.cfg, len(self.levels) - 1
        levels = [keys.randint(S, cfg.seed, "ode-level", step, sample, b) for b in range(blocks)]
        if cfg.clean_context == 0:
            return levels
        if cfg.clean_context_layout == "prefix":
            clean = 0
            if blocks > 1 and keys.uniform(cfg.seed, "ode-clean", step, sample) < cfg.clean_context:
                clean = 1 + keys.randint(blocks - 1, cfg.seed, "ode-clean-prefix", step, sample)
            return [S] * clean + levels[clean:]
        return [S if keys.uniform(cfg.seed, "ode-clean", step, sample, b) < cfg.clean_context else level
                for b, level in enumerate(levels)]

    def export(self) -> None:
        export_trainable(self.trainer, "model")
