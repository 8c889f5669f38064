"""The original Wan2.1 layout: hiar's own key names, in the files Wan's releases ship:
``diffusion_pytorch_model.safetensors`` (:data:`WEIGHTS_NAME`), or shards listed by a
``*.safetensors.index.json`` (``{"weight_map": {key: shard file}}``), next to a ``config.json`` with
``_class_name: WanModel`` and Wan's field names (``dim``, ``num_heads``, ``model_type`` ...).
diffusers folders use the same file kinds (:mod:`hiar.checkpoint.diffusers`); ``.pth`` files are read
as training checkpoints are (:mod:`hiar.checkpoint.training`).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from pathlib import Path

import torch

from hiar.checkpoint.base import CheckpointError, _listing, _make_config
from hiar.checkpoint.native import _load_safetensors
from hiar.model import WanConfig

WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"  # the name both Wan and diffusers use


def _find_index(directory: Path) -> Path | None:
    preferred = directory / (WEIGHTS_NAME + ".index.json")
    if preferred.is_file():
        return preferred
    found = sorted(directory.glob("*.safetensors.index.json"))
    if len(found) > 1:
        raise CheckpointError(f"{directory}: several shard indexes, cannot choose: {', '.join(p.name for p in found)}")
    return found[0] if found else None


def _load_sharded(index: Path) -> dict[str, torch.Tensor]:
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise CheckpointError(f"{index}: not a shard index (needs a 'weight_map'): {err}") from None
    missing = sorted({f for f in weight_map.values() if not (index.parent / f).is_file()})
    if missing:
        raise CheckpointError(f"{index}: shard file(s) not found: {_listing(missing, 10)}")
    out: dict[str, torch.Tensor] = {}
    for shard in sorted(set(weight_map.values())):
        tensors, _ = _load_safetensors(index.parent / shard)
        out.update(tensors)
    absent = sorted(k for k in weight_map if k not in out)
    if absent:
        raise CheckpointError(f"{index}: keys listed in the index are not in their shards: {_listing(absent, 10)}")
    return out


def config_from_wan(data: Mapping, *, where: str = "config", **overrides) -> WanConfig:
    """An original Wan ``config.json`` (``_class_name: WanModel``) -> :class:`WanConfig`."""
    if data.get("model_type", "t2v") != "t2v":
        raise CheckpointError(f"{where}: only text-to-video Wan models are supported, got model_type={data['model_type']!r}")
    names = {f.name for f in dataclasses.fields(WanConfig)}
    kw = {k: (tuple(v) if isinstance(v, list) else v) for k, v in data.items() if k in names}
    kw.update(overrides)
    return _make_config(kw, where)
