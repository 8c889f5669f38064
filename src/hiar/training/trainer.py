"""The one training loop every stage shares: a stage is a config plus a step function.

What the loop gives every stage:

* **checkpoints** under ``<output_dir>/checkpoints/step-NNNNNNN/`` - each trainable model and its
  EMA as hiar safetensors (loadable by :func:`hiar.checkpoint.load_model`), and ``state.pt``
  (step, optimiser, LR-schedule and RNG states; read back with ``torch.load(weights_only=True)``).
  A checkpoint is built in a temporary folder, ``complete.json`` (its files and sizes) is written
  last, the folder is renamed into place, then the ``latest`` pointer file is replaced atomically: a
  crash never leaves a half-written checkpoint behind ``latest``.
* **a guarded run folder** (:mod:`hiar.training.runfolder`): a lock (``run.lock``) so that one trainer
  uses a folder at a time; leftovers of failed writes removed at start; a resume falls back to the
  newest usable checkpoint when ``latest`` names a missing or damaged one (and refuses when none is
  usable, never restarting silently); a resume compares the config with the saved ``config.yaml`` and
  refuses changes unless told to accept them; ``resume=False`` refuses a folder that holds
  checkpoints unless ``overwrite`` clears them.
* **exact resume**: models, EMAs, optimisers, schedules, step and RNG states come back; the data
  position is the step itself (every random draw and every sample is keyed by the global step and
  sample index, :mod:`hiar.training.keys`).
* **logs**: a tqdm bar with the losses, ``log.jsonl`` (one JSON object per logged step) and
  TensorBoard scalars under ``tb/`` (when ``tensorboard`` is installed).
* **a NaN/inf guard**: each optimised loss and its (averaged) gradients are checked before the
  optimiser steps; on a non-finite value the run stops with :class:`NonFiniteError` naming the
  stage, step, loss and value, and writes nothing (the last good checkpoint stays ``latest``).
* **data parallelism**: under ``torchrun`` (``RANK``/``WORLD_SIZE``) with gloo on CPU and NCCL on
  GPU. Gradients are averaged over ranks by an explicit all-reduce after each backward (what DDP's
  reducer does; explicit, because a self-rollout mixes no-grad and grad calls of one module with
  shared KV caches, which DDP's hooks do not expect). Each rank takes its slice of the global batch
  by global sample index, so 2 ranks x b samples == 1 rank x 2b samples.
* **sharded data parallelism** (``parallel.strategy: fsdp``, under ``torchrun`` only): each trained
  model and its EMA are sharded with FSDP2 (:mod:`hiar.training.fsdp`), the frozen teacher too unless
  ``parallel.shard_frozen: false``; FSDP's reduce-scatter averages the gradients; checkpoints are
  sharded (torch.distributed.checkpoint: ``.metadata``, ``__<rank>_0.distcp``, ``models.json``,
  with ``state.pt`` holding the step, LR schedules and RNG states) inside the same step folders,
  markers and ``latest`` pointer; ``export`` gathers whole weights on rank 0 into the same
  safetensors files as ever.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist

from hiar.config import to_dict
from hiar.model import WanModel, get_config
from hiar.training import fsdp, keys, runfolder
from hiar.training.configs import ModelSection, OptimizerSection, RunConfig, TrainConfig
from hiar.training.data import rank_indices
from hiar.training.objectives import EMA

CHECKPOINTS = runfolder.CHECKPOINTS
LATEST = runfolder.LATEST
STATE = "state.pt"
# Config sections that build a network: a resume cannot change them (the checkpoints would not fit).
MODEL_SECTIONS = ("model", "teacher", "critic")
LOG = runfolder.LOG


def code_commit() -> str:
    """The git commit of the code being run (``+dirty`` when the work tree differs), or "unknown";
    ``HIAR_CODE_COMMIT`` names it where the code runs from a copy without its git folder."""
    import subprocess

    if os.environ.get("HIAR_CODE_COMMIT"):
        return os.environ["HIAR_CODE_COMMIT"]

    src = Path(__file__).resolve().parent
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=src, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=src,
                               capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    if head.returncode:
        return "unknown"
    return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


class NonFiniteError(RuntimeError):
    """A loss or gradient became NaN/inf; the message names the stage, step, loss and value."""


class Stage:
    """A training stage: builds its models in :meth:`setup`, runs one step in :meth:`step` (returning
    float losses - the same keys on every rank), and writes its outputs in :meth:`export`."""

    name = "stage"
    stateless = False  # True: nothing to checkpoint (the stage resumes from its own outputs)

    def __init__(self, cfg: RunConfig, trainer: "Trainer"):
        self.cfg, self.trainer = cfg, trainer

    @property
    def total_steps(self) -> int:
        return self.cfg.steps

    def setup(self) -> None:
        raise NotImplementedError

    def step(self, step: int) -> dict[str, float]:
        raise NotImplementedError

    def export(self) -> None:
        pass

    def output_exists(self, step: int) -> bool:
        """Stateless stages: this step's output is on disk already, so a resumed run skips it (the
        progress bar counts it as done before the run, not as a step taken now)."""
        return False


def select_params(model: torch.nn.Module, paths: tuple[str, ...], purpose: str) -> None:
    """Leave gradients on only for the parameters under the module ``paths`` (``head``: ``head.*``)."""
    def under(name: str, path: str) -> bool:
        return name == path or name.startswith(path + ".")

    names = [n for n, _ in model.named_parameters()]
    for path in paths:
        if not any(under(n, path) for n in names):
            tops = sorted({n.split(".")[0] for n in names})
            raise ValueError(f"{purpose}: optimizer.params names {path!r}, which is no parameter or module of the "
                             f"model (its top-level ones: {', '.join(tops)})")
    for n, p in model.named_parameters():
        p.requires_grad_(any(under(n, path) for path in paths))


def resolve_device(name: str) -> torch.device:
    """The config's ``device``: ``auto`` (CUDA when there is one), ``cpu``, ``cuda`` or ``cuda:N``; a
    device this machine does not have is a :class:`ConfigError` naming the key."""
    from hiar.config import ConfigError
    from hiar.generate import check_device

    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        return torch.device("cpu")
    try:
        dev = check_device(name, flag="device")
    except ValueError as err:
        raise ConfigError(str(err)) from None
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return dev


class Trainer:
    """Runs a :class:`Stage` to completion (resuming when ``resume``); see the module docstring."""

    def __init__(self, cfg: RunConfig, stage_cls: type[Stage], *, resume: bool = True,
                 accept_config_changes: bool = False, overwrite: bool = False):
        self.cfg = cfg
        self.resume_enabled = resume and not overwrite
        self.accept_config_changes = accept_config_changes
        self.overwrite = overwrite
        self._lock = runfolder.RunLock(Path(cfg.output_dir))
        self._config_changes: list[tuple[str, str, str]] = []  # accepted on this resume (main rank)
        self.out = Path(cfg.output_dir)
        self.commit = code_commit()  # recorded in every model file this run writes
        self._owns_group = False
        self.sharded = cfg.parallel.strategy == "fsdp"
        launched = "WORLD_SIZE" in os.environ  # torchrun (or a test harness) sets it
        if self.sharded and not (dist.is_initialized() or launched):
            from hiar.config import ConfigError

            raise ConfigError("parallel.strategy: fsdp needs a torchrun launch (torchrun --nproc-per-node N -m "
                              "hiar.cli.main train CONFIG); one process without torchrun: parallel.strategy: ddp")
        if not dist.is_initialized() and (int(os.environ.get("WORLD_SIZE", "1")) > 1 or self.sharded):
            backend = "nccl" if resolve_device(cfg.device).type == "cuda" else "gloo"
            dist.init_process_group(backend)
            self._owns_group = True
        self.rank = dist.get_rank() if dist.is_initialized() else 0
        self.world_size = dist.get_world_size() if dist.is_initialized() else 1
        self.device = resolve_device(cfg.device)
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        self.models: dict[str, torch.nn.Module] = {}
        self.optimizers: dict[str, torch.optim.Optimizer] = {}
        self.schedulers: dict[str, torch.optim.lr_scheduler.LambdaLR] = {}
        self.grad_clip: dict[str, float] = {}
        self.optimizer_sections: dict[str, OptimizerSection] = {}
        self.emas: dict[str, EMA] = {}
        self.step = 0
        self.stage = stage_cls(cfg, self)
        self._tb = None
        self._log_file = None

    # -- helpers for stages ---------------------------------------------------------------------
    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def indices(self, step: int, batch_size: int | None = None) -> list[int]:
        """This rank's global sample indices at ``step``."""
        return rank_indices(step, batch_size or self.cfg.batch_size, self.rank, self.world_size)

    def autocast(self):
        if self.cfg.dtype == "bfloat16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def build_model(self, section: ModelSection, purpose: str) -> WanModel:
        """A model from a config section, on this rank's device, identical on every rank."""
        from hiar.checkpoint import load_model

        config = get_config(section.preset, **section.overrides) if section.preset else None
        if section.overrides and not section.preset:
            raise ValueError(f"{purpose}: model.overrides need a model.preset to apply to")
        if section.checkpoint:
            path = Path(section.checkpoint)
            if not path.exists():
                raise FileNotFoundError(f"{purpose}: checkpoint not found: {path} (did the previous stage run?)")
            model = load_model(path, config=config, which=section.which)
        else:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(keys.key(self.cfg.seed, "init", purpose))
                model = WanModel(config)
        model = model.to(self.device)
        model.gradient_checkpointing = section.gradient_checkpointing
        if self.world_size > 1:
            with torch.no_grad():
                for t in list(model.parameters()) + list(model.buffers()):
                    dist.broadcast(t.data, 0)
        return model

    def frozen(self, model: torch.nn.Module) -> torch.nn.Module:
        """``model`` in eval mode without gradients (sharded under fsdp unless ``parallel.shard_frozen`` is off)."""
        model = model.eval().requires_grad_(False)
        if self.sharded and self.cfg.parallel.shard_frozen:
            fsdp.shard(model, fsdp.mixed_precision(self.cfg.parallel))
        return model

    def add_trainable(self, name: str, model: torch.nn.Module, optim: OptimizerSection, *,
                      ema_decay: float | None = None, ema_start: int = 0) -> None:
        """Train ``model`` (in place: under fsdp it is sharded here) with AdamW, and an EMA if asked.

        Only the parameters ``optim.params`` names are trained (all when it is empty); the others are
        frozen, so the backward pass stops where no trained parameter lies below.
        """
        model.train().requires_grad_(True)
        if optim.params:
            if self.sharded:
                raise ValueError(f"{name}: optimizer.params (training part of a model) is not supported with "
                                 "parallel.strategy=fsdp; use ddp")
            select_params(model, optim.params, name)
        self.models[name] = model
        if ema_decay is not None:  # copied before sharding: the EMA is sharded like the model
            self.emas[name] = EMA(model, ema_decay, ema_start)
        if self.sharded:
            policy = fsdp.mixed_precision(self.cfg.parallel)
            fsdp.shard(model, policy)
            if name in self.emas:
                fsdp.shard(self.emas[name].model, policy)
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=optim.lr, betas=tuple(optim.betas),
                                weight_decay=optim.weight_decay, eps=optim.eps)
        warm = optim.warmup_steps
        self.optimizers[name] = opt
        self.schedulers[name] = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: min(1.0, (s + 1) / warm) if warm else 1.0)
        self.grad_clip[name] = optim.grad_clip
        self.optimizer_sections[name] = optim

    def optimize(self, name: str, loss: torch.Tensor, step: int) -> float:
        """Backward, average gradients over ranks, check, clip, step the optimiser, update the EMA.

        Raises :class:`NonFiniteError` (before any parameter changes) when the loss on any rank, or
        the averaged gradient, is not finite. Returns the loss averaged over ranks.
        """
        model, opt = self.models[name], self.optimizers[name]
        opt.zero_grad(set_to_none=True)
        value = loss.detach().float()
        loss.backward()
        params = [p for p in model.parameters() if p.requires_grad]
        stats = torch.stack([torch.nan_to_num(value, nan=0.0, posinf=0.0, neginf=0.0),
                             (~torch.isfinite(value)).float()]).to(self.device)
        if self.world_size > 1:
            if not self.sharded:  # FSDP's reduce-scatter in backward has averaged them already
                self._average_gradients(params)
            dist.all_reduce(stats)
            stats[0] /= self.world_size
        clip = self.grad_clip[name]
        norm = fsdp.as_float(torch.nn.utils.clip_grad_norm_(params, clip if clip > 0 else math.inf))
        if stats[1] > 0 or not math.isfinite(float(norm)):
            what = f"{name} loss is {float(value)}" if stats[1] > 0 else f"{name} gradient norm is {float(norm)}"
            if stats[1] > 0 and math.isfinite(float(value)):
                what = f"{name} loss is not finite on another rank"
            raise NonFiniteError(
                f"stage {self.stage.name}: step {step + 1}: {what} (non-finite); stopped without writing a "
                f"checkpoint; the last good one is {self.latest_checkpoint() or 'none (no checkpoint written yet)'}"
            )
        opt.step()
        self.schedulers[name].step()
        if name in self.emas:
            self.emas[name].update(model, step)
        return float(stats[0])

    def _average_gradients(self, params: list[torch.nn.Parameter], bucket_elems: int = 1 << 25) -> None:
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        start = 0
        while start < len(grads):
            end, size = start, 0
            while end < len(grads) and (size == 0 or size + grads[end].numel() <= bucket_elems):
                size += grads[end].numel()
                end += 1
            chunk = grads[start:end]
            flat = torch.cat([g.reshape(-1).float() for g in chunk])
            dist.all_reduce(flat)
            flat /= self.world_size
            offset = 0
            for p, g in zip(params[start:end], chunk):
                n = g.numel()
                if p.grad is not None:
                    p.grad.copy_(flat[offset:offset + n].view_as(g))
                offset += n
            start = end

    def save_model(self, model: torch.nn.Module, filename: str, **metadata) -> Path | None:
        """Write a model as hiar safetensors under the output folder (main rank; every rank calls it:
        a sharded model is gathered onto rank 0 first)."""
        whole = fsdp.full_state_dict(model) if fsdp.is_sharded(model) else None
        if not self.is_main:
            return None
        from hiar.checkpoint import save_model

        return save_model(model, self.out / filename, metadata=self.provenance(self.step, **metadata), state_dict=whole)

    def provenance(self, step: int, **extra) -> dict[str, str]:
        """What every model file this run writes says about itself (exported or in a checkpoint, so a
        checkpoint's weights can be bundled with their provenance): stage, step, seed, commit, device."""
        meta = {"stage": self.stage.name, "step": str(step), "seed": str(self.cfg.seed),
                "commit": self.commit, "trained_on": self.hardware()}
        return {**meta, **{k: str(v) for k, v in extra.items()}}

    def hardware(self) -> str:
        """What trained it, for the model's metadata: the device and the number of processes, e.g.
        "cuda: NVIDIA H200 x1" or "cpu x1"."""
        if self.device.type == "cuda":
            return f"cuda: {torch.cuda.get_device_name(self.device)} x{self.world_size}"
        return f"cpu x{self.world_size}"

    def barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier()

    # -- checkpoints ----------------------------------------------------------------------------
    @property
    def checkpoint_root(self) -> Path:
        return self.out / CHECKPOINTS

    def latest_checkpoint(self) -> Path | None:
        name, _ = runfolder.read_latest(self.checkpoint_root)
        if name is None:
            return None
        path = self.checkpoint_root / name
        return path if path.is_dir() else None

    def save_checkpoint(self, step: int) -> None:
        """Checkpoint after ``step`` completed steps, atomically: the main rank writes the files (under
        fsdp every rank writes its shards first), all ranks wait."""
        tmp = self._on_main(lambda: self._new_checkpoint_folder(step))
        try:
            if self.sharded:
                fsdp.save_checkpoint(tmp, self.models, self.optimizers, self.emas)
            self._on_main(lambda: self._complete_checkpoint(tmp, step))
        except BaseException:
            if self.is_main:
                shutil.rmtree(tmp, ignore_errors=True)
            raise
        self.barrier()

    def _new_checkpoint_folder(self, step: int) -> Path:
        """An empty temporary folder for the checkpoint of ``step`` (main rank; shared with the others)."""
        root = self.checkpoint_root
        root.mkdir(parents=True, exist_ok=True)
        tmp = root / f".tmp-step-{step:07d}-{os.getpid()}"
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
        return tmp

    def _complete_checkpoint(self, tmp: Path, step: int) -> None:
        """Main rank: the whole models (ddp) or the shards' index (fsdp), ``state.pt``, the marker; then
        the folder is renamed into place and ``latest`` points at it."""
        from hiar.checkpoint import _atomic_write, save_model

        if self.sharded:
            fsdp.write_index(tmp, self.models, self.emas)
        else:
            for name, model in self.models.items():
                save_model(model, tmp / f"{name}.safetensors", metadata=self.provenance(step, weights="raw"))
            for name, ema in self.emas.items():
                save_model(ema.model, tmp / f"{name}_ema.safetensors", metadata=self.provenance(step, weights="ema"))
        state = {
            "step": step,
            "world_size": self.world_size,
            "parallel": self.cfg.parallel.strategy,
            "optimizers": {} if self.sharded else {n: o.state_dict() for n, o in self.optimizers.items()},
            "schedulers": {n: s.state_dict() for n, s in self.schedulers.items()},
            "rng": {"torch": torch.get_rng_state(),
                    "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []},
        }
        _atomic_write(tmp / STATE, lambda t: torch.save(state, t))
        runfolder.write_marker(tmp, step, stage=self.stage.name)  # last: the folder is complete
        root = self.checkpoint_root
        final = root / f"step-{step:07d}"
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        runfolder.fsync_dir(root)
        _atomic_write(root / LATEST, lambda t: Path(t).write_text(final.name + "\n"))
        self._prune(keep=self.cfg.keep_checkpoints, current=final)

    def _prune(self, keep: int, current: Path) -> None:
        """Keep the ``keep`` newest step folders up to ``current``; newer ones (left by a run that was
        resumed from an older checkpoint) are left alone until this run overwrites them."""
        upto = runfolder.step_of(current)
        found = [p for p in runfolder.step_folders(self.checkpoint_root) if runfolder.step_of(p) <= upto]
        for old in found[:-keep]:
            if old != current:
                shutil.rmtree(old, ignore_errors=True)

    def load_checkpoint(self, path: Path) -> int:
        from safetensors.torch import load_file

        state = torch.load(path / STATE, map_location="cpu", weights_only=True)
        if runfolder.STEP_RE.match(path.name) and int(state["step"]) != runfolder.step_of(path):
            raise ValueError(f"{STATE} is for step {state['step']}")
        written_by = state.get("parallel", "ddp")
        if written_by != self.cfg.parallel.strategy:
            raise ValueError(f"written by a parallel.strategy: {written_by} run; this run uses "
                             f"{self.cfg.parallel.strategy} (the formats differ)")
        if self.sharded:
            fsdp.load_checkpoint(path, self.models, self.optimizers, self.emas)
        else:
            for name, model in self.models.items():
                model.load_state_dict(load_file(str(path / f"{name}.safetensors")), strict=True)
            for name, ema in self.emas.items():
                ema.model.load_state_dict(load_file(str(path / f"{name}_ema.safetensors")), strict=True)
            for name, opt in self.optimizers.items():
                opt.load_state_dict(state["optimizers"][name])
        for name, sched in self.schedulers.items():
            sched.load_state_dict(state["schedulers"][name])
        self._apply_optimizer_sections()
        torch.set_rng_state(state["rng"]["torch"])
        if state["rng"]["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["rng"]["cuda"])
        if state.get("world_size", self.world_size) != self.world_size and self.is_main:
            print(f"hiar train: resuming a {state['world_size']}-process run on {self.world_size} processes: "
                  f"the global batch (and so the data order) changes", file=sys.stderr)
        return int(state["step"])

    def _apply_optimizer_sections(self) -> None:
        """After a resume: the optimiser settings of *this* config (an optimiser's state_dict carries the
        old lr, betas, weight decay and eps, and the LR schedule the old base lr); the schedule's
        position is kept. With an unchanged config this rewrites the same values."""
        for name, opt in self.optimizers.items():
            sec = self.optimizer_sections.get(name)
            if sec is None:
                continue
            sched = self.schedulers.get(name)
            for group in opt.param_groups:
                group.update(betas=tuple(sec.betas), weight_decay=sec.weight_decay, eps=sec.eps, initial_lr=sec.lr)
            if sched is None:
                for group in opt.param_groups:
                    group["lr"] = sec.lr
                continue
            sched.base_lrs = [sec.lr for _ in opt.param_groups]
            for group, base, fn in zip(opt.param_groups, sched.base_lrs, sched.lr_lambdas):
                group["lr"] = base * fn(sched.last_epoch)
            sched._last_lr = [group["lr"] for group in opt.param_groups]

    # -- the run folder -------------------------------------------------------------------------
    def _note(self, message: str) -> None:
        if self.is_main:
            print(f"hiar train: {self.stage.name}: {message}", file=sys.stderr)

    def _on_main(self, fn):
        """``fn()`` on the main rank; its result - or its error, raised on every rank - is shared."""
        result, error = None, None
        if self.is_main:
            try:
                result = fn()
            except Exception as err:  # every rank must hear of it, or the others wait forever
                error = err
        if self.world_size > 1:
            box = [result, error]
            dist.broadcast_object_list(box, src=0)
            result, error = box
        if error is not None:
            raise error
        return result

    def _prepare_folder(self) -> None:
        """Main rank, before anything is built: lock, leftovers, --no-resume / --overwrite, config check."""
        out, root = self.out, self.checkpoint_root
        note = self._lock.acquire()
        if note:
            self._note(note)
        for note in runfolder.clean_leftovers(out):
            self._note(note)
        if self.overwrite:
            gone = runfolder.clear_run(out)
            if gone:
                self._note(f"--overwrite: removed the earlier run's {', '.join(gone)} from {out}")
        elif not self.resume_enabled and not self.stage.stateless and runfolder.has_checkpoints(root):
            names = [p.name for p in runfolder.step_folders(root)] or [LATEST]
            raise runfolder.RunFolderError(
                f"{out} holds checkpoints of an earlier run ({', '.join(names)}); --no-resume would leave them "
                f"beside the new run's: add --overwrite to delete them first, choose another output_dir, or drop "
                f"--no-resume to continue that run")
        resuming = self.resume_enabled and (self.stage.stateless or runfolder.has_checkpoints(root))
        saved_path = out / runfolder.CONFIG
        if not (resuming and saved_path.is_file()):
            return
        import yaml

        from hiar.config import yaml_load

        try:
            saved = yaml_load(saved_path.read_text())
        except (OSError, yaml.YAMLError) as err:
            raise runfolder.RunFolderError(
                f"cannot resume {out}: its {runfolder.CONFIG} is unreadable ({runfolder.one_line(err)}); "
                f"repair it, or start over with --overwrite") from None
        changes = runfolder.config_changes(saved if isinstance(saved, dict) else {}, self.cfg)
        if not changes:
            return
        if not self.accept_config_changes:
            raise runfolder.ConfigChangedError(
                f"{out} was trained with another config ({saved_path}): {runfolder.describe_changes(changes)}; "
                f"add --accept-config-changes to resume with the new values (the old config is kept as "
                f"config.previous-N.yaml), choose "
                f"another output_dir, or resume with the old values")
        self._config_changes = changes

    def _resume_point(self) -> tuple[Path, int] | None:
        """Load the checkpoint to resume from: ``latest``'s, else the newest usable step folder (this rank).

        Returns None when the folder has no checkpoints; raises :class:`~runfolder.ResumeError` when it
        has some but none is usable.
        """
        root = self.checkpoint_root
        pointer, pointer_problem = runfolder.read_latest(root)
        folders = runfolder.step_folders(root)[::-1]  # newest first
        if pointer is None and pointer_problem is None and not folders:
            return None
        candidates = ([root / pointer] if pointer else []) + [p for p in folders if p.name != pointer]
        failed: list[str] = []
        if pointer is None:
            failed.append(pointer_problem or f"{LATEST} is missing")
        for path in candidates:
            marked, problem = runfolder.marker_problem(path)
            if problem is None:
                try:
                    start = self.load_checkpoint(path)
                except Exception as err:  # a truncated or foreign file: the next candidate
                    problem = (f"does not load ({runfolder.one_line(err)[:300]})" if marked else
                               f"has no {runfolder.MARKER} and does not load ({runfolder.one_line(err)[:300]})")
            if problem is None:
                if failed:
                    self._note(f"{'; '.join(failed)}: resuming from {path.name} instead")
                return path, start
            failed.append(f"{path.name}: {problem}" if path.name != pointer else
                          f"{LATEST} -> {path.name}: {problem}")
        model_changes = [c for c in self._config_changes if c[0].split(".")[0] in MODEL_SECTIONS]
        if model_changes and any("loading state_dict" in f for f in failed):
            raise runfolder.ResumeError(
                f"cannot resume {self.out}: its checkpoints do not fit the model of the new config "
                f"({runfolder.describe_changes(model_changes)}); a resumed run cannot change its model: start over "
                f"with --overwrite, choose another output_dir, or resume with the old model settings")
        raise runfolder.ResumeError(
            f"cannot resume {self.out}: no usable checkpoint in {root} ({'; '.join(failed)}); repair or delete "
            f"them, or start over with --overwrite")

    def _resume(self) -> tuple[Path, int] | None:
        """Every rank loads the same checkpoint (each walks the same folders; the choice is compared)."""
        found, error = None, None
        try:
            found = self._resume_point()
        except runfolder.ResumeError as err:
            error = err
        if self.world_size > 1:
            seen = [None] * self.world_size
            dist.all_gather_object(seen, (found[0].name if found else None, str(error) if error else None))
            if error is None and len(set(seen)) > 1:
                error = runfolder.ResumeError(f"cannot resume {self.out}: the processes found different "
                                              f"checkpoints ({', '.join(str(s[0]) for s in seen)})")
            if error is None:
                error = next((runfolder.ResumeError(e) for _, e in seen if e), None)
        if error is not None:
            raise error
        return found

    def _write_config(self, start: int) -> list[dict]:
        """Main rank: ``config.yaml`` (the old one kept when accepted changes replace it); log records."""
        import yaml

        from hiar.checkpoint import _atomic_write

        self.out.mkdir(parents=True, exist_ok=True)
        records = []
        if self._config_changes:
            kept = runfolder.keep_previous_config(self.out)
            self._note(f"resuming at step {start} with config changes: "
                       f"{runfolder.describe_changes(self._config_changes)} (the old config is kept as {kept.name})")
            records.append({"step": start, "event": "config_changed", "previous_config": kept.name,
                            "changes": {k: [a, b] for k, a, b in self._config_changes}})
        text = yaml.safe_dump(to_dict(self.cfg), sort_keys=False)
        _atomic_write(self.out / runfolder.CONFIG, lambda t: Path(t).write_text(text))
        return records

    # -- logging --------------------------------------------------------------------------------
    def _open_logs(self, start: int) -> None:
        if not self.is_main:
            return
        self.out.mkdir(parents=True, exist_ok=True)
        log = self.out / LOG
        if log.exists():  # drop entries past the resumed step (they were not checkpointed)
            kept = [line for line in log.read_text().splitlines()
                    if line.strip() and json.loads(line).get("step", 0) <= start]
            log.write_text("".join(line + "\n" for line in kept))
        self._log_file = open(log, "a")
        if self.cfg.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(str(self.out / "tb"), purge_step=start + 1)
            except ImportError:
                print("hiar train: tensorboard is not installed: no TensorBoard scalars (pip install tensorboard)",
                      file=sys.stderr)

    def log(self, record: dict) -> None:
        if not self.is_main or self._log_file is None:
            return
        self._log_file.write(json.dumps(record) + "\n")
        self._log_file.flush()
        if self._tb is not None and "step" in record:
            for k, v in record.items():
                if k != "step" and isinstance(v, (int, float)):
                    self._tb.add_scalar(f"{self.stage.name}/{k}", v, record["step"])

    def _close_logs(self) -> None:
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None

    def _reduce(self, losses: dict[str, float]) -> dict[str, float]:
        if self.world_size == 1 or not losses:
            return losses
        names = sorted(losses)
        t = torch.tensor([losses[n] for n in names], dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return {n: float(v) / self.world_size for n, v in zip(names, t)}

    # -- the loop -------------------------------------------------------------------------------
    def _time_is_up(self, since: float) -> bool:
        """Whether ``max_seconds`` has passed since ``since``; all ranks agree (the slowest clock counts)."""
        limit = getattr(self.cfg, "max_seconds", None)
        if limit is None:
            return False
        up = time.perf_counter() - since >= limit
        if self.world_size == 1:
            return up
        flag = torch.tensor([float(up)], device=self.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())

    def _loop(self, start: int, total: int, bar, summary: dict, done_before: set[int]) -> None:
        stage = self.stage
        sums: dict[str, float] = {}
        counts: dict[str, int] = {}
        t_interval, n_interval = time.perf_counter(), 0
        t_start = t_interval
        for step in range(start, total):
            losses = self._reduce(stage.step(step))
            bad = {k: v for k, v in losses.items() if not math.isfinite(v)}
            if bad:
                k, v = next(iter(bad.items()))
                raise NonFiniteError(
                    f"stage {stage.name}: step {step + 1}: {k} is {v} (non-finite); stopped without writing a "
                    f"checkpoint; the last good one is {self.latest_checkpoint() or 'none'}")
            self.step = done = step + 1
            n_interval += 1
            for k, v in losses.items():
                sums[k] = sums.get(k, 0.0) + v
                counts[k] = counts.get(k, 0) + 1
            bar.set_postfix({k: f"{v:.4g}" for k, v in losses.items()}, refresh=False)
            if step not in done_before:
                bar.update(1)
            if done % self.cfg.log_every == 0 or done == total:
                now = time.perf_counter()
                record = {"step": done, **{k: sums[k] / counts[k] for k in sums},
                          "sec_per_step": (now - t_interval) / n_interval, "time": time.time()}
                for name, opt in self.optimizers.items():
                    record[f"lr_{name}"] = opt.param_groups[0]["lr"]
                self.log(record)
                summary["last"] = record
                sums, counts, t_interval, n_interval = {}, {}, now, 0
            if not stage.stateless and (done % self.cfg.checkpoint_every == 0 or done == total):
                self.save_checkpoint(done)
            if done < total and self._time_is_up(t_start):
                if done % self.cfg.checkpoint_every:
                    self.save_checkpoint(done)
                record = {"event": "time_limit", "step": done, "steps": total, "max_seconds": self.cfg.max_seconds}
                self.log(record)
                summary["stopped"] = record
                self._note(f"max_seconds={self.cfg.max_seconds:g} spent at step {done}/{total}: checkpointed, "
                           f"exporting the model as it stands; run again to continue")
                break

    def run(self) -> dict:
        """Set up, resume, train to ``total_steps``, export. Returns a summary."""
        from tqdm import tqdm

        stage = self.stage
        bar = None
        try:
            self._on_main(self._prepare_folder)
            stage.setup()
            total = stage.total_steps
            start = 0
            if self.resume_enabled and not stage.stateless:
                found = self._resume()
                if found is not None:
                    latest, start = found
                    self._note(f"resumed from {latest} (step {start}/{total})")
            self.step = start
            records = self._on_main(lambda: self._write_config(start))
            self._open_logs(start)
            for record in records or []:
                self.log(record)
            # Decided once, before this run writes anything: every rank must take every step (the losses
            # are all-reduced), whatever another rank has written meanwhile.
            done_before = ({s for s in range(start, total) if stage.output_exists(s)}
                           if stage.stateless and self.resume_enabled else set())
            if done_before:
                self._note(f"resumed: {len(done_before)} of {total} steps' outputs exist and are kept")
            bar = tqdm(total=total, initial=start + len(done_before), desc=stage.name, unit="step", dynamic_ncols=True,
                       disable=not (self.cfg.progress and self.is_main), file=sys.stderr)
            summary = {"stage": stage.name, "start_step": start, "steps": total}
            if 0 < start >= total and (self.out / "model.safetensors").is_file():
                # Finished before: its exported model stays as it is (re-exporting would rewrite the
                # file with this commit in its metadata, so it would no longer be the file evaluated).
                self._note(f"already finished at step {start}/{total}; {self.out / 'model.safetensors'} is kept")
            else:
                self._loop(start, total, bar, summary, done_before)
                stage.export()
            self.barrier()
        except NonFiniteError as err:
            self.log({"event": "non_finite", "message": str(err)})
            raise
        finally:
            if bar is not None:
                bar.close()
            self._close_logs()
            self._lock.release()
            if self._owns_group and dist.is_initialized():
                stage = None  # this frame's reference too, so that the models can be collected
                self._free_models()
                dist.destroy_process_group()
        summary["end_step"] = self.step
        return summary

    def _free_models(self) -> None:
        """Drop the stage, models, EMAs and optimisers, and collect them before the process group goes.
        FSDP modules sit in reference cycles, so otherwise they are freed at interpreter exit, after the
        group, where gloo now and then aborts the process ("terminate called without an active
        exception": about 1 torchrun run in 25 of a finished 2-rank bfloat16 FSDP training)."""
        import gc

        for held in (self.models, self.emas, self.optimizers, self.schedulers):
            held.clear()
        self.stage = None
        gc.collect()


def run_stage(cfg: RunConfig, *, resume: bool = True, accept_config_changes: bool = False,
              overwrite: bool = False) -> dict:
    """Run the stage named by ``cfg.stage`` (what ``hiar train`` calls).

    ``accept_config_changes``: resume even though the config differs from the saved ``config.yaml``
    (the new values are used and recorded). ``overwrite``: start over, deleting an earlier run's
    checkpoints, log and configs in ``output_dir`` first (implies ``resume=False``).
    """
    from hiar.training.stages import stage_class

    return Trainer(cfg, stage_class(cfg.stage), resume=resume, accept_config_changes=accept_config_changes,
                   overwrite=overwrite).run()


RunFolderError = runfolder.RunFolderError

__all__ = ["Trainer", "Stage", "NonFiniteError", "RunFolderError", "run_stage", "TrainConfig"]
