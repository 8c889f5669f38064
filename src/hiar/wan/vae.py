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
    :meth:`stream_decoder` decodes a video block by block with the same numbers as :meth:`decode`.
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

    def denormalise(self, latents: torch.Tensor) -> torch.Tensor:
        """Normalised latents ``[B, z_dim, F', H', W']`` -> the VAE's own latents, on its device and dtype."""
        if latents.ndim != 5 or latents.shape[1] != self.latent_channels:
            raise ValueError(f"latents must be [B, {self.latent_channels}, F, H, W], got {tuple(latents.shape)}")
        z = latents.float() * self.std.to(latents.device) + self.mean.to(latents.device)
        return z.to(self.device, self.dtype)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Normalised latents ``[B, z_dim, F', H', W']`` -> pixels in [-1, 1] (float32), the whole video at once."""
        video = self.vae.decode(self.denormalise(latents)).sample
        return video.float().clamp(-1, 1)

    def stream_decoder(self) -> "WanStreamDecoder":
        """A decoder that takes the latent video a block at a time (see :class:`WanStreamDecoder`)."""
        return WanStreamDecoder(self)


class WanStreamDecoder:
    """Decodes a latent video block by block, carrying the causal VAE's state from block to block.

    Wan's decoder is causal in time: every causal convolution sees its input's last frames
    (``CACHE_T`` = 2) from before, and diffusers' ``AutoencoderKLWan`` decodes one latent frame at a
    time with a list of those frames per convolution. This keeps that list (:attr:`cache`) between
    calls, so the blocks decode to exactly the frames of a one-shot :meth:`WanVAE.decode` of their
    concatenation: ``1`` pixel frame for the stream's first latent frame, ``temporal_factor`` for
    each later one. The cache holds at most two frames per convolution, so memory does not grow
    with the length of the stream.
    """

    def __init__(self, codec: WanVAE):
        from diffusers.models.autoencoders.autoencoder_kl_wan import WanCausalConv3d

        self.codec = codec
        self.num_convs = sum(isinstance(m, WanCausalConv3d) for m in codec.vae.decoder.modules())
        self.reset()

    def reset(self) -> None:
        """Start a new video: the next latent frame is a first frame again."""
        # One entry per causal convolution, filled in the order the decoder calls them.
        self.cache: list = [None] * self.num_convs
        self.started = False

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """The next latent frames ``[B, z_dim, n, H', W']`` (normalised) -> their pixels in [-1, 1] (float32)."""
        vae = self.codec.vae
        x = vae.post_quant_conv(self.codec.denormalise(latents))  # a 1x1x1 convolution: frame by frame
        frames = []
        for i in range(x.shape[2]):
            frames.append(vae.decoder(x[:, :, i:i + 1], feat_cache=self.cache, feat_idx=[0],
                                      first_chunk=not self.started))
            self.started = True
        video = torch.cat(frames, dim=2)
        if vae.config.patch_size is not None:  # Wan2.2's VAE folds pixels into channels
            from diffusers.models.autoencoders.autoencoder_kl_wan import unpatchify

            video = unpatchify(video, patch_size=vae.config.patch_size)
        return video.float().clamp(-1, 1)

    def cache_bytes(self) -> int:
        """Bytes the carried state holds (the cached frames of every causal convolution)."""
        return sum(t.numel() * t.element_size() for t in self.cache if isinstance(t, torch.Tensor))
