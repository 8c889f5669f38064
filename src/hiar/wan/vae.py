"""Wan2.1's causal video VAE as a :class:`~hiar.world.base.LatentCodec`."""

from __future__ import annotations

import os

import torch

from hiar.wan._paths import component_dir


class WanVAE:
    """Pixels ``[B, 3, F, H, W]`` in [-1, 1] <-> normalised latents ``[B, z_dim, F', H/8, W/8]``.

    Wan's VAE is causal in time: ``F = 1 + temporal_factor * (F' - 1)`` pixel frames per ``F'``
    latent frames. Latents are normalised per channel with the VAE config's ``latents_mean`` /
    ``latents_std`` as Wan (and diffusers' ``WanPipeline``) do: ``z = (mu - mean) / std`` on the way
    in, ``mu = z * std + mean`` on the way out. Encoding takes the posterior mean (no sampling).
    """

    def __init__(self, vae, *, device: str | torch.device | None = None, dtype: torch.dtype | None = None):
        self.vae = vae.eval().requires_grad_(False)
        if device is not None or dtype is not None:
            self.vae.to(device=device, dtype=dtype)
        cfg = vae.config
        self.latent_channels = int(cfg.z_dim)
        self.temporal_factor = int(cfg.scale_factor_temporal or 2 ** sum(cfg.temperal_downsample))
        self.spatial_factor = int(cfg.scale_factor_spatial or 2 ** (len(cfg.dim_mult) - 1))
        mean, std = list(cfg.latents_mean), list(cfg.latents_std)
        if len(mean) != self.latent_channels or len(std) != self.latent_channels:
            raise ValueError(
                f"VAE config has {len(mean)} latents_mean / {len(std)} latents_std values for z_dim={self.latent_channels}"
            )
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1, 1)

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, *, device: str | torch.device = "cpu",
                        dtype: torch.dtype = torch.float32) -> "WanVAE":
        """Load ``AutoencoderKLWan`` from a local folder (or the ``vae/`` folder of a pipeline)."""
        directory = component_dir(path, "vae", "Wan VAE")
        from diffusers import AutoencoderKLWan

        vae = AutoencoderKLWan.from_pretrained(str(directory), torch_dtype=dtype, local_files_only=True)
        return cls(vae, device=device, dtype=dtype)

    @property
    def device(self) -> torch.device:
        return next(self.vae.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.vae.parameters()).dtype

    def latent_frames(self, pixel_frames: int) -> int:
        """Latent frames for ``pixel_frames`` pixel frames (which must be ``1 + temporal_factor * n``)."""
        if pixel_frames < 1 or (pixel_frames - 1) % self.temporal_factor:
            raise ValueError(f"Wan's VAE needs 1 + {self.temporal_factor} n pixel frames, got {pixel_frames}")
        return 1 + (pixel_frames - 1) // self.temporal_factor

    @torch.no_grad()
    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        """``[B, 3, F, H, W]`` in [-1, 1] -> normalised latents (float32)."""
        if frames.ndim != 5:
            raise ValueError(f"frames must be [B, C, F, H, W], got {tuple(frames.shape)}")
        self.latent_frames(frames.shape[2])
        if frames.shape[-2] % self.spatial_factor or frames.shape[-1] % self.spatial_factor:
            raise ValueError(f"frame size {tuple(frames.shape[-2:])} must be a multiple of {self.spatial_factor}")
        mu = self.vae.encode(frames.to(self.device, self.dtype)).latent_dist.mode().float()
        return (mu - self.mean.to(mu.device)) / self.std.to(mu.device)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Normalised latents ``[B, z_dim, F', H', W']`` -> pixels in [-1, 1] (float32)."""
        if latents.ndim != 5 or latents.shape[1] != self.latent_channels:
            raise ValueError(f"latents must be [B, {self.latent_channels}, F, H, W], got {tuple(latents.shape)}")
        z = latents.float() * self.std.to(latents.device) + self.mean.to(latents.device)
        video = self.vae.decode(z.to(self.device, self.dtype)).sample
        return video.float().clamp(-1, 1)
