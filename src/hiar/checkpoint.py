"""Loading and saving the diffusion transformer's weights.

Reads every layout the Wan2.1 ecosystem writes, and turns it into :class:`~hiar.model.WanModel`'s
own key names (which are the original Wan2.1 names):

* **original Wan**: one ``.safetensors`` file; a directory of shards with a
  ``*.safetensors.index.json``; or a ``.pth``/``.pt`` file (read with ``weights_only=True``);
* **diffusers** ``WanTransformer3DModel``: the same file kinds with diffusers' key names (detected
  from the keys, or from the directory's ``config.json``), converted with the mapping of diffusers'
  ``scripts/convert_wan_to_diffusers.py`` (:func:`diffusers_to_wan`, :func:`wan_to_diffusers`);
* **training checkpoints** of Self-Forcing / HiAR / CausVid: a dict with ``generator`` and/or
  ``generator_ema`` whose keys start with ``model.``; wrapper prefixes of FSDP, activation
  checkpointing, DDP and ``torch.compile`` are stripped. ``which="auto"`` (the default) takes
  ``generator_ema`` when the file has it, else ``generator``: the EMA weights are what the
  released Self-Forcing inference loads (``--use_ema``) and what the papers report;
* **hiar's own format**: safetensors whose metadata holds ``format = "hiar"``, a format version and
  the model config as JSON (:func:`save_model` / :func:`load_model`), written atomically;
* **hiar's sharded training checkpoints** (``parallel.strategy: fsdp``): a step folder of
  torch.distributed.checkpoint files plus :data:`DCP_INDEX`; read in one process, the shards put
  back together (:func:`read_dcp_checkpoint`; ``which`` picks the entry). DCP keeps its ``.metadata``
  as a pickle: it is read with an unpickler that admits only DCP's metadata classes, the tensors with
  ``torch.load(weights_only=True)``.

Loading is strict: missing keys, unexpected keys and shape mismatches raise :class:`CheckpointError`
with the offending keys listed. When no config is given or stored, :func:`infer_config` reads the
sizes off the tensors' shapes.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import pickle
import re
import tempfile
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch

from hiar.config import ConfigError, from_dict, to_dict
from hiar.model import PRESETS, WanConfig, WanModel

FORMAT = "hiar"
FORMAT_VERSION = 1
WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"  # the name both Wan and diffusers use

WAN = "wan"
DIFFUSERS = "diffusers"

# A sharded (DCP) training checkpoint's index: each entry's key prefix and model config.
DCP_INDEX = "models.json"

# Wrapper prefixes that training frameworks put *inside* key names (anywhere in the key).
WRAPPER_PREFIXES = ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.", "_orig_mod.")
# Prefixes that wrap the whole model: stripped only when *every* key has them.
LEADING_PREFIXES = ("module.", "model.diffusion_model.", "model.", "diffusion_model.")


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


# ------------------------------------------------------------------------------------------------
# Key mapping between the original Wan names and diffusers' WanTransformer3DModel

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


# ------------------------------------------------------------------------------------------------
# Prefixes and training checkpoints


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


_WHICH = {"auto": ("generator_ema", "generator"), "ema": ("generator_ema",), "generator_ema": ("generator_ema",),
          "generator": ("generator",)}


def _is_state_dict(obj) -> bool:
    return isinstance(obj, Mapping) and len(obj) > 0 and all(isinstance(v, torch.Tensor) for v in obj.values())


def select_weights(obj, which: str = "auto") -> tuple[dict[str, torch.Tensor], str | None]:
    """The transformer's state dict inside a loaded checkpoint object, and which entry it came from.

    ``which``: ``"auto"`` (``generator_ema`` if present, else ``generator``), ``"ema"`` /
    ``"generator_ema"`` or ``"generator"`` (that entry, or an error). A plain state dict is returned
    as is (``which`` other than ``"auto"`` is then an error, since there is nothing to choose).
    Also unwraps ``{"state_dict": ...}``, ``{"model": ...}`` and ``{"module": ...}``.
    """
    if which not in _WHICH:
        raise CheckpointError(f"which must be one of {sorted(_WHICH)}, got '{which}'")
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"a checkpoint must hold a dict of tensors, got {type(obj).__name__}")
    if _is_state_dict(obj):
        if which != "auto":
            raise CheckpointError(f"which='{which}' asks for a training checkpoint entry, but this file is a plain state dict")
        return dict(obj), None
    for name in _WHICH[which]:
        if name in obj:
            sd = obj[name]
            if not _is_state_dict(sd):
                raise CheckpointError(f"checkpoint entry '{name}' is not a dict of tensors")
            return dict(sd), name
    if which == "auto":
        for name in ("state_dict", "model", "module"):
            if name in obj and _is_state_dict(obj[name]):
                return dict(obj[name]), name
    wanted = " or ".join(f"'{n}'" for n in _WHICH[which])
    raise CheckpointError(f"checkpoint has no {wanted} entry; it holds: {_listing([str(k) for k in obj], 20)}")


# ------------------------------------------------------------------------------------------------
# Reading files


@dataclass
class Checkpoint:
    """What :func:`read_checkpoint` found: the weights (hiar / original Wan key names) and where from."""

    state_dict: dict[str, torch.Tensor]
    layout: str  # the layout on disk: "hiar", "wan" or "diffusers"
    config: WanConfig | None = None  # stored in the file (hiar) or in a config.json next to it
    entry: str | None = None  # the training-checkpoint entry used ("generator_ema", ...)
    metadata: dict[str, str] = field(default_factory=dict)
    files: list[Path] = field(default_factory=list)


def _load_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = dict(f.metadata() or {})
            return {k: f.get_tensor(k) for k in f.keys()}, meta
    except (SafetensorError, OSError) as err:
        raise CheckpointError(f"{path}: not a readable safetensors file: {err}") from None


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


# DCP's metadata pickle: the only globals it may name (what torch 2.x writes for tensors).
_DCP_METADATA_GLOBALS = {
    "torch.distributed.checkpoint.metadata": {"Metadata", "TensorStorageMetadata", "TensorProperties",
                                              "ChunkStorageMetadata", "BytesStorageMetadata", "MetadataIndex",
                                              "StorageMeta", "_MEM_FORMAT_ENCODING"},
    "torch.distributed.checkpoint.filesystem": {"_StorageInfo"},
    "torch.serialization": {"_get_layout"},
    "torch": {"Size"},
    "pathlib": {"PosixPath", "PurePosixPath", "WindowsPath", "PureWindowsPath"},
}


class _DcpMetadataUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        allowed = name in _DCP_METADATA_GLOBALS.get(module, ())
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            allowed = True
        if not allowed:
            raise pickle.UnpicklingError(f"DCP metadata names {module}.{name}, which is not DCP metadata")
        return super().find_class(module, name)


def dcp_reader(directory: str | os.PathLike):
    """A DCP ``FileSystemReader`` of ``directory`` whose ``.metadata`` is unpickled through an allow-list
    of DCP's metadata classes (the stock reader calls ``pickle.load``; DCP itself reads the tensor
    data with ``weights_only=True``)."""
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.metadata import StorageMeta

    class SafeDcpReader(FileSystemReader):
        def read_metadata(self, *args, **kwargs):
            path = self._get_metadata_path(kwargs.get("rank"))
            with self.fs.create_stream(path, "rb") as f:
                try:
                    metadata = _DcpMetadataUnpickler(f).load()
                except pickle.UnpicklingError as err:
                    raise CheckpointError(f"{path}: refused to load: {err}") from None
            if getattr(metadata, "storage_meta", None) is None:
                metadata.storage_meta = StorageMeta()
            metadata.storage_meta.load_id = self.load_id
            return metadata

    return SafeDcpReader(str(directory))


_DCP_WHICH = {"auto": ("generator_ema", "generator", "model_ema", "model"), "ema": ("generator_ema", "model_ema"),
              "generator_ema": ("generator_ema",)}


def read_dcp_checkpoint(directory: str | os.PathLike, *, which: str = "auto") -> Checkpoint:
    """One model of a sharded training checkpoint folder, put together in this process.

    ``which``: ``auto`` (the EMA of the trained model when there is one, else its raw weights), ``ema``,
    or an entry name of its :data:`DCP_INDEX` (``generator``, ``critic``, ``model``, ``model_ema``...).
    """
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp

    directory = Path(directory)
    try:
        entries = json.loads((directory / DCP_INDEX).read_text())["entries"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise CheckpointError(f"{directory / DCP_INDEX}: not a readable sharded-checkpoint index: {err}") from None
    wanted = _DCP_WHICH.get(which, (which,))
    name = next((n for n in wanted if n in entries), None)
    if name is None:
        raise CheckpointError(f"{directory}: no {' or '.join(repr(n) for n in wanted)} entry; it holds: "
                              f"{', '.join(entries)}")
    prefix, config = entries[name]["prefix"], from_dict(WanConfig, entries[name]["config"])
    reader = dcp_reader(directory)
    found = reader.read_metadata().state_dict_metadata
    state = {k: torch.empty(m.size, dtype=m.properties.dtype) for k, m in found.items() if k.startswith(prefix)}
    if not state:
        raise CheckpointError(f"{directory}: the sharded checkpoint holds no tensors under {prefix!r}")
    with warnings.catch_warnings():  # DCP warns that it reads in one process even when told so
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        dcp.load(state, storage_reader=reader, no_dist=not dist.is_initialized())
    weights = {k[len(prefix):]: v for k, v in state.items()}
    files = sorted(directory.glob("*.distcp"))
    return Checkpoint(weights, FORMAT, config, name, {}, [directory / DCP_INDEX, *files])


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
            candidates = [single] if single.is_file() else sorted(directory.glob("*.safetensors"))
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

    if meta.get("format") == FORMAT:
        version = int(meta.get("format_version", "0"))
        if version > FORMAT_VERSION:
            raise CheckpointError(f"{path}: hiar checkpoint format {version} is newer than this library reads ({FORMAT_VERSION})")
        try:
            config = from_dict(WanConfig, json.loads(meta["config"]))
        except (KeyError, json.JSONDecodeError, ConfigError) as err:
            raise CheckpointError(f"{path}: damaged hiar metadata (config): {err}") from None
        return Checkpoint(dict(raw), FORMAT, config, None, meta, files)

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


# ------------------------------------------------------------------------------------------------
# Configs


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


def config_from_wan(data: Mapping, *, where: str = "config", **overrides) -> WanConfig:
    """An original Wan ``config.json`` (``_class_name: WanModel``) -> :class:`WanConfig`."""
    if data.get("model_type", "t2v") != "t2v":
        raise CheckpointError(f"{where}: only text-to-video Wan models are supported, got model_type={data['model_type']!r}")
    names = {f.name for f in dataclasses.fields(WanConfig)}
    kw = {k: (tuple(v) if isinstance(v, list) else v) for k, v in data.items() if k in names}
    kw.update(overrides)
    return _make_config(kw, where)


def _make_config(kw: dict, where: str) -> WanConfig:
    try:
        return WanConfig(**kw)
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{where}: {err}") from None


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


# ------------------------------------------------------------------------------------------------
# Validation and loading


def _listing(items: list[str], limit: int = 10) -> str:
    if len(items) <= limit:
        return ", ".join(items)
    return ", ".join(items[:limit]) + f", ... ({len(items) - limit} more)"


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


# ------------------------------------------------------------------------------------------------
# Writing


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


__all__ = [
    "CheckpointError", "Checkpoint", "FORMAT_VERSION", "wan_to_diffusers", "diffusers_to_wan", "detect_layout",
    "strip_prefixes", "select_weights", "read_checkpoint", "load_state_dict", "config_from_diffusers",
    "config_from_wan", "infer_config", "check_state_dict", "load_weights", "load_model", "save_state_dict",
    "read_dcp_checkpoint", "DCP_INDEX",
    "save_model", "save_diffusers",
]
