"""FSDP2 for the trainer (``parallel.strategy: fsdp``): sharding a :class:`~hiar.model.WanModel`,
gathering a whole copy for export, and sharded checkpoints (torch.distributed.checkpoint, DCP).

A model is sharded per transformer block, then the root (embeddings, time projection, head): a block's
weights are all-gathered right before it runs and freed after, its gradients reduce-scattered (and so
averaged over the processes) in backward. Two methods besides ``forward`` touch weights and are
registered with FSDP so that they gather them too: ``WanModel.encode_text`` (the sampler's reusable
prompt context) and ``WanBlock.project_text`` (a layer's cross-attention keys/values).

Mixed precision is FSDP's :class:`MixedPrecisionPolicy`: the gathered weights are cast to
``param_dtype`` for forward and backward while the sharded float32 master weights, their gradients
and AdamW's state stay float32; gradients are averaged in ``reduce_dtype``.

A checkpoint folder holds DCP's files (``.metadata``, one ``__<rank>_0.distcp`` per process) with the
models, EMAs and optimiser states under ``models.<name>``, ``emas.<name>`` and ``optimizers.<name>``,
plus :data:`~hiar.checkpoint.DCP_INDEX` (each model's config, for reading the folder without a
trainer, see :func:`hiar.checkpoint.read_checkpoint`).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard, register_fsdp_forward_method

from hiar.config import to_dict

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def mixed_precision(parallel) -> MixedPrecisionPolicy:
    """The policy of a :class:`~hiar.training.configs.ParallelSection`."""
    return MixedPrecisionPolicy(param_dtype=DTYPES[parallel.param_dtype], reduce_dtype=DTYPES[parallel.reduce_dtype])


def shard(model: torch.nn.Module, policy: MixedPrecisionPolicy) -> torch.nn.Module:
    """Shard ``model`` in place over the default process group: each block, then the root."""
    # The model's output (unpatchified) and project_text's keys/values (heads unflattened) are views;
    # FSDP warns that an in-place op on such a view would skip its backward hook. No caller modifies
    # them in place.
    warnings.filterwarnings("ignore", message=r"FSDP2-wrapped module \(FSDPWan(Model|Block)\) returned a view tensor")
    for block in model.blocks:
        fully_shard(block, mp_policy=policy)
        register_fsdp_forward_method(block, "project_text")
    fully_shard(model, mp_policy=policy)
    register_fsdp_forward_method(model, "encode_text")
    return model


def is_sharded(model: torch.nn.Module) -> bool:
    return isinstance(model, FSDPModule)


def full_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The whole (unsharded) state dict on the CPU of rank 0 ({} elsewhere); every process must call it."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def as_float(value) -> float:
    """A Python float of a (possibly DTensor) scalar, e.g. a gradient norm of sharded gradients."""
    from torch.distributed.tensor import DTensor

    return float(value.full_tensor() if isinstance(value, DTensor) else value)


def _sharded_state(models, optimizers, emas) -> dict:
    """The nested state dict DCP saves and loads in place (the tensors are the shards themselves)."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_state_dict

    state = {"models": {}, "optimizers": {}, "emas": {}}
    for name, model in models.items():
        state["models"][name], state["optimizers"][name] = get_state_dict(model, optimizers[name])
    for name, ema in emas.items():
        state["emas"][name] = get_model_state_dict(ema.model)
    return state


def save_checkpoint(folder: Path, models, optimizers, emas) -> None:
    """Every process writes its shards of models, EMAs and optimiser states into ``folder``."""
    import torch.distributed.checkpoint as dcp

    dcp.save(_sharded_state(models, optimizers, emas), checkpoint_id=str(folder))


def load_checkpoint(folder: Path, models, optimizers, emas) -> None:
    """Every process reads its shards from ``folder`` (written by :func:`save_checkpoint`)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_state_dict

    from hiar.checkpoint import DCP_INDEX, dcp_reader

    if not (folder / DCP_INDEX).is_file():
        raise ValueError(f"no {DCP_INDEX}: not a sharded (parallel.strategy: fsdp) checkpoint")
    state = _sharded_state(models, optimizers, emas)
    dcp.load(state, storage_reader=dcp_reader(folder))
    for name, model in models.items():
        set_state_dict(model, optimizers[name], model_state_dict=state["models"][name],
                       optim_state_dict=state["optimizers"][name])
    for name, ema in emas.items():
        set_model_state_dict(ema.model, state["emas"][name])


def write_index(folder: Path, models, emas) -> None:
    """:data:`~hiar.checkpoint.DCP_INDEX`: each saved model's key prefix and :class:`WanConfig`."""
    from hiar.checkpoint import DCP_INDEX, _atomic_write

    entries = {name: {"prefix": f"models.{name}.", "config": to_dict(m.cfg)} for name, m in models.items()}
    entries.update({f"{name}_ema": {"prefix": f"emas.{name}.", "config": to_dict(e.model.cfg)}
                    for name, e in emas.items()})
    text = json.dumps({"format": "hiar-dcp", "entries": entries}, indent=1)
    _atomic_write(folder / DCP_INDEX, lambda t: Path(t).write_text(text))
