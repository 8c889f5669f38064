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
