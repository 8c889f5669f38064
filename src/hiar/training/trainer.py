"""The one training loop every stage shares: a stage is a config plus a step function.

What the loop gives every stage:

* **checkpoints** under ``<output_dir>/checkpoints/step-NNNNNNN/`` - each trainable model and its
  EMA as hiar safetensors (loadable by :func:`hiar.checkpoint.load_model`), and ``state.pt``
  (step, optimiser, LR-schedule and RNG states; read back with ``torch.load(weights_only=True)``).
  A checkpoint is built in a temporary folder and renamed into place, then the ``latest`` pointer
  file is replaced atomically: a crash never leaves a half-written checkpoint behind ``latest``.
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
from hiar.training import keys
from hiar.training.configs import ModelSection, OptimizerSection, RunConfig, TrainConfig
from hiar.training.data import rank_indices
from hiar.training.objectives import EMA

CHECKPOINTS = "checkpoints"
LATEST = "latest"
STATE = "state.pt"
LOG = "log.jsonl"


def code_commit() -> str:
    """The git commit of the code being run (``+dirty`` when the work tree differs), or "unknown"."""
    import subprocess

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


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        return torch.device("cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return dev


class Trainer:
    """Runs a :class:`Stage` to completion (resuming when ``resume``); see the module docstring."""

    def __init__(self, cfg: RunConfig, stage_cls: type[Stage], *, resume: bool = True):
        self.cfg = cfg
        self.resume_enabled = resume
        self.out = Path(cfg.output_dir)
        self.commit = code_commit()  # recorded in every model file this run writes
        self._owns_group = False
        if not dist.is_initialized() and int(os.environ.get("WORLD_SIZE", "1")) > 1:
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
        return model.eval().requires_grad_(False)

    def add_trainable(self, name: str, model: torch.nn.Module, optim: OptimizerSection, *,
                      ema_decay: float | None = None, ema_start: int = 0) -> None:
        model.train().requires_grad_(True)
        self.models[name] = model
        opt = torch.optim.AdamW(model.parameters(), lr=optim.lr, betas=tuple(optim.betas),
                                weight_decay=optim.weight_decay, eps=optim.eps)
        warm = optim.warmup_steps
        self.optimizers[name] = opt
        self.schedulers[name] = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: min(1.0, (s + 1) / warm) if warm else 1.0)
        self.grad_clip[name] = optim.grad_clip
        if ema_decay is not None:
            self.emas[name] = EMA(model, ema_decay, ema_start)

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
            self._average_gradients(params)
            dist.all_reduce(stats)
            stats[0] /= self.world_size
        clip = self.grad_clip[name]
        norm = torch.nn.utils.clip_grad_norm_(params, clip if clip > 0 else math.inf)
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
        """Write a model as hiar safetensors under the output folder (main rank only)."""
        if not self.is_main:
            return None
        from hiar.checkpoint import save_model

        meta = {"stage": self.stage.name, "step": str(self.step), "seed": str(self.cfg.seed),
                "commit": self.commit, **{k: str(v) for k, v in metadata.items()}}
        return save_model(model, self.out / filename, metadata=meta)

    def barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier()

    # -- checkpoints ----------------------------------------------------------------------------
    @property
    def checkpoint_root(self) -> Path:
        return self.out / CHECKPOINTS

    def latest_checkpoint(self) -> Path | None:
        pointer = self.checkpoint_root / LATEST
        if not pointer.is_file():
            return None
        path = self.checkpoint_root / pointer.read_text().strip()
        return path if path.is_dir() else None

    def save_checkpoint(self, step: int) -> None:
        """Checkpoint after ``step`` completed steps (atomically; main rank writes, all wait)."""
        if self.is_main:
            from hiar.checkpoint import _atomic_write, save_model

            root = self.checkpoint_root
            root.mkdir(parents=True, exist_ok=True)
            final = root / f"step-{step:07d}"
            tmp = root / f".tmp-step-{step:07d}-{os.getpid()}"
            if tmp.exists():
                shutil.rmtree(tmp)
            tmp.mkdir()
            meta = {"stage": self.stage.name, "step": str(step)}
            for name, model in self.models.items():
                save_model(model, tmp / f"{name}.safetensors", metadata=meta)
            for name, ema in self.emas.items():
                save_model(ema.model, tmp / f"{name}_ema.safetensors", metadata=meta)
            state = {
                "step": step,
                "world_size": self.world_size,
                "optimizers": {n: o.state_dict() for n, o in self.optimizers.items()},
                "schedulers": {n: s.state_dict() for n, s in self.schedulers.items()},
                "rng": {"torch": torch.get_rng_state(),
                        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []},
            }
            torch.save(state, tmp / STATE)
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
            _atomic_write(root / LATEST, lambda t: Path(t).write_text(final.name + "\n"))
            self._prune(keep=self.cfg.keep_checkpoints, current=final)
        self.barrier()

    def _prune(self, keep: int, current: Path) -> None:
        found = sorted(p for p in self.checkpoint_root.glob("step-*") if p.is_dir())
        for old in found[:-keep]:
            if old != current:
                shutil.rmtree(old, ignore_errors=True)

    def load_checkpoint(self, path: Path) -> int:
        from safetensors.torch import load_file

        for name, model in self.models.items():
            model.load_state_dict(load_file(str(path / f"{name}.safetensors")), strict=True)
        for name, ema in self.emas.items():
            ema.model.load_state_dict(load_file(str(path / f"{name}_ema.safetensors")), strict=True)
        state = torch.load(path / STATE, map_location="cpu", weights_only=True)
        for name, opt in self.optimizers.items():
            opt.load_state_dict(state["optimizers"][name])
        for name, sched in self.schedulers.items():
            sched.load_state_dict(state["schedulers"][name])
        torch.set_rng_state(state["rng"]["torch"])
        if state["rng"]["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["rng"]["cuda"])
        if state.get("world_size", self.world_size) != self.world_size and self.is_main:
            print(f"hiar train: resuming a {state['world_size']}-process run on {self.world_size} processes: "
                  f"the global batch (and so the data order) changes", file=sys.stderr)
        return int(state["step"])

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
    def _loop(self, start: int, total: int, bar, summary: dict) -> None:
        stage = self.stage
        sums: dict[str, float] = {}
        counts: dict[str, int] = {}
        t_interval, n_interval = time.perf_counter(), 0
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

    def run(self) -> dict:
        """Set up, resume, train to ``total_steps``, export. Returns a summary."""
        from tqdm import tqdm

        stage = self.stage
        bar = None
        try:
            stage.setup()
            total = stage.total_steps
            start = 0
            latest = self.latest_checkpoint()
            if self.resume_enabled and not stage.stateless and latest is not None:
                start = self.load_checkpoint(latest)
                if self.is_main:
                    print(f"hiar train: {stage.name}: resumed from {latest} (step {start}/{total})", file=sys.stderr)
            self.step = start
            if self.is_main:
                import yaml

                self.out.mkdir(parents=True, exist_ok=True)
                (self.out / "config.yaml").write_text(yaml.safe_dump(to_dict(self.cfg), sort_keys=False))
            self._open_logs(start)
            bar = tqdm(total=total, initial=start, desc=stage.name, unit="step", dynamic_ncols=True,
                       disable=not (self.cfg.progress and self.is_main), file=sys.stderr)
            summary = {"stage": stage.name, "start_step": start, "steps": total}
            self._loop(start, total, bar, summary)
            stage.export()
            self.barrier()
        except NonFiniteError as err:
            self.log({"event": "non_finite", "message": str(err)})
            raise
        finally:
            if bar is not None:
                bar.close()
            self._close_logs()
            if self._owns_group and dist.is_initialized():
                dist.destroy_process_group()
        summary["end_step"] = self.step
        return summary


def run_stage(cfg: RunConfig, *, resume: bool = True) -> dict:
    """Run the stage named by ``cfg.stage`` (what ``hiar train`` calls)."""
    from hiar.training.stages import stage_class

    return Trainer(cfg, stage_class(cfg.stage), resume=resume).run()


__all__ = ["Trainer", "Stage", "NonFiniteError", "run_stage", "TrainConfig"]
