"""The Wan2.1 diffusion transformer, extended for autoregressive use.

Module names follow the original Wan2.1 checkpoint (``patch_embedding``, ``text_embedding.0``,
``blocks.3.self_attn.norm_q``, ``head.modulation``...), so an official state dict loads with no
renaming. Beyond the original:

* per-frame timesteps ``[B, F]`` (each frame its own modulation);
* attention modes (:mod:`hiar.attention`): bidirectional over the clip, or block-causal;
* a :class:`~hiar.attention.KVCache` per context level, passed in by the caller (no cache state
  lives in the model) and written by the same call that reads it: a forward over
  ``[context frames, new frames]`` with ``write_frames = len(context)`` is the *fused* pass;
* RoPE computed for any absolute frame index (no fixed table to run off);
* a per-prompt cross-attention cache (:class:`TextContext`), and text per frame and batch group
  (:class:`FrameText`: one call can hold context made under one prompt and a block under another).

Sizes come from :class:`WanConfig`; ``PRESETS`` has the real 1.3B model and small toys.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import torch
import torch.nn as nn
import torch.nn.functional as F

from hiar.attention import BIDIRECTIONAL, AttentionSpec, KVCache, masked_attention, sdpa
from hiar.schedule import NUM_TRAIN_TIMESTEPS


PREDICTIONS = ("velocity", "sample")
# x-prediction divides by sigma: below this level the velocity is (x - x0) / MIN_SAMPLE_SIGMA
# (JiT's t_eps), which keeps it finite for clean context frames (sigma 0).
MIN_SAMPLE_SIGMA = 0.05


@dataclass(frozen=True)
class WanConfig:
    dim: int = 1536
    ffn_dim: int = 8960
    num_heads: int = 12
    num_layers: int = 30
    in_dim: int = 16
    out_dim: int = 16
    patch_size: tuple[int, int, int] = (1, 2, 2)
    text_dim: int = 4096
    text_len: int = 512
    freq_dim: int = 256
    eps: float = 1e-6
    rope_theta: float = 10000.0
    # What the network's last layer outputs; forward() always returns a velocity. "velocity" is Wan's.
    # "sample" (x-prediction, Li & He 2025, "Back to Basics"): the head outputs the clean sample x0 and
    # forward returns (x - x0) / sigma. For wide patches (a 4x4 RGB patch is 48 numbers against the
    # toy's width of 128): predicting a velocity means copying the input's noise through the network,
    # and the toy's clean estimates at high noise came out speckled with it (docs/training.md).
    prediction: str = "velocity"

    def __post_init__(self):
        if self.prediction not in PREDICTIONS:
            raise ValueError(f"prediction must be one of {', '.join(PREDICTIONS)}, got {self.prediction!r}")
        if self.prediction == "sample" and self.in_dim != self.out_dim:
            raise ValueError(f"prediction='sample' needs out_dim == in_dim, got {self.out_dim} and {self.in_dim}")
        if self.dim % self.num_heads:
            raise ValueError(f"dim ({self.dim}) must be divisible by num_heads ({self.num_heads})")
        t, h, w = rope_split(self.head_dim)
        if min(t, h, w) <= 0 or t % 2 or h % 2:
            raise ValueError(f"head_dim {self.head_dim} cannot be split into even frame/height/width RoPE bands")
        if self.freq_dim % 2:
            raise ValueError(f"freq_dim must be even, got {self.freq_dim}")

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads


def rope_split(head_dim: int) -> tuple[int, int, int]:
    """Wan's split of a head into frame / height / width bands: 44/42/42 of 128."""
    hw = 2 * (head_dim // 6)
    return head_dim - 2 * hw, hw, hw


PRESETS: dict[str, WanConfig] = {
    # The real thing: ~1.42 B parameters.
    "wan2.1-t2v-1.3b": WanConfig(),
    # The shapes world's model: 32x32 RGB frames, patch 4x4, blocks of 3 frames.
    "toy": WanConfig(dim=128, ffn_dim=512, num_heads=4, num_layers=4, in_dim=3, out_dim=3,
                     patch_size=(1, 4, 4), text_dim=64, text_len=16, freq_dim=64),
    # The same world at patch 2x2 and 8 layers: the first size seen to draw the asked shapes (a 4x4
    # patch holds a whole 8-pixel shape, and no toy of that patch learnt one; docs/training.md). Four
    # times the tokens of "toy" and twice the layers: 12-25x its training step on a CPU, a GPU's work.
    "toy-p2": WanConfig(dim=128, ffn_dim=512, num_heads=4, num_layers=8, in_dim=3, out_dim=3,
                        patch_size=(1, 2, 2), text_dim=64, text_len=16, freq_dim=64),
    # For tests: the smallest model that still has every part.
    "tiny": WanConfig(dim=48, ffn_dim=96, num_heads=2, num_layers=2, in_dim=4, out_dim=4,
                      patch_size=(1, 2, 2), text_dim=16, text_len=8, freq_dim=32),
}


def get_config(preset: str, **overrides) -> WanConfig:
    if preset not in PRESETS:
        raise ValueError(f"unknown model preset '{preset}'; choose from {', '.join(PRESETS)}")
    return replace(PRESETS[preset], **overrides)


# ------------------------------------------------------------------------------------------------
# Small modules


def sinusoidal_embedding(dim: int, position: torch.Tensor) -> torch.Tensor:
    """Wan's timestep embedding: [cos, sin] of position * 10000^(-i / half), in float64."""
    half = dim // 2
    position = position.to(torch.float64)
    freqs = torch.pow(10000, -torch.arange(half, dtype=torch.float64, device=position.device) / half)
    angles = position[..., None] * freqs
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)


class WanLayerNorm(nn.LayerNorm):
    """LayerNorm computed in float32 (the affine parameters too, so a bf16 model works on CPU)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight.float() if self.weight is not None else None
        bias = self.bias.float() if self.bias is not None else None
        return F.layer_norm(x.float(), self.normalized_shape, weight, bias, self.eps).type_as(x)


class WanRMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(dim=-1, keepdim=True) + self.eps)).type_as(x) * self.weight


class RotaryEmbedding:
    """3-D RoPE for any absolute (frame, row, column); angles in float64, then cast.

    Pairs are interleaved (x0, x1), (x2, x3)... as in Wan's complex-number formulation.
    """

    def __init__(self, head_dim: int, theta: float = 10000.0):
        self.bands = rope_split(head_dim)
        # Always real CPU tensors (moved per call), also when the model is built under
        # ``torch.device("meta")`` for loading a checkpoint with assign=True.
        self.inv_freq = [1.0 / theta ** (torch.arange(0, d, 2, dtype=torch.float64, device="cpu") / d) for d in self.bands]

    def angles(self, frames: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """``frames`` [G, F] -> angles [G, F * height * width, head_dim / 2] (float64)."""
        G, Fr = frames.shape
        dev = frames.device
        f = frames.to(torch.float64)[:, :, None, None, None] * self.inv_freq[0].to(dev)
        h = torch.arange(height, dtype=torch.float64, device=dev)[:, None, None] * self.inv_freq[1].to(dev)
        w = torch.arange(width, dtype=torch.float64, device=dev)[:, None, None] * self.inv_freq[2].to(dev)
        f = f.expand(G, Fr, height, width, -1)
        h = h.view(1, 1, height, 1, -1).expand(G, Fr, height, width, -1)
        w = w.view(1, 1, 1, width, -1).expand(G, Fr, height, width, -1)
        return torch.cat([f, h, w], dim=-1).reshape(G, Fr * height * width, -1)

    @staticmethod
    def apply(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """Rotate ``x`` [B, L, H, D] by per-token ``cos``/``sin`` [B, L, 1, D/2] (float32 math)."""
        xf = x.float().unflatten(-1, (-1, 2))
        x0, x1 = xf[..., 0], xf[..., 1]
        out = torch.stack([x0 * cos - x1 * sin, x0 * sin + x1 * cos], dim=-1)
        return out.flatten(-2).type_as(x)


@dataclass
class Positions:
    """Where the tokens of one call sit: absolute frames per group and the patch grid."""

    frames: torch.Tensor  # [G, F]
    height: int  # patches
    width: int
    cos: torch.Tensor  # [G*B, L, 1, D/2]
    sin: torch.Tensor

    @property
    def tokens_per_frame(self) -> int:
        return self.height * self.width


@dataclass
class TextContext:
    """A prompt batch ready for cross-attention: embedded tokens and each layer's keys/values."""

    tokens: torch.Tensor  # [B, text_len, dim]
    kv: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)

    def repeat(self, n: int) -> "TextContext":
        """The same prompts for ``n`` groups of the batch (e.g. cells of one anti-diagonal)."""
        if n == 1:
            return self
        return TextContext(self.tokens.repeat(n, 1, 1), [(k.repeat(n, 1, 1, 1), v.repeat(n, 1, 1, 1)) for k, v in self.kv])


def _rows(ctx: TextContext, batch: int) -> TextContext:
    """``ctx`` for a video batch of ``batch`` rows (its prompts repeated for each group)."""
    if ctx.tokens.shape[0] == batch:
        return ctx
    if batch % ctx.tokens.shape[0]:
        raise ValueError(f"text batch {ctx.tokens.shape[0]} does not divide video batch {batch}")
    return ctx.repeat(batch // ctx.tokens.shape[0])


def _stack_rows(contexts: list[TextContext]) -> TextContext:
    """One context whose rows are the given contexts' rows, in order (one per batch group)."""
    if all(c is contexts[0] for c in contexts):
        return contexts[0].repeat(len(contexts))
    kv = [(torch.cat([c.kv[i][0] for c in contexts]), torch.cat([c.kv[i][1] for c in contexts]))
          for i in range(len(contexts[0].kv))]
    return TextContext(torch.cat([c.tokens for c in contexts]), kv)


@dataclass
class FrameText:
    """Text per frame: frame f of the rows of batch group g cross-attends to ``contexts[which[g, f]]``.

    For a fused call whose context frames were made under another prompt than its new block, or
    a batched call of cells under different prompts. Cross-attention is per query token, so this
    is the same as one call per prompt.
    """

    contexts: list[TextContext]
    which: torch.Tensor  # [G, F] indices into contexts (input frames)

    def spans(self, rows: int) -> list[tuple[int, int, TextContext]]:
        """Runs of frames ``[a, b)`` over which no group's text changes, each with one context of
        ``rows`` rows per group."""
        which = self.which.cpu()
        F = which.shape[1]
        cuts = [0] + [f for f in range(1, F) if bool((which[:, f] != which[:, f - 1]).any())] + [F]
        return [(a, b, _stack_rows([_rows(self.contexts[int(p)], rows) for p in which[:, a]]))
                for a, b in zip(cuts, cuts[1:])]


class _Attention(nn.Module):
    """q/k/v/o projections with RMS-normed queries and keys (Wan's names)."""

    def __init__(self, dim: int, num_heads: int, eps: float):
        super().__init__()
        self.num_heads = num_heads
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim) for _ in range(4))
        self.norm_q = WanRMSNorm(dim, eps)
        self.norm_k = WanRMSNorm(dim, eps)


class SelfAttention(_Attention):
    def forward(self, x, pos: Positions, spec: AttentionSpec, cache: list[KVCache] | None, layer: int, write: tuple | None):
        B, L, _ = x.shape
        q = self.norm_q(self.q(x)).unflatten(-1, (self.num_heads, -1))
        k = self.norm_k(self.k(x)).unflatten(-1, (self.num_heads, -1))
        v = self.v(x).unflatten(-1, (self.num_heads, -1))
        q = RotaryEmbedding.apply(q, pos.cos, pos.sin)
        k = RotaryEmbedding.apply(k, pos.cos, pos.sin)
        T = pos.tokens_per_frame
        if write is not None and torch.is_grad_enabled():
            # Frames being written are context: constants to the rows that read them, exactly as if they
            # had been written into the (detached) cache by a separate no-grad call.
            n = write[0] * T
            k, v = torch.cat([k[:, :n].detach(), k[:, n:]], 1), torch.cat([v[:, :n].detach(), v[:, n:]], 1)
        keys, values, key_frames = k, v, pos.frames
        if cache is not None:
            stored = _gather_cache(cache, layer, k)
            if stored is not None:
                ck, cv, cframes = stored
                keys, values = torch.cat([ck, k], dim=1), torch.cat([cv, v], dim=1)
                key_frames = torch.cat([cframes, pos.frames], dim=1)
        out = masked_attention(q, keys, values, pos.frames, key_frames, spec, T)
        if write is not None:  # after attending: the cache must not see its own new frames early
            nwrite, plans = write
            G = len(cache)
            for g, (c, slots) in enumerate(zip(cache, plans)):
                rows = slice(g * (B // G), (g + 1) * (B // G))
                c.store(layer, k[rows, : nwrite * T], v[rows, : nwrite * T], slots, T)
        return self.o(out.flatten(2))


def _gather_cache(caches: list[KVCache], layer: int, like: torch.Tensor):
    """Stack the caches of several groups (padding with empty slots) -> k, v, frames [G, Fk]."""
    entries = [c.layer(layer) for c in caches]
    if all(e is None for e in entries):
        return None
    T = next(c.tokens_per_frame for c, e in zip(caches, entries) if e is not None)
    nframes = max(len(c.frames()) for c in caches)
    ks, vs, fs = [], [], []
    rows = like.shape[0] // len(caches)
    for c, e in zip(caches, entries):
        frames = c.frames()  # on the CPU, as Positions.frames: masks are built there, then moved
        if e is None:
            k = like.new_zeros(rows, 0, *like.shape[2:])
            v = k
        else:
            k, v = e
        pad = nframes - k.shape[1] // T
        if pad:
            k = F.pad(k, (0, 0, 0, 0, 0, pad * T))
            v = F.pad(v, (0, 0, 0, 0, 0, pad * T))
            frames = F.pad(frames, (0, nframes - len(frames)), value=-1)
        ks.append(k)
        vs.append(v)
        fs.append(frames)
    if len(caches) == 1:
        return ks[0], vs[0], fs[0][None]
    return torch.cat(ks), torch.cat(vs), torch.stack(fs)


class CrossAttention(_Attention):
    def project(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        k = self.norm_k(self.k(tokens)).unflatten(-1, (self.num_heads, -1))
        v = self.v(tokens).unflatten(-1, (self.num_heads, -1))
        return k, v

    def forward(self, x: torch.Tensor, kv: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        q = self.norm_q(self.q(x)).unflatten(-1, (self.num_heads, -1))
        k, v = kv
        out = sdpa(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        return self.o(out.transpose(1, 2).flatten(2))


class WanBlock(nn.Module):
    """Modulated self-attention, cross-attention after an affine LayerNorm, modulated GELU FFN."""

    def __init__(self, cfg: WanConfig):
        super().__init__()
        dim = cfg.dim
        self.norm1 = WanLayerNorm(dim, cfg.eps, elementwise_affine=False)
        self.self_attn = SelfAttention(dim, cfg.num_heads, cfg.eps)
        self.norm3 = WanLayerNorm(dim, cfg.eps, elementwise_affine=True)
        self.cross_attn = CrossAttention(dim, cfg.num_heads, cfg.eps)
        self.norm2 = WanLayerNorm(dim, cfg.eps, elementwise_affine=False)
        self.ffn = nn.Sequential(nn.Linear(dim, cfg.ffn_dim), nn.GELU(approximate="tanh"), nn.Linear(cfg.ffn_dim, dim))
        self.modulation = nn.Parameter(torch.randn(1, 6, dim) / dim**0.5)

    def project_text(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """This layer's cross-attention keys/values of embedded prompt tokens."""
        return self.cross_attn.project(tokens)

    def forward(self, x, e, text_kv, pos, spec, cache, layer, write):
        # x: [B, L, C]; e: [B, F or 1, 6, C] float32 -> per-frame shift/scale/gate
        # text_kv: this layer's (keys, values), spans [(first token, end token, (k, v)), ...], or the
        # embedded tokens to project here - inside the block's own forward, so that an FSDP-sharded
        # block gathers its weights once per call (not through project_text, which FSDP wraps to
        # gather and free them around a call of its own)
        if isinstance(text_kv, torch.Tensor):
            text_kv = self.cross_attn.project(text_kv)
        B, L, C = x.shape
        frames = e.shape[1]
        mod = (self.modulation.float().unsqueeze(1) + e).unbind(2)  # 6 x [B, F, C]
        per_frame = lambda t: t.unsqueeze(2)  # [B, F, 1, C] against x viewed [B, F, T, C]
        shift1, scale1, gate1, shift2, scale2, gate2 = map(per_frame, mod)

        def framed(t):
            return t.view(B, frames, L // frames, C)

        h = framed(self.norm1(x)).float() * (1 + scale1) + shift1
        y = self.self_attn(h.flatten(1, 2).type_as(x), pos, spec, cache, layer, write)
        x = x + (framed(y).float() * gate1).flatten(1, 2).type_as(x)
        x = x + self._cross(self.norm3(x), text_kv)
        h = framed(self.norm2(x)).float() * (1 + scale2) + shift2
        y = self.ffn(h.flatten(1, 2).type_as(x))
        return x + (framed(y).float() * gate2).flatten(1, 2).type_as(x)


    def _cross(self, h: torch.Tensor, text_kv) -> torch.Tensor:
        if isinstance(text_kv, tuple):
            return self.cross_attn(h, text_kv)
        return torch.cat([self.cross_attn(h[:, a:b], kv) for a, b, kv in text_kv], dim=1)


class Head(nn.Module):
    def __init__(self, cfg: WanConfig):
        super().__init__()
        self.norm = WanLayerNorm(cfg.dim, cfg.eps, elementwise_affine=False)
        self.head = nn.Linear(cfg.dim, math.prod(cfg.patch_size) * cfg.out_dim)
        self.modulation = nn.Parameter(torch.randn(1, 2, cfg.dim) / cfg.dim**0.5)

    def forward(self, x: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        # e: [B, F or 1, C] (the time embedding before projection)
        B, L, C = x.shape
        frames = e.shape[1]
        shift, scale = (self.modulation.float().unsqueeze(1) + e.unsqueeze(2)).unbind(2)
        h = self.norm(x).view(B, frames, L // frames, C).float() * (1 + scale.unsqueeze(2)) + shift.unsqueeze(2)
        return self.head(h.flatten(1, 2).type_as(x))


# ------------------------------------------------------------------------------------------------
# The model


class WanModel(nn.Module):
    def __init__(self, cfg: WanConfig):
        super().__init__()
        self.cfg = cfg
        dim = cfg.dim
        self.patch_embedding = nn.Conv3d(cfg.in_dim, dim, kernel_size=cfg.patch_size, stride=cfg.patch_size)
        self.text_embedding = nn.Sequential(nn.Linear(cfg.text_dim, dim), nn.GELU(approximate="tanh"), nn.Linear(dim, dim))
        self.time_embedding = nn.Sequential(nn.Linear(cfg.freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.time_projection = nn.Sequential(nn.SiLU(), nn.Linear(dim, dim * 6))
        self.blocks = nn.ModuleList(WanBlock(cfg) for _ in range(cfg.num_layers))
        self.head = Head(cfg)
        self.rope = RotaryEmbedding(cfg.head_dim, cfg.rope_theta)
        self.gradient_checkpointing = False
        self.init_weights()

    def init_weights(self) -> None:
        """Wan's initialisation: xavier linears, small embeddings, a zero output layer."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.xavier_uniform_(self.patch_embedding.weight.flatten(1))
        for seq in (self.text_embedding, self.time_embedding):
            for m in seq:
                if isinstance(m, nn.Linear):
                    nn.init.normal_(m.weight, std=0.02)
        nn.init.zeros_(self.head.head.weight)

    @property
    def device(self) -> torch.device:
        return self.patch_embedding.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.patch_embedding.weight.dtype

    def new_cache(self, spec: AttentionSpec) -> KVCache:
        return KVCache(spec, self.cfg.num_layers)

    # -- text ---------------------------------------------------------------------------------
    def encode_text(self, text: torch.Tensor) -> TextContext:
        """``[B, L <= text_len, text_dim]`` encoder states -> a reusable cross-attention context.

        Shorter inputs are zero-padded to ``text_len`` first, as Wan does: the padded positions
        still take part in cross-attention, so padding changes the numbers and must match.
        """
        tokens = self._embed_text(text)
        return TextContext(tokens, [blk.project_text(tokens) for blk in self.blocks])

    def _embed_text(self, text: torch.Tensor) -> torch.Tensor:
        """``[B, L, text_dim]`` -> the embedded, zero-padded tokens ``[B, text_len, dim]``."""
        cfg = self.cfg
        if text.ndim != 3 or text.shape[-1] != cfg.text_dim:
            raise ValueError(f"text states must be [B, L, {cfg.text_dim}], got {tuple(text.shape)}")
        if text.shape[1] > cfg.text_len:
            raise ValueError(f"text has {text.shape[1]} tokens, more than text_len={cfg.text_len}")
        text = F.pad(text, (0, 0, 0, cfg.text_len - text.shape[1])).to(self.dtype)
        return self.text_embedding(text)

    # -- forward ------------------------------------------------------------------------------
    def forward(
        self,
        x: torch.Tensor,
        timesteps: torch.Tensor,
        text: torch.Tensor | TextContext | FrameText,
        *,
        attention: AttentionSpec = BIDIRECTIONAL,
        cache: KVCache | list[KVCache] | None = None,
        frames: torch.Tensor | None = None,
        write_frames: int = 0,
    ) -> torch.Tensor:
        """Predict the velocity for ``x`` [B, C, F, H, W].

        timesteps: ``[B]`` or per frame ``[B, F]`` (Wan's scale, 1000 * sigma).
        text: encoder states, a :class:`TextContext`, or a :class:`FrameText` (text per frame and group).
        cache: a KV cache (or one per group of ``B / G`` batch rows) holding earlier frames.
        frames: absolute frame index of each input frame, ``[F]`` or per group ``[G, F]``;
            default: right after what the cache holds (or 0..F-1).
        write_frames: the first ``write_frames`` frames' keys/values are appended to the cache
            after they have been used (the fused context-write + denoise pass). Like cache entries,
            they are constants to the frames that read them: no gradient flows back through them.
        Returns the velocity for all F frames, [B, C_out, F, H, W].
        """
        cfg = self.cfg
        B, C, Fr, H, W = x.shape
        pt, ph, pw = cfg.patch_size
        if C != cfg.in_dim or Fr % pt or H % ph or W % pw:
            raise ValueError(f"input {tuple(x.shape)} does not fit in_dim={cfg.in_dim}, patch={cfg.patch_size}")
        caches = [cache] if isinstance(cache, KVCache) else cache
        G = len(caches) if caches else 1
        if B % G:
            raise ValueError(f"batch {B} does not split into {G} cache groups")
        if caches and not attention.causal:
            raise ValueError("a KV cache is only meaningful with causal attention")
        if write_frames and not caches:
            raise ValueError("write_frames > 0 needs a cache to write into")
        if not 0 <= write_frames <= Fr:
            raise ValueError(f"write_frames must be within [0, {Fr}], got {write_frames}")

        # Positions
        if frames is None:
            starts = torch.tensor([c.next_frame for c in caches] if caches else [0])
            frames = starts[:, None] + torch.arange(Fr // pt)
        frames = torch.as_tensor(frames, dtype=torch.long)
        if frames.ndim == 1:
            frames = frames[None].expand(G, -1)
        frames = frames.cpu()
        fp, hp, wp = Fr // pt, H // ph, W // pw
        # Angles in float64 on the compute device (exact at any frame index), one row per group.
        angles = self.rope.angles(frames.to(x.device), hp, wp)
        cos = torch.cos(angles).float().repeat_interleave(B // G, dim=0).unsqueeze(2)
        sin = torch.sin(angles).float().repeat_interleave(B // G, dim=0).unsqueeze(2)
        pos = Positions(frames, hp, wp, cos, sin)

        # Time: one embedding per frame (or one per sample when all frames share it)
        t = torch.as_tensor(timesteps, device=x.device)
        if t.ndim == 0:
            t = t.expand(B)
        t = t[:, None] if t.ndim == 1 else t
        if t.shape[0] != B or t.shape[1] not in (1, Fr):
            raise ValueError(f"timesteps must be [B] or [B, F] = [{B}, {Fr}], got {tuple(t.shape)}")
        per_frame_t = t
        t = t[:, ::pt]
        if t.shape[1] > 1 and bool((t == t[:, :1]).all()):
            t = t[:, :1]  # same modulation for every frame: compute it once
        e = self.time_embedding(sinusoidal_embedding(cfg.freq_dim, t).to(self.dtype))
        e0 = self.time_projection(e).float().unflatten(-1, (6, cfg.dim))  # [B, F|1, 6, dim]
        e = e.float()

        # Text: one context for every token, or spans of tokens each with its own
        text_kv = self._text_kv(text, B, G, Fr, hp * wp)

        # Cache writes are planned once and committed after the last layer stored its K/V.
        write = None
        if write_frames:
            wf = write_frames // pt
            plans = [c.plan(frames[g, :wf].tolist()) for g, c in enumerate(caches)]
            write = (wf, plans)

        h = self.patch_embedding(x.to(self.dtype)).flatten(2).transpose(1, 2)  # [B, L, dim]
        for i, blk in enumerate(self.blocks):
            # Recomputation would read caches written after the forward pass: no checkpointing with a cache.
            if self.gradient_checkpointing and self.training and torch.is_grad_enabled() and caches is None:
                h = torch.utils.checkpoint.checkpoint(blk, h, e0, text_kv(i), pos, attention, caches, i, write, use_reentrant=False)
            else:
                h = blk(h, e0, text_kv(i), pos, attention, caches, i, write)
        if write is not None:
            for g, c in enumerate(caches):
                c.commit(frames[g, : write[0]].tolist(), write[1][g], pos.tokens_per_frame)
        out = self.unpatchify(self.head(h, e), fp, hp, wp)
        if cfg.prediction == "sample":
            sigma = (per_frame_t.float() / NUM_TRAIN_TIMESTEPS).clamp_min(MIN_SAMPLE_SIGMA)[:, None, :, None, None]
            out = ((x.float() - out.float()) / sigma).to(out.dtype)
        return out

    def _text_kv(self, text, batch: int, groups: int, frames: int, tokens_per_frame: int):
        """Layer i -> its cross-attention keys/values: (k, v), or token spans of a :class:`FrameText`."""
        if isinstance(text, TextContext):
            ctx = _rows(text, batch)
            return lambda i: ctx.kv[i]
        if not isinstance(text, FrameText):  # a raw prompt batch: each block projects it in its own forward
            tokens = _rows(TextContext(self._embed_text(text)), batch).tokens
            return lambda i: tokens
        pt = self.cfg.patch_size[0]
        if tuple(text.which.shape) != (groups, frames):
            raise ValueError(f"frame text must name a prompt per group and frame, [{groups}, {frames}], got {tuple(text.which.shape)}")
        spans = [(a // pt * tokens_per_frame, b // pt * tokens_per_frame, _rows(c, batch)) for a, b, c in text.spans(batch // groups)]
        if len(spans) == 1:
            return lambda i: spans[0][2].kv[i]
        return lambda i: [(a, b, c.kv[i]) for a, b, c in spans]

    def unpatchify(self, x: torch.Tensor, f: int, h: int, w: int) -> torch.Tensor:
        pt, ph, pw = self.cfg.patch_size
        B = x.shape[0]
        x = x.view(B, f, h, w, pt, ph, pw, self.cfg.out_dim)
        x = torch.einsum("bfhwpqrc->bcfphqwr", x)
        return x.reshape(B, self.cfg.out_dim, f * pt, h * ph, w * pw)


def build_model(cfg: WanConfig | str, *, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> WanModel:
    cfg = get_config(cfg) if isinstance(cfg, str) else cfg
    return WanModel(cfg).to(device=device, dtype=dtype)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
