"""The two small interfaces that keep latent spaces and text encoders out of the model and sampler.

Video tensors follow Wan's layout: ``[B, C, F, H, W]``. Pixel frames are float in ``[-1, 1]``.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch


@runtime_checkable
class LatentCodec(Protocol):
    """Pixels <-> latents. The shapes world uses the identity; Wan uses its causal VAE."""

    latent_channels: int
    temporal_factor: int  # pixel frames per latent frame (after the first, for Wan's causal VAE)
    spatial_factor: int

    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        """``[B, 3, F, H, W]`` pixels in [-1, 1] -> ``[B, C, F', H', W']`` latents."""
        ...

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """``[B, C, F', H', W']`` latents -> ``[B, 3, F, H, W]`` pixels in [-1, 1]."""
        ...


@runtime_checkable
class TextEncoder(Protocol):
    """Prompts -> the context the diffusion transformer cross-attends to."""

    dim: int      # feature size of each token (the model's ``text_dim``)
    max_len: int  # tokens per prompt after padding (the model's ``text_len``)

    def encode(self, prompts: list[str]) -> torch.Tensor:
        """``len(prompts)`` prompts -> ``[B, max_len, dim]``, zero after each prompt's last token."""
        ...
