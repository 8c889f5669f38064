"""hiar's own format: one safetensors file, in hiar's (original Wan) key names, whose metadata holds
``format = "hiar"``, ``format_version`` (:data:`FORMAT_VERSION`) and ``config`` (the
:class:`~hiar.model.WanConfig` as JSON), plus any extra strings (training step, commit ...).

Also the safetensors reading and writing the other formats use: :func:`save_state_dict` writes
atomically (:func:`_atomic_write`: a temporary file in the same folder, fsync, ``os.replace``).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path

import torch

from hiar.checkpoint.base import CheckpointError
from hiar.config import ConfigError, from_dict, to_dict
from hiar.model import WanConfig, WanModel

FORMAT = "hiar"
FORMAT_VERSION = 1


def _load_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = dict(f.metadata() or {})
            return {k: f.get_tensor(k) for k in f.keys()}, meta
    except (SafetensorError, OSError) as err:
        raise CheckpointError(f"{path}: not a readable safetensors file: {err}") from None


def _stored_config(meta: Mapping[str, str], path: Path) -> WanConfig | None:
    """The config in a hiar-format file's metadata; ``None`` when the metadata is not hiar's."""
    if meta.get("format") != FORMAT:
        return None
    version = int(meta.get("format_version", "0"))
    if version > FORMAT_VERSION:
        raise CheckpointError(f"{path}: hiar checkpoint format {version} is newer than this library reads ({FORMAT_VERSION})")
    try:
        return from_dict(WanConfig, json.loads(meta["config"]))
    except (KeyError, json.JSONDecodeError, ConfigError) as err:
        raise CheckpointError(f"{path}: damaged hiar metadata (config): {err}") from None


def _atomic_write(path: Path, write) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def _contiguous_cpu(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu").contiguous() for k, v in state_dict.items()}


def save_state_dict(state_dict: Mapping[str, torch.Tensor], path: str | os.PathLike, *, metadata: Mapping[str, str] | None = None) -> Path:
    """Write a state dict as safetensors atomically (temp file in the same folder + ``os.replace``)."""
    from safetensors.torch import save_file

    tensors = _contiguous_cpu(state_dict)
    meta = {str(k): str(v) for k, v in (metadata or {}).items()}
    return _atomic_write(Path(path), lambda tmp: save_file(tensors, tmp, metadata=meta))


def save_model(model: WanModel, path: str | os.PathLike, *, metadata: Mapping[str, str] | None = None,
               state_dict: Mapping[str, torch.Tensor] | None = None) -> Path:
    """Save in hiar's format: safetensors + metadata ``format``, ``format_version``, ``config``
    (JSON of the :class:`WanConfig`) and any extra string ``metadata`` (e.g. the training step).
    ``state_dict``: the weights to write instead of ``model.state_dict()`` (a sharded model's
    gathered copy)."""
    meta = dict(metadata or {})
    meta.update(format=FORMAT, format_version=str(FORMAT_VERSION), config=json.dumps(to_dict(model.cfg)))
    return save_state_dict(model.state_dict() if state_dict is None else state_dict, path, metadata=meta)
