"""diffusers' ``WanTransformer3DModel``: Wan's file kinds (:mod:`hiar.checkpoint.wan`) with diffusers'
key names (converted by :mod:`hiar.checkpoint.keys`) and a ``config.json`` with ``_class_name:
WanTransformer3DModel`` and diffusers' field names (``num_attention_heads``, ``attention_head_dim``,
``in_channels`` ...). A pipeline folder keeps the transformer under ``transformer/``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

from hiar.checkpoint.base import CheckpointError, _make_config
from hiar.checkpoint.keys import wan_to_diffusers
from hiar.checkpoint.native import _atomic_write, save_state_dict
from hiar.checkpoint.wan import WEIGHTS_NAME
from hiar.model import WanConfig, WanModel


def config_from_diffusers(data: Mapping, *, where: str = "config", **overrides) -> WanConfig:
    """A diffusers ``WanTransformer3DModel`` config (``config.json`` dict) -> :class:`WanConfig`."""
    if data.get("image_dim") is not None or data.get("added_kv_proj_dim") is not None:
        raise CheckpointError(f"{where}: image-conditioned Wan models (image_dim / added_kv_proj_dim) are not supported")
    if data.get("cross_attn_norm") is False or data.get("qk_norm", "rms_norm_across_heads") != "rms_norm_across_heads":
        raise CheckpointError(f"{where}: only cross_attn_norm=true, qk_norm='rms_norm_across_heads' (Wan2.1) is supported")
    try:
        heads, head_dim = int(data["num_attention_heads"]), int(data["attention_head_dim"])
        kw = dict(
            dim=heads * head_dim, num_heads=heads, ffn_dim=int(data["ffn_dim"]), num_layers=int(data["num_layers"]),
            in_dim=int(data["in_channels"]), out_dim=int(data.get("out_channels") or data["in_channels"]),
            patch_size=tuple(int(p) for p in data.get("patch_size", (1, 2, 2))), text_dim=int(data["text_dim"]),
            freq_dim=int(data["freq_dim"]), eps=float(data.get("eps", 1e-6)),
        )
    except KeyError as err:
        raise CheckpointError(f"{where}: missing diffusers config key {err}") from None
    kw.update(overrides)
    return _make_config(kw, where)


def save_diffusers(model: WanModel, directory: str | os.PathLike) -> Path:
    """Write ``model`` as a diffusers ``WanTransformer3DModel`` folder (``config.json`` + weights)."""
    cfg = model.cfg
    directory = Path(directory)
    config = {
        "_class_name": "WanTransformer3DModel", "patch_size": list(cfg.patch_size), "num_attention_heads": cfg.num_heads,
        "attention_head_dim": cfg.head_dim, "in_channels": cfg.in_dim, "out_channels": cfg.out_dim,
        "text_dim": cfg.text_dim, "freq_dim": cfg.freq_dim, "ffn_dim": cfg.ffn_dim, "num_layers": cfg.num_layers,
        "cross_attn_norm": True, "qk_norm": "rms_norm_across_heads", "eps": cfg.eps, "image_dim": None,
        "added_kv_proj_dim": None, "rope_max_seq_len": 1024,
    }
    save_state_dict(wan_to_diffusers(model.state_dict()), directory / WEIGHTS_NAME, metadata={"format": "pt"})
    _atomic_write(directory / "config.json", lambda tmp: Path(tmp).write_text(json.dumps(config, indent=2)))
    return directory
