"""hiar's sharded training checkpoints (``parallel.strategy: fsdp``): a step folder of
torch.distributed.checkpoint (DCP) files (``.metadata``, ``*.distcp``) plus :data:`DCP_INDEX`
(``{"format": "hiar-dcp", "entries": {name: {"prefix": ..., "config": ...}}}``: each model's key
prefix and :class:`~hiar.model.WanConfig`), read in one process with the shards put back together.
DCP keeps its ``.metadata`` as a pickle: it is read with an unpickler that admits only DCP's metadata
classes, the tensors with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import json
import os
import pickle
import warnings
from pathlib import Path

import torch

from hiar.checkpoint.base import Checkpoint, CheckpointError
from hiar.checkpoint.native import FORMAT
from hiar.config import from_dict
from hiar.model import WanConfig

# A sharded (DCP) training checkpoint's index: each entry's key prefix and model config.
DCP_INDEX = "models.json"


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
