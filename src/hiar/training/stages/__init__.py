"""The training stages; each is a :class:`~hiar.training.trainer.Stage` (a config + a step function)."""

from __future__ import annotations

import importlib

_STAGES = {
    "teacher": ("hiar.training.stages.teacher", "TeacherStage"),
    "trajectories": ("hiar.training.stages.trajectories", "TrajectoriesStage"),
    "ode_init": ("hiar.training.stages.ode_init", "OdeInitStage"),
    "diffusion_forcing": ("hiar.training.stages.diffusion_forcing", "DiffusionForcingStage"),
    "dmd": ("hiar.training.stages.dmd", "DmdStage"),
}


def stage_class(name: str):
    if name not in _STAGES:
        raise ValueError(f"unknown stage {name!r}; stages: {', '.join(_STAGES)}")
    module, cls = _STAGES[name]
    return getattr(importlib.import_module(module), cls)
