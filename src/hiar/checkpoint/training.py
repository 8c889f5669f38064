"""Training checkpoints of Self-Forcing / HiAR / CausVid, and any ``.pt``/``.pth``/``.bin``/``.ckpt``
file: a pickled dict with ``generator`` and/or ``generator_ema`` (the EMA weights, which the released
Self-Forcing inference loads with ``--use_ema``), each a state dict whose keys start with ``model.``
(stripped by :func:`~hiar.checkpoint.keys.strip_prefixes`); or a plain state dict, perhaps under
``state_dict``, ``model`` or ``module`` (original Wan ``.pth`` files). Read with
``torch.load(weights_only=True)``: tensors and plain containers, never arbitrary pickled objects.
"""

from __future__ import annotations

import pickle
from collections.abc import Mapping
from pathlib import Path

import torch

from hiar.checkpoint.base import CheckpointError, _listing


_WHICH = {"auto": ("generator_ema", "generator"), "ema": ("generator_ema",), "generator_ema": ("generator_ema",),
          "generator": ("generator",)}


def _is_state_dict(obj) -> bool:
    return isinstance(obj, Mapping) and len(obj) > 0 and all(isinstance(v, torch.Tensor) for v in obj.values())


def check_which(which: str) -> tuple[str, ...]:
    """The training-checkpoint entries ``which`` asks for, in order of preference (or an error)."""
    if which not in _WHICH:
        raise CheckpointError(f"which must be one of {sorted(_WHICH)}, got '{which}'")
    return _WHICH[which]


def select_weights(obj, which: str = "auto") -> tuple[dict[str, torch.Tensor], str | None]:
    """The transformer's state dict inside a loaded checkpoint object, and which entry it came from.

    ``which``: ``"auto"`` (``generator_ema`` if present, else ``generator``), ``"ema"`` /
    ``"generator_ema"`` or ``"generator"`` (that entry, or an error). A plain state dict is returned
    as is (``which`` other than ``"auto"`` is then an error, since there is nothing to choose).
    Also unwraps ``{"state_dict": ...}``, ``{"model": ...}`` and ``{"module": ...}``.
    """
    wanted = check_which(which)
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"a checkpoint must hold a dict of tensors, got {type(obj).__name__}")
    if _is_state_dict(obj):
        if which != "auto":
            raise CheckpointError(f"which='{which}' asks for a training checkpoint entry, but this file is a plain state dict")
        return dict(obj), None
    for name in wanted:
        if name in obj:
            sd = obj[name]
            if not _is_state_dict(sd):
                raise CheckpointError(f"checkpoint entry '{name}' is not a dict of tensors")
            return dict(sd), name
    if which == "auto":
        for name in ("state_dict", "model", "module"):
            if name in obj and _is_state_dict(obj[name]):
                return dict(obj[name]), name
    raise CheckpointError(f"checkpoint has no {' or '.join(repr(n) for n in wanted)} entry; "
                          f"it holds: {_listing([str(k) for k in obj], 20)}")


def _load_pickle(path: Path):
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise CheckpointError(
            f"{path}: refused to load: the file holds pickled Python objects, not only tensors "
            f"(read with torch.load(weights_only=True)); convert it to safetensors. Details: {str(err).splitlines()[0]}"
        ) from None
    except (RuntimeError, EOFError, OSError) as err:
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint: {err}") from None
