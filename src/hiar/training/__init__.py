"""Training (paper Sec. 3.3, Self-Forcing's recipe): teacher, trajectories, ODE init, diffusion
forcing, DMD with a critic and the forward-KL regulariser - one trainer loop, a stage per step function.

* :mod:`~hiar.training.objectives` - losses as functions (flow matching, x0 regression, DMD, critic,
  forward-KL) and the EMA;
* :mod:`~hiar.training.rollout` - the student's self-rollout over the sampling grid;
* :mod:`~hiar.training.trajectories` - teacher ODE solutions at the student's levels, stored as shards;
* :mod:`~hiar.training.trainer` - the loop (checkpoints, exact resume, logs, NaN guard, DDP);
* :mod:`~hiar.training.runfolder` - the run folder's lock, checkpoint marker, leftovers and config check;
* :mod:`~hiar.training.stages` - the five stages; :mod:`~hiar.training.configs` - their configs.
"""

from hiar.training.configs import (
    DiffusionForcingConfig, DmdConfig, OdeInitConfig, TeacherConfig, TrajectoriesConfig, load_stage_config, stage_config,
)
from hiar.training.runfolder import RunFolderError
from hiar.training.trainer import NonFiniteError, Stage, Trainer, run_stage

__all__ = [
    "TeacherConfig", "TrajectoriesConfig", "OdeInitConfig", "DiffusionForcingConfig", "DmdConfig",
    "load_stage_config", "stage_config", "Trainer", "Stage", "NonFiniteError", "RunFolderError", "run_stage",
]
