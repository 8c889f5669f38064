"""Wan's causal VAE decoded block by block (:meth:`hiar.wan.WanVAE.stream_decoder`), on a tiny
randomly initialised ``AutoencoderKLWan`` (float32).

The streamed blocks must be the one-shot decode of the whole latent video, frame for frame (the
first latent frame gives one pixel frame, each later one four, with no seam at block borders); the
state carried between blocks must not grow with the stream; and ``write_blocks`` must hand each
block to the writer as it comes, so a stopped run keeps what was decoded.
"""

from __future__ import annotations

import pytest
import torch

from hiar.conditioning import encode_given
from hiar.generate import World, write_blocks
from hiar.wan import WanVAE
from hiar.world.base import StreamDecoder
from tests.helpers import ConstantText, tiny_wan_vae

Z = 4


@pytest.fixture(scope="module")
def codec():
    return WanVAE(tiny_wan_vae(z_dim=Z))


def latent_video(frames: int, height: int = 2, width: int = 3, seed: int = 0) -> torch.Tensor:
    return torch.randn(1, Z, frames, height, width, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("sizes", [(3, 3, 3), (1, 2, 4)])
def test_streamed_blocks_are_the_one_shot_decode(codec, sizes):
    latents = latent_video(sum(sizes))
    whole = codec.decode(latents)
    decoder = codec.stream_decoder()
    assert isinstance(decoder, StreamDecoder)
    parts = [decoder.decode(block) for block in latents.split(sizes, dim=2)]
    # the stream's first latent frame is one pixel frame, every later one 4
    assert [p.shape[2] for p in parts] == [1 + 4 * (sizes[0] - 1)] + [4 * n for n in sizes[1:]]
    assert whole.shape[2] == 1 + 4 * (sum(sizes) - 1)
    assert whole.abs().mean() > 0.01  # non-trivial
    assert (torch.cat(parts, dim=2) - whole).abs().max() <= 1e-4


def test_the_comparison_can_fail(codec):
    """Blocks decoded without the carried state (each as a new video) differ from the one-shot decode."""
    latents = latent_video(6)
    alone = torch.cat([codec.decode(block) for block in latents.split(3, dim=2)], dim=2)
    whole = codec.decode(latents)
    assert alone.shape[2] != whole.shape[2]  # the second block also starts with a lone frame
    assert (alone[:, :, :9] - whole[:, :, :9]).abs().max() <= 1e-4  # the first block is the same
    assert (alone[:, :, 9:] - whole[:, :, 9:alone.shape[2]]).abs().max() > 1e-2


def test_reset_starts_a_new_video(codec):
    latents = latent_video(4)
    decoder = codec.stream_decoder()
    decoder.decode(latent_video(5, seed=1))
    decoder.reset()
    assert (decoder.decode(latents) - codec.decode(latents)).abs().max() <= 1e-4


def test_the_carried_state_does_not_grow_with_the_stream(codec):
    decoder = codec.stream_decoder()
    latents = latent_video(100, height=1, width=1)
    sizes = {}
    for n, block in enumerate(latents.split(1, dim=2), start=1):
        decoder.decode(block)
        sizes[n] = decoder.cache_bytes()
    assert sizes[10] > 0
    assert sizes[10] == sizes[100]


class ListWriter:
    """Records each write, as :class:`hiar.video.VideoWriter` would receive it."""

    def __init__(self):
        self.writes: list[torch.Tensor] = []

    def write(self, pixels):
        self.writes.append(pixels)


def wan_world(codec, height: int = 16, width: int = 24) -> World:
    return World("wan", codec, ConstantText(), height, width, 16)


def test_write_blocks_writes_each_block_as_it_comes(codec):
    latents = latent_video(9)
    whole = codec.decode(latents)[0]
    writer = ListWriter()
    seen = []

    def blocks():
        for n, block in enumerate(latents.split(3, dim=2)):
            seen.append(len(writer.writes))  # the writes made before this block was produced
            yield n, block

    write_blocks(blocks(), wan_world(codec), 30, writer=writer, progress=False)
    assert seen == [0, 1, 2]
    assert [w.shape[1] for w in writer.writes] == [9, 12, 9]  # the last block is cut to the 30 frames asked for
    assert (torch.cat(writer.writes, dim=1) - whole[:, :30]).abs().max() <= 1e-4


def test_a_stopped_stream_keeps_what_was_decoded(codec):
    latents = latent_video(9)
    whole = codec.decode(latents)[0]
    writer = ListWriter()

    def stopped_after_two_blocks():
        yield 0, latents[:, :, :3]
        yield 1, latents[:, :, 3:6]
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_blocks(stopped_after_two_blocks(), wan_world(codec), 33, writer=writer, progress=False)
    assert [w.shape[1] for w in writer.writes] == [9, 12]
    assert (torch.cat(writer.writes, dim=1) - whole[:, :21]).abs().max() <= 1e-4


def test_given_frames_go_through_the_stream_first(codec):
    g = torch.Generator().manual_seed(3)
    pixels = torch.rand(3, 5, 16, 24, generator=g) * 2 - 1
    given = encode_given(pixels, codec, 3)  # 4 padding frames + 5 given = 9 pixel frames = 3 latent frames
    new = latent_video(6, seed=4)
    writer = ListWriter()
    write_blocks(iter([(1, new[:, :, :3]), (2, new[:, :, 3:])]), wan_world(codec), 24, writer=writer,
                 progress=False, given=given)
    assert [w.shape[1] for w in writer.writes] == [5, 12, 12]
    assert torch.equal(writer.writes[0], pixels)  # the given frames, unchanged
    whole = codec.decode(torch.cat([given.latents, new], dim=2))[0]
    assert (torch.cat(writer.writes[1:], dim=1) - whole[:, 9:]).abs().max() <= 1e-4
