"""Reading any checkpoint, and loading it into a model.

:func:`read_checkpoint` tells the format from what the path is and reads it with that format's module,
into hiar's (original Wan) key names. :func:`load_model` builds a :class:`~hiar.model.WanModel` from it
with the config given, stored, or read off the tensors' shapes (:func:`infer_config`). Loading is
strict: :func:`check_state_dict` lists missing keys, unexpected keys and shape mismatches.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Mapping
from pathlib import Path

import torch

from hiar.checkpoint.base import Checkpoint, CheckpointError, _listing, _make_config
from hiar.checkpoint.dcp import DCP_INDEX, read_dcp_checkpoint
from hiar.checkpoint.diffusers import config_from_diffusers
from hiar.checkpoint.keys import DIFFUSERS, WAN, detect_layout, diffusers_to_wan, strip_prefixes
from hiar.checkpoint.native import FORMAT, _load_safetensors, _stored_config
from hiar.checkpoint.training import _load_pickle, check_which, select_weights
from hiar.checkpoint.wan import WEIGHTS_NAME, _find_index, _load_sharded, config_from_wan
from hiar.model import PRESETS, WanConfig, WanModel


def _config_json(directory: Path) -> tuple[WanConfig | None, str | None]:
    path = directory / "config.json"
    if not path.is_file():
        return None, None
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{path}: not valid JSON: {err}") from None
    cls = data.get("_class_name")
    if cls == "WanTransformer3DModel" or "num_attention_heads" in data:
        return config_from_diffusers(data, where=str(path)), DIFFUSERS
    if cls == "WanModel" or "num_heads" in data:
        return config_from_wan(data, where=str(path)), WAN
    return None, None


def _training_step_weights(directory: Path, which: str) -> Path | None:
    """In a trainer's step folder (``checkpoints/step-N``: ``NAME.safetensors`` beside its EMA
    ``NAME_ema.safetensors``, NAME ``model`` or ``generator``, perhaps a critic too) the file ``which``
    picks: the EMA for ``auto``/``ema``/``generator_ema``, the raw weights for ``generator``."""
    for name in ("model", "generator"):
        raw, ema = directory / f"{name}.safetensors", directory / f"{name}_ema.safetensors"
        if raw.is_file() and ema.is_file():
            return raw if check_which(which)[0] == "generator" else ema
    return None


def read_checkpoint(path: str | os.PathLike, *, which: str = "auto") -> Checkpoint:
    """Read any supported checkpoint into hiar (original Wan) key names, without building a model."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    config, layout_hint, meta, entry = None, None, {}, None
    if path.is_dir() and (path / DCP_INDEX).is_file():
        return read_dcp_checkpoint(path, which=which)
    if path.is_dir():
        directory = path
        if not any(directory.glob("*.safetensors")) and (directory / "transformer").is_dir():
            directory = directory / "transformer"  # a diffusers pipeline folder
        config, layout_hint = _config_json(directory)
        index = _find_index(directory)
        if index is not None:
            raw, files = _load_sharded(index), [index]
        else:
            single = directory / WEIGHTS_NAME
            step = _training_step_weights(directory, which)
            candidates = [step] if step is not None else [single] if single.is_file() \
                else sorted(directory.glob("*.safetensors"))
            if len(candidates) != 1:
                what = "no" if not candidates else "several"
                raise CheckpointError(
                    f"{directory}: {what} safetensors weights ({', '.join(p.name for p in candidates) or 'none'}) "
                    f"and no *.safetensors.index.json; point at the file to load"
                )
            raw, meta = _load_safetensors(candidates[0])
            files = candidates
    elif path.suffix == ".safetensors":
        raw, meta = _load_safetensors(path)
        files = [path]
    elif path.name.endswith(".safetensors.index.json"):
        raw, files = _load_sharded(path), [path]
        config, layout_hint = _config_json(path.parent)
    elif path.suffix in (".pt", ".pth", ".bin", ".ckpt"):
        raw, entry = select_weights(_load_pickle(path), which)
        files = [path]
    else:
        raise CheckpointError(f"{path}: unknown checkpoint kind; expected .safetensors, a shard index, .pt/.pth or a directory")

    stored = _stored_config(meta, path)
    if stored is not None:
        return Checkpoint(dict(raw), FORMAT, stored, None, meta, files)

    state_dict = strip_prefixes(raw)
    layout = detect_layout(state_dict)
    if layout_hint is not None and layout_hint != layout:
        raise CheckpointError(f"{path}: config.json describes a {layout_hint} model but the keys are in {layout} layout")
    if layout == DIFFUSERS:
        state_dict = diffusers_to_wan(state_dict)
    return Checkpoint(state_dict, layout, config, entry, meta, files)


def load_state_dict(path: str | os.PathLike, *, which: str = "auto") -> dict[str, torch.Tensor]:
    """Any supported checkpoint -> a state dict in hiar (original Wan) key names."""
    return read_checkpoint(path, which=which).state_dict


def infer_config(state_dict: Mapping[str, torch.Tensor], *, num_heads: int | None = None, **overrides) -> WanConfig:
    """Read a :class:`WanConfig` off the shapes of a state dict in hiar (original Wan) key names.

    ``dim``, ``ffn_dim``, ``num_layers``, ``in_dim``, ``out_dim``, ``patch_size``, ``text_dim`` and
    ``freq_dim`` come from the shapes. The head count cannot: it is ``num_heads`` when given, else
    that of a preset whose sizes all match (which also gives its ``text_len``), else Wan's head
    size of 128 when ``dim`` is a multiple of it. ``overrides`` set any remaining field.
    """
    def shape(key: str) -> tuple[int, ...]:
        if key not in state_dict:
            raise CheckpointError(f"cannot infer the model size: the state dict has no '{key}'")
        return tuple(state_dict[key].shape)

    dim, in_dim, *patch = shape("patch_embedding.weight")
    layers = {int(m.group(1)) for k in state_dict if (m := re.match(r"blocks\.(\d+)\.", k))}
    if not layers:
        raise CheckpointError("cannot infer the model size: the state dict has no 'blocks.<i>.' keys")
    sizes = dict(
        dim=dim, in_dim=in_dim, patch_size=tuple(patch), num_layers=max(layers) + 1,
        text_dim=shape("text_embedding.0.weight")[1], freq_dim=shape("time_embedding.0.weight")[1],
        ffn_dim=shape("blocks.0.ffn.0.weight")[0], out_dim=shape("head.head.weight")[0] // math.prod(patch),
    )
    kw = dict(sizes)
    preset = next((p for p in PRESETS.values() if all(getattr(p, k) == v for k, v in sizes.items())), None)
    if num_heads is not None:
        kw["num_heads"] = num_heads
    elif preset is not None:
        kw["num_heads"] = preset.num_heads
    elif dim % 128 == 0:
        kw["num_heads"] = dim // 128
    else:
        raise CheckpointError(f"cannot infer the head count for dim={dim} (no preset matches); pass num_heads")
    if preset is not None:
        kw.update(text_len=preset.text_len, eps=preset.eps, rope_theta=preset.rope_theta)
    kw.update(overrides)
    return _make_config(kw, "inferred config")


def check_state_dict(expected: torch.nn.Module | Mapping[str, torch.Tensor], state_dict: Mapping[str, torch.Tensor], *,
                     source: str = "checkpoint", limit: int = 10) -> None:
    """Raise :class:`CheckpointError` listing missing keys, unexpected keys and shape mismatches."""
    ref = expected.state_dict() if isinstance(expected, torch.nn.Module) else expected
    missing = sorted(k for k in ref if k not in state_dict)
    unexpected = sorted(k for k in state_dict if k not in ref)
    mismatched = {
        k: (tuple(state_dict[k].shape), tuple(ref[k].shape))
        for k in sorted(ref) if k in state_dict and tuple(state_dict[k].shape) != tuple(ref[k].shape)
    }
    if not (missing or unexpected or mismatched):
        return
    parts = key_problems(missing, unexpected, mismatched, limit=limit, found_in="checkpoint")
    raise CheckpointError(f"{source} does not fit the model: " + "; ".join(parts),
                          missing=missing, unexpected=unexpected, mismatched=mismatched)


def key_problems(missing, unexpected, mismatched: Mapping[str, tuple], *, limit: int = 10,
                 found_in: str = "checkpoint") -> list[str]:
    """Readable lines for a state dict that does not fit: counts, then the first ``limit`` keys.

    ``mismatched`` maps a key to (shape in the file, shape in the model). Shared by every loader
    (transformer checkpoints here, metric networks in :mod:`hiar.eval.learned`).
    """
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing key(s): {_listing(sorted(missing), limit)}")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected key(s): {_listing(sorted(unexpected), limit)}")
    if mismatched:
        shown = [f"{k} ({found_in} {list(a)} vs model {list(b)})" for k, (a, b) in sorted(mismatched.items())]
        parts.append(f"{len(mismatched)} shape mismatch(es): {_listing(shown, limit)}")
    return parts


def load_weights(model: WanModel, source: str | os.PathLike | Mapping[str, torch.Tensor], *, which: str = "auto") -> WanModel:
    """Copy weights (a path or a state dict in hiar key names) into ``model``, strictly; the model
    keeps its device and dtype."""
    sd = dict(source) if isinstance(source, Mapping) else load_state_dict(source, which=which)
    check_state_dict(model, sd, source=str(source) if not isinstance(source, Mapping) else "state dict")
    model.load_state_dict(sd, strict=True)
    return model


def load_model(path: str | os.PathLike, *, config: WanConfig | str | None = None, num_heads: int | None = None,
               which: str = "auto", device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> WanModel:
    """Build a :class:`WanModel` from any supported checkpoint.

    The config is, in order: ``config`` (a :class:`WanConfig` or preset name); the one stored in the
    file (hiar format) or in the directory's ``config.json``; :func:`infer_config` (with
    ``num_heads``). The model is built on the meta device and takes the checkpoint's tensors, then
    moves to ``device`` / ``dtype`` (float32 by default, whatever the file holds).
    """
    ckpt = read_checkpoint(path, which=which)
    if isinstance(config, str):
        if config not in PRESETS:
            raise CheckpointError(f"unknown model preset '{config}'; choose from {', '.join(PRESETS)}")
        config = PRESETS[config]
    cfg = config or ckpt.config or infer_config(ckpt.state_dict, num_heads=num_heads)
    with torch.device("meta"):
        model = WanModel(cfg)
    try:
        check_state_dict(model, ckpt.state_dict, source=str(path))
    except CheckpointError as err:
        hint = _size_hint(ckpt, cfg) if config is not None else ""
        if not hint:
            raise
        raise CheckpointError(hint + str(err), missing=err.missing, unexpected=err.unexpected,
                              mismatched=err.mismatched) from None
    model.load_state_dict(ckpt.state_dict, strict=True, assign=True)
    return model.to(device=device, dtype=dtype)


_SIZE_FIELDS = ("dim", "ffn_dim", "num_layers", "in_dim", "out_dim", "patch_size", "text_dim", "freq_dim")


def _size_hint(ckpt: Checkpoint, cfg: WanConfig) -> str:
    """'the checkpoint is dim=48, ... but the config asks for dim=128, ...: ' (or '' if unknown)."""
    try:
        found = ckpt.config or infer_config(ckpt.state_dict, num_heads=cfg.num_heads)
    except CheckpointError:
        return ""
    diff = [f for f in _SIZE_FIELDS if getattr(found, f) != getattr(cfg, f)]
    if not diff:
        return ""
    have = ", ".join(f"{f}={getattr(found, f)}" for f in diff)
    want = ", ".join(f"{f}={getattr(cfg, f)}" for f in diff)
    return f"the checkpoint is a different size ({have}) from the requested config ({want}). "
