"""One config dataclass per training stage, validated with :mod:`hiar.config`.

Every YAML file names its ``stage``; the common sections are the same for all stages:

* run: ``output_dir``, ``seed``, ``device``, ``dtype``, ``batch_size`` (per process), ``log_every``,
  ``progress``, ``tensorboard``, ``parallel`` (ddp or fsdp under torchrun);
* ``model``: a preset (+ ``overrides``) or a ``checkpoint`` (any format :mod:`hiar.checkpoint` reads);
* ``data``: where clips and prompts come from (the shapes world, a prompt file, or trajectories);
* training stages add ``steps``, ``optimizer``, ``checkpoint_every``, ``keep_checkpoints``, ``ema_*``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from hiar import schedule
from hiar.config import ConfigError, from_dict, load_yaml, yaml_load
from hiar.sampling import Order, Transition
from hiar.training.objectives import SigmaSampler

STAGES = ("teacher", "trajectories", "ode_init", "diffusion_forcing", "dmd")


@dataclass
class ModelSection:
    """Which network: ``preset`` (+ ``overrides`` of :class:`~hiar.model.WanConfig` fields), and/or
    a ``checkpoint`` to load (its stored config is used when no preset is given)."""

    preset: str | None = None
    overrides: dict[str, Any] = field(default_factory=dict)
    checkpoint: str | None = None
    which: str = "auto"  # training-checkpoint entry: auto (EMA when present) | generator | ema
    gradient_checkpointing: bool = False

    def __post_init__(self):
        if self.preset is None and self.checkpoint is None:
            raise ValueError("give a model 'preset' or a 'checkpoint' (or both)")


@dataclass
class DataSection:
    """Where clips and prompts come from.

    * ``shapes``: the procedural shapes world (clips and prompts; item i depends only on (seed, i));
    * ``prompts``: prompts from ``prompts_file`` (one a line), encoded by ``text_encoder`` (a local
      umT5 folder); no clips - enough for trajectories and DMD;
    * ``trajectories``: clips = the clean endpoints of a trajectory folder, with their stored text.
    """

    kind: Literal["shapes", "prompts", "trajectories"] = "shapes"
    num_frames: int = 21  # latent frames per clip
    seed: int = 0
    shapes: dict[str, Any] = field(default_factory=dict)  # ShapesWorldConfig fields (height, width, ...)
    prompts_file: str | None = None
    text_encoder: str | None = None
    latent_shape: tuple[int, int, int] | None = None  # (C, H, W) for kind=prompts, e.g. Wan 480p: [16, 60, 104]
    trajectories: str | None = None
    # Processes that render the shapes world's next batches while the model trains on this one (a GPU
    # run is otherwise held up by the CPU-side rendering); 0: render in the training process.
    workers: int = 0

    def __post_init__(self):
        if self.num_frames < 1:
            raise ValueError(f"num_frames must be >= 1, got {self.num_frames}")
        if self.workers < 0:
            raise ValueError(f"data.workers must be >= 0, got {self.workers}")
        if self.workers and self.kind != "shapes":
            raise ValueError(f"data.workers renders the shapes world ahead; data.kind={self.kind} has nothing to render")
        if self.kind == "prompts" and (self.prompts_file is None or self.text_encoder is None or self.latent_shape is None):
            raise ValueError("data.kind=prompts needs prompts_file, text_encoder and latent_shape")
        if self.kind == "trajectories" and self.trajectories is None:
            raise ValueError("data.kind=trajectories needs data.trajectories (a trajectory folder)")


@dataclass
class OptimizerSection:
    """AdamW with linear warm-up and gradient-norm clipping (``grad_clip: 0`` = off)."""

    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.01
    eps: float = 1e-8
    grad_clip: float = 1.0
    warmup_steps: int = 0
    # The parameters to train, by module path (``head`` is ``head.*``); the others stay frozen.
    # Empty: all of them.
    params: tuple[str, ...] = ()

    def __post_init__(self):
        if self.lr <= 0 or self.grad_clip < 0 or self.warmup_steps < 0:
            raise ValueError("lr must be > 0, grad_clip >= 0, warmup_steps >= 0")
        self.params = tuple(str(p) for p in self.params)


@dataclass
class StudentSection:
    """The causal student's schedule: raw ``timesteps`` warped by ``shift`` give the levels."""

    timesteps: tuple[float, ...] = schedule.DEFAULT_STUDENT_TIMESTEPS
    shift: float = schedule.DEFAULT_SHIFT
    block_frames: int = 3
    transition: Transition = Transition.RENOISE

    def __post_init__(self):
        self.timesteps = tuple(float(t) for t in self.timesteps)
        schedule.student_levels(self.timesteps, self.shift)  # raises a ValueError naming the problem
        if self.block_frames < 1:
            raise ValueError(f"block_frames must be >= 1, got {self.block_frames}")

    @property
    def levels(self) -> torch.Tensor:
        """[sigma_1, ..., sigma_S, 0] (float64)."""
        return schedule.student_levels(self.timesteps, self.shift)


@dataclass
class ParallelSection:
    """How the processes of a ``torchrun`` launch share the work (one process: plain training).

    * ``ddp``: every process holds whole models; gradients are averaged by an all-reduce after each
      backward (data parallelism; see :mod:`hiar.training.trainer`);
    * ``fsdp``: FSDP2 (``torch.distributed.fsdp.fully_shard``, per transformer block then the root):
      the trained models, their EMAs and optimiser states are split over the processes, each layer's
      weights gathered only while it runs; checkpoints are sharded (torch.distributed.checkpoint).
      Needs ``torchrun``.

    The ``fsdp`` settings: ``param_dtype``, the weights' dtype during forward and backward (the
    float32 master weights and the optimiser state stay float32); ``reduce_dtype``, the dtype gradients
    are averaged in; ``shard_frozen``, whether the frozen teacher is sharded too (False: every process
    holds a whole float32 copy - faster when it fits).
    """

    strategy: Literal["ddp", "fsdp"] = "ddp"
    param_dtype: Literal["bfloat16", "float32"] = "bfloat16"
    reduce_dtype: Literal["float32", "bfloat16"] = "float32"
    shard_frozen: bool = True


def training_noise() -> SigmaSampler:
    """Flow-matching training levels: t ~ U[0, 1], shift 3 (the sampler validates any YAML section)."""
    return SigmaSampler(shift=3.0)


@dataclass
class RunConfig:
    stage: str = ""
    output_dir: str = "runs/unnamed"
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    dtype: Literal["float32", "bfloat16"] = "float32"  # bfloat16: autocast, float32 master weights
    batch_size: int = 1  # per process; the global batch is batch_size x processes
    log_every: int = 10
    progress: bool = True
    tensorboard: bool = True
    model: ModelSection = field(default_factory=lambda: ModelSection(preset="toy"))
    data: DataSection = field(default_factory=DataSection)
    parallel: ParallelSection = field(default_factory=ParallelSection)

    def __post_init__(self):
        if self.stage not in STAGES:
            raise ValueError(f"stage must be one of {list(STAGES)}, got {self.stage!r}")
        if self.batch_size < 1 or self.log_every < 1:
            raise ValueError("batch_size and log_every must be >= 1")


@dataclass
class TrainConfig(RunConfig):
    steps: int = 1000
    optimizer: OptimizerSection = field(default_factory=OptimizerSection)
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    ema_decay: float | None = None  # None: no EMA
    ema_start: int = 0
    # Wall-clock budget of this run (seconds of training steps): when spent, the trainer checkpoints,
    # exports the model as it stands and stops before ``steps``; running again continues. None: no limit.
    max_seconds: float | None = None

    def __post_init__(self):
        super().__post_init__()
        if self.steps < 1 or self.checkpoint_every < 1 or self.keep_checkpoints < 1:
            raise ValueError("steps, checkpoint_every and keep_checkpoints must be >= 1")
        if self.max_seconds is not None and self.max_seconds < 0:
            raise ValueError(f"max_seconds must be >= 0 (or null for no limit), got {self.max_seconds}")
        if self.ema_decay is not None and not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay}")


@dataclass
class TeacherConfig(TrainConfig):
    """Bidirectional flow matching on the world's clips, with prompt dropout (for CFG)."""

    stage: str = "teacher"
    prompt_dropout: float = 0.1
    noise: SigmaSampler = field(default_factory=training_noise)

    def __post_init__(self):
        super().__post_init__()
        if not 0.0 <= self.prompt_dropout <= 1.0:
            raise ValueError(f"prompt_dropout must be in [0, 1], got {self.prompt_dropout}")


@dataclass
class TrajectoriesConfig(RunConfig):
    """The teacher's ODE (``ode_steps`` Euler steps, CFG) saved exactly at the student's levels."""

    stage: str = "trajectories"
    num_samples: int = 256
    samples_per_shard: int = 32
    ode_steps: int = 50
    ode_shift: float = schedule.DEFAULT_SHIFT
    guidance_scale: float = 3.0  # uncond + scale (cond - uncond)
    negative_prompt: str | None = None  # the uncond branch's prompt; None: the null prompt (zeros)
    student: StudentSection = field(default_factory=StudentSection)
    store_dtype: Literal["float32", "float16", "bfloat16"] = "float32"

    def __post_init__(self):
        super().__post_init__()
        if self.num_samples < 1 or self.samples_per_shard < 1 or self.ode_steps < 1:
            raise ValueError("num_samples, samples_per_shard and ode_steps must be >= 1")
        if self.parallel.strategy == "fsdp":  # a sharded teacher would need every process in every call
            raise ValueError("parallel.strategy: fsdp is for stages that train; in the trajectories stage each process "
                             "runs its own shards with a whole teacher: use parallel.strategy: ddp")


@dataclass
class OdeInitConfig(TrainConfig):
    """The causal student regresses trajectory endpoints (per-block levels, block-causal)."""

    stage: str = "ode_init"
    trajectories: str = ""
    student: StudentSection = field(default_factory=StudentSection)
    # The probability that a block is given as its clean endpoint: context for the blocks after it, no
    # loss. 0 (the released CausVid / Self-Forcing recipe): every block is at one of the student's noisy
    # levels, so the model never reads the clean context that HiAR's exit step (t_c = t_{j+1} = 0) and
    # Self-Forcing's every step read at inference (docs/training.md, "The context the ODE init never shows").
    clean_context: float = 0.0
    # Which blocks are clean. "blocks": each block on its own, with probability clean_context. "prefix": with
    # probability clean_context a sample's first k blocks (k uniform in 1 .. blocks - 1), the context every
    # block reads at Self-Forcing's steps and HiAR's exit step, where all earlier blocks are clean at once.
    clean_context_layout: str = "blocks"
    # What a clean block holds. "trajectory": its clean endpoint, the teacher's. "model": the model's own x0
    # estimate of it (no gradient) from its state at the student's last noisy level, every earlier block at
    # that level too: the clean context the sampler's last step hands on, with the model's own errors in
    # it, which a later block is then trained to continue without copying them.
    clean_context_source: str = "trajectory"
    # The most noise a clean block is given while the model is still told it is clean (sigma 0): each
    # sample's clean blocks are renoised to a level drawn uniformly in [0, clean_context_noise]. 0: none.
    # Why: sampled as HiAR, a block's last step reads its own earlier outputs clean, and a model that only
    # ever read perfect clean context copies their errors forward, block after block (the speckle,
    # docs/training.md); perturbed context it must not copy teaches it to look through them.
    clean_context_noise: float = 0.0

    def __post_init__(self):
        super().__post_init__()
        if not self.trajectories:
            raise ValueError("ode_init needs 'trajectories' (the folder the trajectories stage wrote)")
        if not 0.0 <= self.clean_context < 1.0:
            raise ValueError(f"clean_context must be in [0, 1), got {self.clean_context}")
        if self.clean_context_layout not in ("blocks", "prefix"):
            raise ValueError(f"clean_context_layout must be 'blocks' or 'prefix', got {self.clean_context_layout!r}")
        if self.clean_context_source not in ("trajectory", "model"):
            raise ValueError(f"clean_context_source must be 'trajectory' or 'model', got {self.clean_context_source!r}")
        if not 0.0 <= self.clean_context_noise < 1.0:
            raise ValueError(f"clean_context_noise must be in [0, 1), got {self.clean_context_noise}")


@dataclass
class DiffusionForcingConfig(TrainConfig):
    """Causal Forcing's mid-training: per-block independent levels under the block-causal mask."""

    stage: str = "diffusion_forcing"
    student: StudentSection = field(default_factory=StudentSection)
    noise: SigmaSampler = field(default_factory=training_noise)
    prompt_dropout: float = 0.0


@dataclass
class FklSection:
    """The forward-KL regulariser (Eq. 10) on teacher trajectories; off when ``weight`` is 0."""

    weight: float = 0.0  # lambda (HiAR: 0.1)
    num_levels: int = 1  # K: the first K student steps
    attention: Literal["bidirectional", "causal"] = "bidirectional"
    trajectories: str | None = None
    batch_size: int | None = None  # per process; default: the run's batch_size

    def __post_init__(self):
        if self.weight < 0 or self.num_levels < 1:
            raise ValueError("fkl.weight must be >= 0 and fkl.num_levels >= 1")
        if self.weight > 0 and not self.trajectories:
            raise ValueError("fkl.weight > 0 needs fkl.trajectories (a trajectory folder)")


@dataclass
class DmdConfig(TrainConfig):
    """Self-rollout DMD: Self-Forcing (clean context), HiAR (output-level context), CausVid
    (teacher-forced clean context) or the input-level ablation (t_c = t_j); critic = fake score;
    EMA; optional forward-KL."""

    stage: str = "dmd"
    method: Literal["self_forcing", "hiar", "causvid", "hiar_input_context"] = "hiar"
    order: Order | None = None  # default: block_first for clean context, diagonal for hiar
    student: StudentSection = field(default_factory=StudentSection)
    teacher: ModelSection = field(default_factory=lambda: ModelSection(preset="toy"))
    critic: ModelSection | None = None  # default: a copy of the teacher
    critic_optimizer: OptimizerSection = field(default_factory=OptimizerSection)
    critic_updates_per_generator: int = 5
    # Every rollout exits at the student's last step (the released code's last_step_only); default: an
    # exit step drawn uniformly from 1..S per iteration, so that every step is trained.
    last_step_only: bool = False
    real_guidance: float = 3.0  # Self-Forcing's convention: real = cond + g (cond - uncond)
    negative_prompt: str | None = None  # the uncond branch's prompt; None: the null prompt (zeros)
    score_noise: SigmaSampler = field(default_factory=lambda: SigmaSampler(shift=5.0, min_t=0.02, max_t=0.98))
    fkl: FklSection = field(default_factory=FklSection)

    def __post_init__(self):
        super().__post_init__()
        if self.critic_updates_per_generator < 1:
            raise ValueError("critic_updates_per_generator must be >= 1")
        if self.data.num_frames % self.student.block_frames:
            raise ValueError(f"data.num_frames ({self.data.num_frames}) must be a multiple of "
                             f"student.block_frames ({self.student.block_frames})")
        if self.method == "causvid" and self.data.kind == "prompts":
            raise ValueError("method=causvid needs clean clips for its teacher-forced context: data.kind shapes or trajectories")


CONFIG_CLASSES: dict[str, type[RunConfig]] = {
    "teacher": TeacherConfig,
    "trajectories": TrajectoriesConfig,
    "ode_init": OdeInitConfig,
    "diffusion_forcing": DiffusionForcingConfig,
    "dmd": DmdConfig,
}


def config_class(stage: str) -> type[RunConfig]:
    if stage not in CONFIG_CLASSES:
        raise ConfigError(f"stage: {stage!r} is not one of {list(CONFIG_CLASSES)}")
    return CONFIG_CLASSES[stage]


def load_stage_config(path, overrides: dict[str, Any] | None = None) -> RunConfig:
    """Read a stage YAML (its ``stage`` key picks the dataclass) with dotted ``overrides``."""
    import yaml
    from pathlib import Path

    p = Path(path)
    if not p.exists():
        raise ConfigError(f"config file not found: {p}")
    try:
        raw = yaml_load(p.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{p}: not valid YAML: {err}") from None
    stage = (overrides or {}).get("stage", raw.get("stage") if isinstance(raw, dict) else None)
    if stage is None:
        raise ConfigError(f"{p}: missing config key 'stage' (one of {', '.join(CONFIG_CLASSES)})")
    try:
        cls = config_class(stage)
    except ConfigError as err:
        raise ConfigError(f"{p}: {err}") from None
    return load_yaml(cls, p, overrides)


def stage_config(stage: str, data: dict[str, Any]) -> RunConfig:
    """Build a stage config from a dict (tests, benchmarks)."""
    return from_dict(config_class(stage), {"stage": stage, **data})
