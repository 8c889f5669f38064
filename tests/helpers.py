"""Small factories shared by tests (picklable, so spawned ranks can call them)."""

from __future__ import annotations

import torch
import torch.distributed as dist

from hiar.model import WanConfig, WanModel, get_config


def tiny_model(seed: int = 0, std: float = 0.1, **overrides) -> WanModel:
    """The `tiny` preset with non-trivial random weights (a zero head would hide bugs)."""
    torch.manual_seed(seed)
    model = WanModel(get_config("tiny", **overrides)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, std)
    return model


class FailingModel(WanModel):
    """Raises on its `fail_call`-th forward when running as rank `fail_rank`."""

    def __init__(self, cfg: WanConfig, fail_rank: int, fail_call: int):
        super().__init__(cfg)
        self.fail_rank, self.fail_call, self.calls = fail_rank, fail_call, 0

    def forward(self, *args, **kwargs):
        self.calls += 1
        if dist.is_initialized() and dist.get_rank() == self.fail_rank and self.calls == self.fail_call:
            raise RuntimeError(f"boom on rank {self.fail_rank}")
        return super().forward(*args, **kwargs)


def failing_tiny_model(fail_rank: int, fail_call: int) -> WanModel:
    return FailingModel(get_config("tiny"), fail_rank, fail_call).eval()


class CopyModel(torch.nn.Module):
    """A known-answer stand-in for a trained model: it copies its context.

    For the block it denoises (the call's last k frames) it predicts as x0 the k frames just before
    it that attention lets it see (cached, or written in the same call), at whatever level they are;
    with no context, x0 = 0. So when a rule's last step reads clean context, every generated block
    is the block before it, and a continued clip repeats its last given block. The cache holds the
    written frames themselves (one token per frame), so windows and sinks act as in the real model.
    """

    def __init__(self, preset: str = "toy"):
        super().__init__()
        self.cfg = get_config(preset)
        self.anchor = torch.nn.Parameter(torch.zeros(()))  # device and dtype

    @property
    def device(self) -> torch.device:
        return self.anchor.device

    @property
    def dtype(self) -> torch.dtype:
        return self.anchor.dtype

    def new_cache(self, spec):
        from hiar.attention import KVCache

        return KVCache(spec, num_layers=1)

    def encode_text(self, text):
        return text

    def forward(self, x, timesteps, text, *, attention, cache=None, frames=None, write_frames=0):
        from hiar.attention import KVCache, visible

        B, C, F, H, W = x.shape
        k = attention.block_frames
        caches = [cache] if isinstance(cache, KVCache) else list(cache or [])
        G = max(1, len(caches))
        frames = torch.as_tensor(frames if frames is not None else torch.arange(F)).long()
        frames = frames[None].expand(G, F) if frames.ndim == 1 else frames
        sigma = torch.as_tensor(timesteps, dtype=torch.float64).expand(B, F) / 1000.0
        tokens = x.permute(0, 2, 1, 3, 4).reshape(B, F, 1, C * H * W)  # one token per frame
        out = torch.zeros_like(x)
        rows = B // G
        for g in range(G):
            r = slice(g * rows, (g + 1) * rows)
            keys, key_frames = tokens[r, : F - k], frames[g, : F - k]
            if caches and caches[g].layer(0) is not None:
                keys = torch.cat([caches[g].layer(0)[0], keys], dim=1)
                key_frames = torch.cat([caches[g].frames(), key_frames])
            q = int(frames[g, F - k])
            ok = visible(torch.tensor(q), key_frames, attention) & (key_frames < q)
            idx = ok.nonzero().squeeze(1)
            idx = idx[key_frames[idx].argsort()][-k:]
            x0 = torch.zeros(rows, k, C * H * W, dtype=x.dtype)
            if len(idx):
                x0[:, k - len(idx):] = keys[:, idx, 0]
                x0[:, : k - len(idx)] = keys[:, idx[:1], 0]
            x0 = x0.reshape(rows, k, C, H, W).permute(0, 2, 1, 3, 4)
            s = sigma[r, F - k:].to(x.dtype)[:, None, :, None, None]
            out[r, :, F - k:] = (x[r, :, F - k:] - x0) / s
        if write_frames:
            for g, c in enumerate(caches):
                written = frames[g, :write_frames].tolist()
                slots = c.plan(written)
                t = tokens[g * rows:(g + 1) * rows, :write_frames]
                c.store(0, t, t, slots, 1)
                c.commit(written, slots, 1)
        return out


def save_toy_checkpoint(path, seed: int = 0, poison: float | None = None):
    """A random `toy` model (the shapes world's size) saved as hiar safetensors at ``path``;
    ``poison`` (e.g. nan) is written into one weight of the output head."""
    from hiar.checkpoint import save_model
    from hiar.model import build_model

    torch.manual_seed(seed)
    model = build_model("toy")
    if poison is not None:
        with torch.no_grad():
            model.head.head.weight[0, 0] = poison
    return save_model(model, path)
