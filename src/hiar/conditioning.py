"""Given frames: image-to-video and video extension.

The frames a video should start from are read (an image, or the first frames of a video), checked
against the world's frame size, padded to whole blocks and encoded by the world's codec. The
sampler writes their latents into the context before generating (:class:`hiar.sampling.GridSampler`,
``initial_latents``); the output video starts with the given frames, unchanged, and continues.

**Whole blocks.** The sampler works on blocks of k latent frames, so the given pixel frames are
padded at the front with copies of the first frame until they encode to a multiple of k latent
frames: one image becomes a still block (3 frames for the shapes world; 9 pixel frames, 3 latent
frames, for Wan's causal VAE). The padding is context only: it is not in the output.

**Sizes.** Frames must have the world's size, or an integer multiple of it (a video written by
``hiar generate`` is upscaled for viewing; such frames are block-averaged back). Anything else is
refused with one line naming both sizes: resizing an arbitrary picture would change what it shows.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from hiar.video import read_video, resize_to
from hiar.world.base import LatentCodec


@dataclass
class GivenFrames:
    """Frames a video starts from: the pixels as given, and their latents padded to whole blocks."""

    pixels: torch.Tensor  # [3, P, H, W] in [-1, 1]: the start of the output video, unchanged
    latents: torch.Tensor  # [1, C, G k, h, w]: what the sampler writes into its context
    pad_frames: int  # pixel frames of padding (copies of the first frame) encoded before the given ones

    @property
    def num_frames(self) -> int:
        return self.pixels.shape[1]


def _to_tensor(frames: np.ndarray) -> torch.Tensor:
    """uint8 ``[F, H, W, 3]`` -> float ``[3, F, H, W]`` in [-1, 1]."""
    return torch.from_numpy(np.array(frames)).permute(3, 0, 1, 2).float().div(127.5).sub(1.0)


def read_image(path: str | Path, size: tuple[int, int]) -> torch.Tensor:
    """An image file as one frame ``[3, 1, H, W]`` of ``size`` (see the module docstring on sizes)."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image not found: {path}")
    try:
        with Image.open(path) as img:
            frame = np.asarray(img.convert("RGB"))
    except (UnidentifiedImageError, OSError) as err:
        raise ValueError(f"{path}: not a readable image ({err})") from None
    return _to_tensor(resize_to(frame[None], size, path))


def read_clip(path: str | Path, size: tuple[int, int], num_frames: int | None = None) -> torch.Tensor:
    """The first ``num_frames`` frames (default: all) of a video file, ``[3, F, H, W]`` of ``size``."""
    frames = read_video(path, native=True, size=size)
    if num_frames is not None:
        if num_frames < 1:
            raise ValueError(f"--init-frames must be at least 1, got {num_frames}")
        if num_frames > frames.shape[0]:
            raise ValueError(f"{path} has {frames.shape[0]} frames, fewer than the {num_frames} asked for")
        frames = frames[:num_frames]
    return _to_tensor(frames)


def padding_for(num_frames: int, codec: LatentCodec, block_frames: int) -> int:
    """Pixel frames to put before ``num_frames`` given ones so they encode to whole blocks."""
    f = codec.temporal_factor
    if num_frames < 1:
        raise ValueError("no given frames")
    if f == 1:
        return -num_frames % block_frames
    if (num_frames - 1) % f:
        good = ", ".join(str(1 + f * i) for i in range(1, 4))
        raise ValueError(f"this world's codec encodes 1 + {f} n pixel frames ({good}, ...), got {num_frames} given frames")
    return f * (-(1 + (num_frames - 1) // f) % block_frames)


def encode_given(pixels: torch.Tensor, codec: LatentCodec, block_frames: int) -> GivenFrames:
    """Pad ``[3, P, H, W]`` pixels to whole blocks and encode them (see the module docstring)."""
    if pixels.dim() != 4 or pixels.shape[0] != 3:
        raise ValueError(f"given frames must be [3, F, H, W], got {tuple(pixels.shape)}")
    pad = padding_for(pixels.shape[1], codec, block_frames)
    padded = torch.cat([pixels[:, :1].expand(-1, pad, -1, -1), pixels], dim=1)
    with torch.no_grad():
        latents = codec.encode(padded[None])
    if latents.shape[2] % block_frames:  # a codec whose frame rule we do not know
        raise ValueError(f"{pixels.shape[1]} given frames encode to {latents.shape[2]} latent frames, "
                         f"not whole blocks of {block_frames}")
    return GivenFrames(pixels, latents, pad)
