"""Key names: original Wan2.1 <-> diffusers ``WanTransformer3DModel``, and training wrappers' prefixes.

hiar's :class:`~hiar.model.WanModel` keeps the original Wan2.1 names (``blocks.<i>.self_attn.q``,
``head.head``, ``text_embedding.0`` ...); diffusers renames them (``blocks.<i>.attn1.to_q``,
``proj_out``, ``condition_embedder.text_embedder.linear_1`` ...) as its
``scripts/convert_wan_to_diffusers.py`` does. FSDP, activation checkpointing and ``torch.compile`` put
prefixes inside the keys; DDP (``module.``) and Self-Forcing's wrapper (``model.``) in front of all of them.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

import torch

from hiar.checkpoint.base import CheckpointError, _listing

WAN = "wan"
DIFFUSERS = "diffusers"

# Wrapper prefixes that training frameworks put *inside* key names (anywhere in the key).
WRAPPER_PREFIXES = ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.", "_orig_mod.")
# Prefixes that wrap the whole model: stripped only when *every* key has them.
LEADING_PREFIXES = ("module.", "model.diffusion_model.", "model.", "diffusion_model.")


# Whole-model prefixes (original -> diffusers); matched on a "." boundary.
_TOP_LEVEL = {
    "time_embedding.0": "condition_embedder.time_embedder.linear_1",
    "time_embedding.2": "condition_embedder.time_embedder.linear_2",
    "text_embedding.0": "condition_embedder.text_embedder.linear_1",
    "text_embedding.2": "condition_embedder.text_embedder.linear_2",
    "time_projection.1": "condition_embedder.time_proj",
    "head.modulation": "scale_shift_table",
    "head.head": "proj_out",
    # image-to-video / first-last-frame variants (not built by hiar, mapped for completeness)
    "img_emb.proj.0": "condition_embedder.image_embedder.norm1",
    "img_emb.proj.1": "condition_embedder.image_embedder.ff.net.0.proj",
    "img_emb.proj.3": "condition_embedder.image_embedder.ff.net.2",
    "img_emb.proj.4": "condition_embedder.image_embedder.norm2",
    "img_emb.emb_pos": "condition_embedder.image_embedder.pos_embed",
}

# Inside ``blocks.<i>.`` (original -> diffusers). Wan applies norm1, norm3 (affine, before the
# cross-attention), norm2 (before the FFN); diffusers calls them norm1, norm2, norm3 in that order.
_IN_BLOCK = {
    "modulation": "scale_shift_table",
    "self_attn.q": "attn1.to_q",
    "self_attn.k": "attn1.to_k",
    "self_attn.v": "attn1.to_v",
    "self_attn.o": "attn1.to_out.0",
    "self_attn.norm_q": "attn1.norm_q",
    "self_attn.norm_k": "attn1.norm_k",
    "cross_attn.q": "attn2.to_q",
    "cross_attn.k": "attn2.to_k",
    "cross_attn.v": "attn2.to_v",
    "cross_attn.o": "attn2.to_out.0",
    "cross_attn.norm_q": "attn2.norm_q",
    "cross_attn.norm_k": "attn2.norm_k",
    "cross_attn.k_img": "attn2.add_k_proj",
    "cross_attn.v_img": "attn2.add_v_proj",
    "cross_attn.norm_k_img": "attn2.norm_added_k",
    "norm1": "norm1",
    "norm3": "norm2",
    "norm2": "norm3",
    "ffn.0": "ffn.net.0.proj",
    "ffn.2": "ffn.net.2",
}

_BLOCK_RE = re.compile(r"^(blocks\.\d+)\.(.+)$")


def _rename(key: str, table: Mapping[str, str]) -> str:
    """Replace the longest prefix of ``key`` (on a '.' boundary) found in ``table``."""
    best = None
    for src in table:
        if (key == src or key.startswith(src + ".")) and (best is None or len(src) > len(best)):
            best = src
    return key if best is None else table[best] + key[len(best):]


def _convert(state_dict: Mapping[str, torch.Tensor], top: Mapping[str, str], block: Mapping[str, str]) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        m = _BLOCK_RE.match(key)
        new = f"{m.group(1)}.{_rename(m.group(2), block)}" if m else _rename(key, top)
        if new in out:
            raise CheckpointError(f"two checkpoint keys map to '{new}' (the second is '{key}')")
        out[new] = value
    return out


def wan_to_diffusers(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Original Wan2.1 key names -> diffusers ``WanTransformer3DModel`` names (tensors shared)."""
    return _convert(state_dict, _TOP_LEVEL, _IN_BLOCK)


def diffusers_to_wan(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """diffusers ``WanTransformer3DModel`` key names -> original Wan2.1 names (tensors shared)."""
    return _convert(state_dict, {v: k for k, v in _TOP_LEVEL.items()}, {v: k for k, v in _IN_BLOCK.items()})


_DIFFUSERS_MARKERS = ("condition_embedder.", "scale_shift_table", "proj_out.", ".attn1.", ".attn2.", ".ffn.net.")
_WAN_MARKERS = ("text_embedding.", "time_embedding.", "time_projection.", "head.head.", ".self_attn.", ".cross_attn.", ".modulation")


def detect_layout(keys: Iterable[str]) -> str:
    """``"wan"`` or ``"diffusers"`` from the key names (after prefix stripping)."""
    keys = list(keys)
    diff = sum(any(m in "." + k for m in _DIFFUSERS_MARKERS) for k in keys)
    wan = sum(any(m in "." + k for m in _WAN_MARKERS) for k in keys)
    if diff == wan == 0:
        raise CheckpointError(
            f"cannot tell the checkpoint's layout (neither Wan nor diffusers key names); first keys: {_listing(keys, 5)}"
        )
    if diff and wan:
        raise CheckpointError(f"the checkpoint mixes Wan key names ({wan}) and diffusers key names ({diff})")
    return DIFFUSERS if diff else WAN


def strip_prefixes(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Remove FSDP / activation-checkpointing / ``torch.compile`` wrapper prefixes anywhere in the
    keys, then whole-model prefixes (``module.``, ``model.``, ``model.diffusion_model.``) shared by
    every key (Self-Forcing's ``WanDiffusionWrapper`` keeps the DiT under ``model.``)."""
    out = {}
    for key, value in state_dict.items():
        for p in WRAPPER_PREFIXES:
            key = key.replace(p, "")
        if key in out:
            raise CheckpointError(f"two checkpoint keys become '{key}' once wrapper prefixes are removed")
        out[key] = value
    changed = True
    while changed and out:
        changed = False
        for p in LEADING_PREFIXES:
            if all(k.startswith(p) for k in out):
                out = {k[len(p):]: v for k, v in out.items()}
                changed = True
                break
    return out
