"""MUSIQ (Ke et al., ICCV 2021, "MUSIQ: Multi-scale Image Quality Transformer"), written for hiar.

The network follows the paper and Google's reference implementation; its parameter names and shapes
are those of pyiqa's ``MUSIQ`` so that pyiqa's released weight files (``musiq_koniq_ckpt-*.pth``,
``musiq_spaq_*``, ``musiq_paq2piq_*``, ``musiq_ava_*``) load with a strict key check:

==============================================================  =================================
parameter                                                       shape (defaults)
==============================================================  =================================
``conv_root.weight``; ``gn_root.{weight,bias}``                 [64, 3, 7, 7]; [64]
``block1.conv{1,2,3}.weight``, ``block1.conv_proj.weight``      [64,64,1,1] [64,64,3,3] [256,64,1,1]
``block1.gn{1,2,3}.*``, ``block1.gn_proj.*``                    [64] [64] [256] [256]
``embedding.{weight,bias}``                                     [D, 256 * 8 * 8]; [D]
``transformer_encoder.posembed_input.position_emb``             [1, G * G, D]
``transformer_encoder.scaleembed_input.scale_emb``              [num_scales, D]
``transformer_encoder.cls``; ``...encoder_norm.*``              [1, 1, D]; [D]
``transformer_encoder.transformer.encoderblock_{i}.*``          norm1, attention.{query,key,value,out},
                                                                norm2, mlp.{fc1,fc2}
``head.{weight,bias}`` (1 output) / ``head.0.*`` (AVA, 10)      [C, D]; [C]
==============================================================  =================================

Forward pass for an image in [0, 1]: scale to [-1, 1]; build the multi-scale input -- the image
resized (aspect kept) so its longer side is 224, then 384, then the image at its own size -- cut
each into 32x32 patches (TensorFlow "SAME" zero padding at the border), give every patch its
hashed 2-D grid position and its scale index; the two resized scales are zero-padded to a fixed
length with a mask. Every patch goes through the ResNet root (weight-standardised 7x7/2 conv,
GroupNorm, ReLU, 3x3/2 max pool) and one bottleneck unit, is flattened channels-last (the TF
order the weights were trained with) and projected to ``D``. Position and scale embeddings are
added, a class token is prepended, a pre-norm transformer encoder runs with the padding masked,
and the head reads the class token: the score itself for one output, or the mean opinion score
``sum_i i * softmax_i`` over the ten AVA bins.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

STEM_CHANNELS = 64  # the ResNet root's width; fixed by the released weights
BOTTLENECK_EXPANSION = 4
MASKED_LOGIT = -1e3  # logit given to padded tokens (the reference uses this finite value, not -inf)


# --------------------------------------------------------------------------------- padding
def same_padding(size: tuple[int, int], kernel: int, stride: int) -> tuple[int, int, int, int]:
    """TensorFlow's "SAME" padding as ``(left, right, top, bottom)``: output ``ceil(size / stride)``,
    the odd pixel going to the right/bottom."""
    pads = []
    for n in size:
        total = max((math.ceil(n / stride) - 1) * stride + kernel - n, 0)
        pads.append((total // 2, total - total // 2))
    (top, bottom), (left, right) = pads
    return left, right, top, bottom


# --------------------------------------------------------------------------------- ResNet tokeniser
class StdConv2d(nn.Conv2d):
    """Convolution with weight standardisation (BiT-style ResNet): each filter is shifted to zero
    mean and divided by its (unbiased) std + 1e-5 before use; TF "SAME" zero padding."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        w = (w - w.mean(dim=(1, 2, 3), keepdim=True)) / (w.std(dim=(1, 2, 3), keepdim=True) + 1e-5)
        x = F.pad(x, same_padding(x.shape[-2:], self.kernel_size[0], self.stride[0]))
        return F.conv2d(x, w, self.bias, self.stride)


class BottleneckUnit(nn.Module):
    """ResNet v1 bottleneck (1x1, 3x3, 1x1) with GroupNorm(32) and a projected shortcut."""

    def __init__(self, channels: int, out_channels: int):
        super().__init__()
        self.conv1 = StdConv2d(channels, channels, 1, bias=False)
        self.gn1 = nn.GroupNorm(32, channels, eps=1e-4)
        self.conv2 = StdConv2d(channels, channels, 3, bias=False)
        self.gn2 = nn.GroupNorm(32, channels, eps=1e-4)
        self.conv3 = StdConv2d(channels, out_channels, 1, bias=False)
        self.gn3 = nn.GroupNorm(32, out_channels, eps=1e-4)
        self.conv_proj = StdConv2d(channels, out_channels, 1, bias=False)
        self.gn_proj = nn.GroupNorm(32, out_channels, eps=1e-4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = self.gn_proj(self.conv_proj(x))
        x = F.relu(self.gn1(self.conv1(x)))
        x = F.relu(self.gn2(self.conv2(x)))
        return F.relu(self.gn3(self.conv3(x)) + shortcut)


# --------------------------------------------------------------------------------- transformer
class SelfAttention(nn.Module):
    """Multi-head self-attention with separate q/k/v projections; masked tokens get logit -1e3."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"hidden size {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.query, self.key, self.value = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape

        def heads(t):
            return t.view(b, n, self.num_heads, d // self.num_heads).transpose(1, 2)

        q, k, v = heads(self.query(x)), heads(self.key(x)), heads(self.value(x))
        logits = (q @ k.transpose(-2, -1)) * (d // self.num_heads) ** -0.5
        pair_valid = mask[:, None, :, None] & mask[:, None, None, :]
        logits = logits.masked_fill(~pair_valid, MASKED_LOGIT)
        x = (logits.softmax(dim=-1) @ v).transpose(1, 2).reshape(b, n, d)
        return self.out(x)


class FeedForward(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class EncoderBlock(nn.Module):
    """Pre-norm transformer block (LayerNorm eps 1e-6 as in the Flax reference)."""

    def __init__(self, dim: int, mlp_dim: int, num_heads: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attention = SelfAttention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = FeedForward(dim, mlp_dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = x + self.attention(self.norm1(x), mask)
        return x + self.mlp(self.norm2(x))


class HashedPositionEmbedding(nn.Module):
    """One learned vector per cell of a G x G grid; every image's patch grid is mapped onto it."""

    def __init__(self, grid_size: int, dim: int):
        super().__init__()
        self.position_emb = nn.Parameter(torch.randn(1, grid_size * grid_size, dim) * 0.02)

    def forward(self, x: torch.Tensor, cells: torch.Tensor) -> torch.Tensor:
        return x + self.position_emb[0][cells]


class ScaleEmbedding(nn.Module):
    def __init__(self, num_scales: int, dim: int):
        super().__init__()
        self.scale_emb = nn.Parameter(torch.randn(num_scales, dim) * 0.02)

    def forward(self, x: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
        return x + self.scale_emb[scales]


class QualityEncoder(nn.Module):
    def __init__(self, dim: int, mlp_dim: int, num_heads: int, num_layers: int, num_scales: int, grid_size: int):
        super().__init__()
        self.posembed_input = HashedPositionEmbedding(grid_size, dim)
        self.scaleembed_input = ScaleEmbedding(num_scales, dim)
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        self.transformer = nn.ModuleDict({f"encoderblock_{i}": EncoderBlock(dim, mlp_dim, num_heads)
                                          for i in range(num_layers)})
        self.encoder_norm = nn.LayerNorm(dim, eps=1e-6)

    def forward(self, tokens: torch.Tensor, cells: torch.Tensor, scales: torch.Tensor,
                mask: torch.Tensor) -> torch.Tensor:
        x = self.scaleembed_input(self.posembed_input(tokens, cells), scales)
        x = torch.cat([self.cls.expand(len(x), -1, -1), x], dim=1)
        mask = torch.cat([mask.new_ones(len(x), 1), mask], dim=1)
        for block in self.transformer.values():
            x = block(x, mask)
        return self.encoder_norm(x)


# --------------------------------------------------------------------------------- multi-scale input
def hashed_grid_cells(rows: int, cols: int, grid_size: int) -> torch.Tensor:
    """Cell index in the G x G embedding grid of each patch of a ``rows x cols`` patch grid
    (row-major): each axis is mapped by nearest-neighbour resampling of ``0..G-1``, computed with
    torch's own ``nearest`` rule so the indices match the reference exactly."""
    axis = torch.arange(grid_size, dtype=torch.float32)[None, None]
    r = F.interpolate(axis, size=rows, mode="nearest")[0, 0].long()
    c = F.interpolate(axis, size=cols, mode="nearest")[0, 0].long()
    return (r[:, None] * grid_size + c[None, :]).reshape(-1)


def patchify(images: torch.Tensor, patch: int) -> torch.Tensor:
    """Non-overlapping ``patch x patch`` patches, TF "SAME" zero padding: ``[N, P, 3, patch, patch]``,
    patches in row-major order."""
    x = F.pad(images, same_padding(images.shape[-2:], patch, patch))
    n, c, h, w = x.shape
    x = x.view(n, c, h // patch, patch, w // patch, patch).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(n, -1, c, patch, patch)


class MultiScaleInput(torch.nn.Module):
    """The image at each longer-side length in ``longer_sides`` (ascending; aspect ratio kept) and at
    its own size, as patches with grid cells, scale indices and a validity mask. Resized scales are
    zero-padded (mask 0) or cut to ``ceil(L / patch)^2`` patches so every image of a scale gives the
    same length; the original scale keeps all its patches.

    Resizing is ``F.interpolate(mode="bicubic", align_corners=False, antialias=False)`` on the
    [-1, 1] image -- exactly pyiqa's preprocessing, which the released weights are scored with
    there. (The TF reference resizes with a Gaussian kernel, which antialiases when shrinking;
    pyiqa does not, so neither do we, to give the same numbers for the same weights.)"""

    def __init__(self, patch_size: int, grid_size: int, longer_sides=(224, 384)):
        super().__init__()
        self.patch_size, self.grid_size = patch_size, grid_size
        self.longer_sides = tuple(sorted(longer_sides))

    def _scale(self, images: torch.Tensor, scale_id: int, max_len: int | None):
        h, w = images.shape[-2:]
        patches = patchify(images, self.patch_size)
        n, count = patches.shape[:2]
        rows, cols = math.ceil(h / self.patch_size), math.ceil(w / self.patch_size)
        cells = hashed_grid_cells(rows, cols, self.grid_size).to(images.device).expand(n, -1)
        mask = torch.ones(n, count, dtype=torch.bool, device=images.device)
        if max_len is not None:  # pad with zero patches in cell 0, scale 0, masked out -- or cut
            extra = max(max_len - count, 0)
            patches = torch.cat([patches, patches.new_zeros(n, extra, *patches.shape[2:])], 1)[:, :max_len]
            cells = torch.cat([cells, cells.new_zeros(n, extra)], 1)[:, :max_len]
            mask = torch.cat([mask, mask.new_zeros(n, extra)], 1)[:, :max_len]
        scales = torch.full_like(cells, scale_id)
        if max_len is not None:
            scales = scales.masked_fill(~mask, 0)
        return patches, cells, scales, mask

    def forward(self, images: torch.Tensor):
        """``images`` [N, 3, H, W] in [-1, 1] -> patches [N, T, 3, p, p], cells, scales, mask [N, T]."""
        h, w = images.shape[-2:]
        parts = []
        for scale_id, side in enumerate(self.longer_sides):
            ratio = side / max(h, w)
            resized = F.interpolate(images, size=(round(h * ratio), round(w * ratio)), mode="bicubic",
                                    align_corners=False, antialias=False)
            parts.append(self._scale(resized, scale_id, math.ceil(side / self.patch_size) ** 2))
        parts.append(self._scale(images, len(self.longer_sides), None))
        return tuple(torch.cat(p, dim=1) for p in zip(*parts))


# --------------------------------------------------------------------------------- the network
class MusiqNet(nn.Module):
    """MUSIQ. Defaults are the released models' (ViT-S-like: 14 layers, 384 wide, 6 heads);
    ``num_class`` 1 for KonIQ/SPAQ/PaQ-2-PiQ, 10 for AVA. A small random configuration (e.g.
    ``hidden_size=32, mlp_dim=64, num_heads=2, num_layers=1``) is the same class, for tests.
    ``forward`` takes images [N, 3, H, W] in [0, 1] and returns one score per image, [N]."""

    def __init__(self, num_class: int = 1, hidden_size: int = 384, mlp_dim: int = 1152, num_heads: int = 6,
                 num_layers: int = 14, num_scales: int = 3, spatial_pos_grid_size: int = 10,
                 patch_size: int = 32, longer_side_lengths=(224, 384)):
        super().__init__()
        if num_scales < len(longer_side_lengths) + 1:
            raise ValueError(f"num_scales {num_scales} < {len(longer_side_lengths)} resized scales + the original")
        self.patch_size, self.num_class = patch_size, num_class
        self.inputs = MultiScaleInput(patch_size, spatial_pos_grid_size, longer_side_lengths)
        self.conv_root = StdConv2d(3, STEM_CHANNELS, 7, stride=2, bias=False)
        self.gn_root = nn.GroupNorm(32, STEM_CHANNELS, eps=1e-6)
        self.block1 = BottleneckUnit(STEM_CHANNELS, STEM_CHANNELS * BOTTLENECK_EXPANSION)
        token_side = patch_size // 4  # the stem's conv and max pool each halve the patch
        self.embedding = nn.Linear(STEM_CHANNELS * BOTTLENECK_EXPANSION * token_side ** 2, hidden_size)
        self.transformer_encoder = QualityEncoder(hidden_size, mlp_dim, num_heads, num_layers, num_scales,
                                                  spatial_pos_grid_size)
        linear = nn.Linear(hidden_size, num_class)
        # key names as in the weight files: "head.*" for one output, "head.0.*" for a distribution
        self.head = linear if num_class == 1 else nn.Sequential(linear, nn.Softmax(dim=-1))

    def tokenise(self, patches: torch.Tensor) -> torch.Tensor:
        """Patches [N, T, 3, p, p] -> tokens [N, T, hidden]."""
        n, t = patches.shape[:2]
        x = patches.reshape(n * t, 3, self.patch_size, self.patch_size)
        x = F.relu(self.gn_root(self.conv_root(x)))
        x = F.max_pool2d(F.pad(x, same_padding(x.shape[-2:], 3, 2)), 3, 2)  # zero pad is safe after ReLU
        x = self.block1(x)
        return self.embedding(x.permute(0, 2, 3, 1).reshape(n, t, -1))  # channels-last, as in TF

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        patches, cells, scales, mask = self.inputs((images - 0.5) * 2)
        x = self.transformer_encoder(self.tokenise(patches), cells, scales, mask)
        out = self.head(x[:, 0])
        if self.num_class == 1:
            return out[:, 0]
        bins = torch.arange(1, self.num_class + 1, dtype=out.dtype, device=out.device)
        return (out * bins).sum(dim=-1)  # mean opinion score of the predicted distribution
