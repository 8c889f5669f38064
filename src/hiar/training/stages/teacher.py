"""Stage 1, teacher: bidirectional flow matching on the world's clips, with prompt dropout (for CFG).

:class:`FlowMatchingStage` is the flow-matching step itself; diffusion forcing (stage 4) is the
same step under a block-causal mask with one noise level per block.
"""

from __future__ import annotations

import torch

from hiar import schedule
from hiar.attention import BIDIRECTIONAL, AttentionSpec
from hiar.training.data import make_source
from hiar.training.objectives import flow_matching_loss, predict_velocity
from hiar.training.stages.common import drop_prompts, export_trainable, keyed_noise, keyed_sigmas
from hiar.training.trainer import Stage


class FlowMatchingStage(Stage):
    """Flow matching on clips: x_t = (1 - sigma) x0 + sigma eps, target eps - x0."""

    role = "teacher"  # which model a checkpoint-less config builds

    def attention(self) -> AttentionSpec:
        return BIDIRECTIONAL

    def draw_sigmas(self, step: int, idx: list[int], num_frames: int) -> torch.Tensor:
        """One level per sample, ``[B]``."""
        return keyed_sigmas(self.sigmas, self.cfg.seed, "sigma", step, idx)

    def setup(self) -> None:
        cfg, t = self.cfg, self.trainer
        self.model = t.build_model(cfg.model, self.role)
        mc = self.model.cfg
        self.source = make_source(cfg.data, text_dim=mc.text_dim, text_len=mc.text_len, device=t.device)
        if not self.source.has_clips:
            raise ValueError(f"the {self.name} stage trains on clips: data.kind must be shapes or trajectories")
        self.sigmas = cfg.noise
        t.add_trainable("model", self.model, cfg.optimizer, ema_decay=cfg.ema_decay, ema_start=cfg.ema_start)

    def step(self, step: int) -> dict[str, float]:
        cfg, t = self.cfg, self.trainer
        idx = t.indices(step)
        x0, text, _ = self.source.batch(idx)
        text = drop_prompts(text, cfg.prompt_dropout, cfg.seed, step, idx)
        noise = keyed_noise(x0.shape[1:], cfg.seed, "noise", step, idx)
        sigma = self.draw_sigmas(step, idx, x0.shape[2])
        x0, noise, text = (v.to(t.device) for v in (x0, noise, text))
        xt = schedule.add_noise(x0, noise, sigma)
        with t.autocast():
            velocity = predict_velocity(self.model, xt, sigma, text, self.attention())
        loss = flow_matching_loss(velocity, x0, noise)
        return {"loss": t.optimize("model", loss, step)}

    def export(self) -> None:
        export_trainable(self.trainer, "model")


class TeacherStage(FlowMatchingStage):
    name = "teacher"
