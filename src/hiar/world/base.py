"""The two small interfaces that keep latent spaces and text encoders out of the model and sampler.

Video tensors follow Wan's layout: ``[B, C, F, H, W]``. Pixel frames are float in ``[-1, 1]``.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch


@runtime_checkable
class LatentCodec(Protocol):
    """Pixels <-> latents. The shapes world uses the identity; Wan uses its causal VAE.

    A codec whose latent frames do not decode alone (Wan's causal VAE: ``temporal_factor`` > 1) also
    has ``stream_decoder()``, returning a :class:`StreamDecoder`, so that a video is decoded block
    by block as it is generated (see :func:`stream_decoder`).
    """

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


@runtime_checkable
class StreamDecoder(Protocol):
    """Decodes one video a block at a time, carrying what later frames need from earlier ones."""

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """The video's next latent frames ``[B, C, n, H', W']`` -> their pixels ``[B, 3, F, H, W]``."""
        ...

    def reset(self) -> None:
        """Forget the video so far: the next call starts a new one."""
        ...


class FramewiseDecoder:
    """The stream decoder of a codec whose latent frames decode alone: each block is decoded by itself."""

    def __init__(self, codec: LatentCodec):
        self.codec = codec

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return self.codec.decode(latents)

    def reset(self) -> None:
        pass


def stream_decoder(codec: LatentCodec) -> StreamDecoder:
    """``codec.stream_decoder()``; for a codec without one, one pixel frame per latent frame
    (``temporal_factor`` 1, e.g. the shapes world's identity) means its frames decode alone."""
    make = getattr(codec, "stream_decoder", None)
    if make is not None:
        return make()
    if codec.temporal_factor != 1:
        raise TypeError(f"{type(codec).__name__} decodes {codec.temporal_factor} pixel frames per latent frame, so "
                        f"its frames depend on earlier ones: it needs a stream_decoder() (see hiar.world.base)")
    return FramewiseDecoder(codec)
