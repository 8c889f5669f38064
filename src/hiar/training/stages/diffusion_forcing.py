"""Stage 4 (optional), diffusion forcing - Causal Forcing's mid-training: flow matching on clips with
an independent noise level per block, under the block-causal mask."""

from __future__ import annotations

import torch

from hiar.attention import AttentionSpec, block_causal
from hiar.training.stages.common import block_sigmas
from hiar.training.stages.teacher import FlowMatchingStage


class DiffusionForcingStage(FlowMatchingStage):
    name = "diffusion_forcing"
    role = "student"

    def attention(self) -> AttentionSpec:
        return block_causal(self.cfg.student.block_frames)

    def draw_sigmas(self, step: int, idx: list[int], num_frames: int) -> torch.Tensor:
        """One level per block, ``[B, F]``."""
        return block_sigmas(self.sigmas, self.cfg.seed, "sigma", step, idx, num_frames, self.cfg.student.block_frames)
