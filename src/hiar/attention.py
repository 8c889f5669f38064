"""Who attends to whom: attention specs, the KV cache, and the masked attention kernel.

Everything here works on *absolute frame indices*, never on positions in a buffer, so a call
that mixes cached frames, context frames being written and new frames being denoised (the fused
call) sees exactly what separate calls would see, and the cache can be a ring buffer.

Visibility (block-causal with ``block_frames = k``, window ``W`` and ``sink`` frames): a query in
frame ``q`` sees key frame ``f`` iff ``block(f) <= block(q)`` and either ``f < sink`` or
``f >= end(block(q)) - W``, where ``end(b) = (b + 1) k``. That is, each block attends to the last
``W`` frames up to and including itself, plus the sink frames. Bidirectional: every valid key.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import torch
import torch.nn.functional as F


class AttentionMode(enum.Enum):
    BIDIRECTIONAL = "bidirectional"
    CAUSAL = "causal"  # block-causal: frames attend to their own block and earlier ones


@dataclass(frozen=True)
class AttentionSpec:
    mode: AttentionMode = AttentionMode.BIDIRECTIONAL
    block_frames: int = 1
    window: int | None = None  # frames a block attends to, counting itself; None = unbounded
    sink: int = 0  # the first `sink` frames stay visible forever (attention sink)

    def __post_init__(self):
        if self.block_frames < 1:
            raise ValueError(f"block_frames must be >= 1, got {self.block_frames}")
        if self.window is not None and self.window < self.block_frames:
            raise ValueError(f"window ({self.window} frames) must hold at least one block ({self.block_frames} frames)")
        if self.sink < 0:
            raise ValueError(f"sink must be >= 0, got {self.sink}")
        if self.mode is AttentionMode.BIDIRECTIONAL and (self.window is not None or self.sink):
            raise ValueError("window and sink only apply to causal attention")

    @property
    def causal(self) -> bool:
        return self.mode is AttentionMode.CAUSAL

    @property
    def cache_frames(self) -> int | None:
        """Frames a KV cache must keep (sink + the window before the current block); None = unbounded."""
        if self.window is None:
            return None
        return self.sink + self.window - self.block_frames


BIDIRECTIONAL = AttentionSpec()


def block_causal(block_frames: int, window: int | None = None, sink: int = 0) -> AttentionSpec:
    return AttentionSpec(AttentionMode.CAUSAL, block_frames, window, sink)


def visible(query_frame: torch.Tensor, key_frames: torch.Tensor, spec: AttentionSpec) -> torch.Tensor:
    """Boolean visibility of ``key_frames`` ([..., Fk], -1 = empty slot) from ``query_frame`` ([...])."""
    q = query_frame.unsqueeze(-1)
    ok = key_frames >= 0
    if not spec.causal:
        return ok
    k = spec.block_frames
    qblock = torch.div(q, k, rounding_mode="floor")
    ok = ok & (torch.div(key_frames, k, rounding_mode="floor") <= qblock)
    if spec.window is not None:
        start = (qblock + 1) * k - spec.window
        ok = ok & ((key_frames >= start) | (key_frames < spec.sink))
    return ok


class KVCache:
    """Keys and values of context frames for every layer, for one context level.

    Holds at most ``spec.cache_frames`` frames (sink frames in fixed slots, the rest in a ring),
    so its memory is constant whatever the video length; with ``window=None`` it grows. Keys are
    stored after RoPE at their absolute frame, so they never need re-rotating. Writes are detached:
    context is data, not a path for gradients.
    """

    def __init__(self, spec: AttentionSpec, num_layers: int):
        if not spec.causal:
            raise ValueError("a KV cache needs causal attention (bidirectional calls see the whole clip)")
        self.spec = spec
        self.num_layers = num_layers
        self.k: list[torch.Tensor | None] = [None] * num_layers
        self.v: list[torch.Tensor | None] = [None] * num_layers
        self.slot_frames = torch.empty(0, dtype=torch.long)  # absolute frame in each slot, -1 = empty
        self.tokens_per_frame: int | None = None
        self.writes = 0  # number of write calls committed (for reports and tests)

    # -- reading ----------------------------------------------------------------------------------
    @property
    def num_frames(self) -> int:
        return int((self.slot_frames >= 0).sum())

    @property
    def next_frame(self) -> int:
        """The frame after the last one written (where a new segment starts by default)."""
        return int(self.slot_frames.max()) + 1 if self.num_frames else 0

    def frames(self) -> torch.Tensor:
        return self.slot_frames

    def layer(self, i: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        return None if self.k[i] is None else (self.k[i], self.v[i])

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.k + self.v if t is not None)

    # -- writing ----------------------------------------------------------------------------------
    def reset(self) -> None:
        """Forget every frame (a KV re-cache writes them again under a new prompt)."""
        self.k = [None] * self.num_layers
        self.v = [None] * self.num_layers
        self.slot_frames = torch.empty(0, dtype=torch.long)

    def plan(self, frames: list[int]) -> list[int]:
        """Slots the given frames will occupy (they must come after everything already cached)."""
        if self.num_frames and frames and min(frames) < self.next_frame:
            raise ValueError(f"cache already holds frames up to {self.next_frame - 1}; cannot write frame {min(frames)} again")
        cap = self.spec.cache_frames
        if cap is None:
            return list(range(len(self.slot_frames), len(self.slot_frames) + len(frames)))
        sink, ring = self.spec.sink, cap - self.spec.sink
        slots = []
        for f in frames:
            if f < sink:
                slots.append(f)
            elif ring > 0:
                slots.append(sink + (f - sink) % ring)
            else:
                slots.append(-1)  # a window of one block keeps no context
        return slots

    def _frames_needed(self, slots: list[int]) -> int:
        """Frame slots the buffers must have: the fixed capacity, or (unbounded) up to the last slot."""
        if self.spec.cache_frames is not None:
            return self.spec.cache_frames
        return max(slots, default=-1) + 1

    def store(self, layer: int, k: torch.Tensor, v: torch.Tensor, slots: list[int], tokens_per_frame: int) -> None:
        """Write ``k``/``v`` ([B, len(slots) * T, H, D]) of one layer into ``slots``."""
        T = tokens_per_frame
        k, v = k.detach(), v.detach()
        total = self._frames_needed(slots)
        if self.k[layer] is None or self.k[layer].shape[1] < total * T:
            shape = (k.shape[0], total * T, *k.shape[2:])
            new_k, new_v = k.new_zeros(shape), v.new_zeros(shape)
            if self.k[layer] is not None:  # unbounded cache growing
                n = self.k[layer].shape[1]
                new_k[:, :n], new_v[:, :n] = self.k[layer], self.v[layer]
            self.k[layer], self.v[layer] = new_k, new_v
        for i, s in enumerate(slots):
            if s < 0:
                continue
            self.k[layer][:, s * T:(s + 1) * T] = k[:, i * T:(i + 1) * T]
            self.v[layer][:, s * T:(s + 1) * T] = v[:, i * T:(i + 1) * T]

    def commit(self, frames: list[int], slots: list[int], tokens_per_frame: int) -> None:
        """Record that ``frames`` now live in ``slots`` (after every layer stored them)."""
        self.tokens_per_frame = tokens_per_frame
        need = self._frames_needed(slots)
        if len(self.slot_frames) < need:
            self.slot_frames = torch.cat([self.slot_frames, torch.full((need - len(self.slot_frames),), -1, dtype=torch.long)])
        for f, s in zip(frames, slots):
            if s >= 0:
                self.slot_frames[s] = f
        self.writes += 1


def _to_heads(x: torch.Tensor) -> torch.Tensor:  # [B, L, H, D] -> [B, H, L, D]
    return x.transpose(1, 2)


def sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
    """``F.scaled_dot_product_attention`` on ``[B, H, L, D]``; bfloat16 on the CPU runs in float32.

    Why: on AMX CPUs the bfloat16 flash kernel's backward is ~2.5x slower than float32's, which
    cancelled bfloat16's gain in the matmuls (toy teacher step, benchmarks/training.py).
    """
    if q.device.type == "cpu" and (q.dtype == torch.bfloat16 or torch.is_autocast_enabled("cpu")):
        with torch.autocast("cpu", enabled=False):  # autocast would cast the inputs back to bfloat16
            return F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=attn_mask).to(q.dtype)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)


def masked_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    query_frames: torch.Tensor,
    key_frames: torch.Tensor,
    spec: AttentionSpec,
    tokens_per_frame: int,
) -> torch.Tensor:
    """SDPA of ``q`` [GB, Lq, H, D] over ``k``/``v`` [GB, Lk, H, D] under ``spec``.

    ``query_frames`` [G, Fq] and ``key_frames`` [G, Fk] give each token's absolute frame, per group
    of ``B`` consecutive batch rows (groups let one call serve several caches). Every query block
    sees the same keys, so the work is one SDPA per query block: without a mask when all keys are
    visible, on a slice when the visible keys are a common contiguous range, masked otherwise.
    """
    T = tokens_per_frame
    G = query_frames.shape[0]
    B = q.shape[0] // G
    if not spec.causal and bool((key_frames >= 0).all()):
        return sdpa(_to_heads(q), _to_heads(k), _to_heads(v)).transpose(1, 2)
    # Runs of query frames that share a block (the relative layout is the same in every group).
    qf = query_frames[0]
    qblock = torch.div(qf, spec.block_frames, rounding_mode="floor") if spec.causal else torch.zeros_like(qf)
    bounds = [0] + [i for i in range(1, len(qf)) if qblock[i] != qblock[i - 1]] + [len(qf)]
    outs = []
    for a, b in zip(bounds[:-1], bounds[1:]):
        vis = visible(query_frames[:, a], key_frames, spec)  # [G, Fk]
        qa = _to_heads(q[:, a * T:b * T])
        if bool(vis.all()):
            o = sdpa(qa, _to_heads(k), _to_heads(v))
        elif bool((vis == vis[:1]).all()):
            idx = vis[0].nonzero().squeeze(1)
            if len(idx) == 0:
                raise ValueError(f"query frame {int(qf[a])} sees no key at all; check the attention spec")
            lo, hi = int(idx[0]), int(idx[-1]) + 1
            if hi - lo == len(idx):  # contiguous: a view, no copy
                ks, vs = k[:, lo * T:hi * T], v[:, lo * T:hi * T]
            else:
                tok = (idx[:, None] * T + torch.arange(T, device=idx.device)).flatten().to(k.device)
                ks, vs = k.index_select(1, tok), v.index_select(1, tok)
            o = sdpa(qa, _to_heads(ks), _to_heads(vs))
        else:
            mask = vis.repeat_interleave(T, dim=1).repeat_interleave(B, dim=0)[:, None, None, :]
            o = sdpa(qa, _to_heads(k), _to_heads(v), attn_mask=mask.to(q.device))
        outs.append(o.transpose(1, 2))
    return torch.cat(outs, dim=1)
