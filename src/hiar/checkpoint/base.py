"""What every checkpoint reader shares: :class:`CheckpointError`, the :class:`Checkpoint` a reader
returns, and two helpers for the messages (a shortened key listing, a :class:`~hiar.model.WanConfig`
built with the reason it cannot be).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch

from hiar.model import WanConfig


class CheckpointError(ValueError):
    """A checkpoint cannot be read, or does not fit the model; the message says exactly why.

    For a mismatch, ``missing``, ``unexpected`` and ``mismatched`` (key -> (checkpoint shape, model
    shape)) hold the full lists; the message shows the first few of each with a count.
    """

    def __init__(self, message: str, *, missing: Iterable[str] = (), unexpected: Iterable[str] = (),
                 mismatched: Mapping[str, tuple[tuple[int, ...], tuple[int, ...]]] | None = None):
        super().__init__(message)
        self.missing = list(missing)
        self.unexpected = list(unexpected)
        self.mismatched = dict(mismatched or {})


@dataclass
class Checkpoint:
    """What :func:`read_checkpoint` found: the weights (hiar / original Wan key names) and where from."""

    state_dict: dict[str, torch.Tensor]
    layout: str  # the layout on disk: "hiar", "wan" or "diffusers"
    config: WanConfig | None = None  # stored in the file (hiar) or in a config.json next to it
    entry: str | None = None  # the training-checkpoint entry used ("generator_ema", ...)
    metadata: dict[str, str] = field(default_factory=dict)
    files: list[Path] = field(default_factory=list)


def _listing(items: list[str], limit: int = 10) -> str:
    if len(items) <= limit:
        return ", ".join(items)
    return ", ".join(items[:limit]) + f", ... ({len(items) - limit} more)"


def _make_config(kw: dict, where: str) -> WanConfig:
    try:
        return WanConfig(**kw)
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{where}: {err}") from None
