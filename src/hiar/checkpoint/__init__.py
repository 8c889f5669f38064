"""Loading and saving the diffusion transformer's weights.

Reads every layout the Wan2.1 ecosystem writes, and turns it into :class:`~hiar.model.WanModel`'s own
key names (which are the original Wan2.1 names); one module per format:

=====================================================================  =================================
format                                                                 module
=====================================================================  =================================
original Wan: ``.safetensors``, shards + ``*.safetensors.index.json``  :mod:`~hiar.checkpoint.wan`
diffusers ``WanTransformer3DModel`` (the same files, diffusers' keys)  :mod:`~hiar.checkpoint.diffusers`
Self-Forcing / HiAR / CausVid training ``.pt`` (and any ``.pth``)      :mod:`~hiar.checkpoint.training`
hiar's own safetensors (``format = "hiar"``, config in the metadata)   :mod:`~hiar.checkpoint.native`
hiar's sharded (FSDP) step folders: torch DCP + ``models.json``        :mod:`~hiar.checkpoint.dcp`
=====================================================================  =================================

Shared by all: :mod:`~hiar.checkpoint.keys` (the Wan <-> diffusers key mapping,
:func:`diffusers_to_wan` / :func:`wan_to_diffusers`, and the stripping of FSDP / activation
checkpointing / DDP / ``torch.compile`` prefixes), :mod:`~hiar.checkpoint.base` (:class:`CheckpointError`,
:class:`Checkpoint`) and :mod:`~hiar.checkpoint.load` (:func:`read_checkpoint` picks the format from
what the path is; :func:`load_model`). For training checkpoints ``which="auto"`` (the default) takes
``generator_ema`` when the file has it, else ``generator``: the EMA weights are what the released
Self-Forcing inference loads (``--use_ema``) and what the papers report. Pickles are never trusted:
``.pt`` files are read with ``torch.load(weights_only=True)``, DCP's ``.metadata`` with an unpickler
that admits only DCP's metadata classes.

Loading is strict: missing keys, unexpected keys and shape mismatches raise :class:`CheckpointError`
with the offending keys listed. When no config is given or stored, :func:`infer_config` reads the
sizes off the tensors' shapes. Everything here is re-exported: ``from hiar.checkpoint import X``.
"""

from hiar.checkpoint.base import Checkpoint, CheckpointError
from hiar.checkpoint.dcp import DCP_INDEX, dcp_reader, read_dcp_checkpoint
from hiar.checkpoint.diffusers import config_from_diffusers, save_diffusers
from hiar.checkpoint.keys import (
    DIFFUSERS, LEADING_PREFIXES, WAN, WRAPPER_PREFIXES, detect_layout, diffusers_to_wan, strip_prefixes,
    wan_to_diffusers,
)
from hiar.checkpoint.load import (
    check_state_dict, infer_config, key_problems, load_model, load_state_dict, load_weights, read_checkpoint,
)
from hiar.checkpoint.native import FORMAT, FORMAT_VERSION, _atomic_write, save_model, save_state_dict
from hiar.checkpoint.training import select_weights
from hiar.checkpoint.wan import WEIGHTS_NAME, config_from_wan

__all__ = [
    "CheckpointError", "Checkpoint", "FORMAT_VERSION", "wan_to_diffusers", "diffusers_to_wan", "detect_layout",
    "strip_prefixes", "select_weights", "read_checkpoint", "load_state_dict", "config_from_diffusers",
    "config_from_wan", "infer_config", "check_state_dict", "load_weights", "load_model", "save_state_dict",
    "read_dcp_checkpoint", "DCP_INDEX",
    "save_model", "save_diffusers",
]
