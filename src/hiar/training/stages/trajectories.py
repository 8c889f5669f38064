"""Stage 2, trajectories: the teacher's ODE (Euler, ``ode_steps`` steps, CFG) from keyed pure noise,
saved exactly at the student's levels, as safetensors shards (resumable: finished shards are kept)."""

from __future__ import annotations

import math
import time

import torch

from hiar import schedule
from hiar.config import to_dict
from hiar.training import keys
from hiar.training.data import make_source
from hiar.training.objectives import guided_velocity
from hiar.training.trainer import NonFiniteError, Stage
from hiar.training.trajectories import shard_name, solve_ode, write_manifest, write_shard

STORE_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class TrajectoriesStage(Stage):
    name = "trajectories"
    stateless = True  # the shards are the state

    @property
    def total_steps(self) -> int:
        return math.ceil(self.cfg.num_samples / self.cfg.samples_per_shard)

    def setup(self) -> None:
        cfg, t = self.cfg, self.trainer
        self.teacher = t.frozen(t.build_model(cfg.model, "teacher"))
        mc = self.teacher.cfg
        self.source = make_source(cfg.data, text_dim=mc.text_dim, text_len=mc.text_len, device=t.device)
        # guidance's unconditional text: the null prompt, or the negative prompt encoded once here
        self.uncond = self.source.unconditional_text(cfg.batch_size, cfg.negative_prompt).to(t.device)
        self.levels = cfg.student.levels
        self.grid = schedule.uniform_levels(cfg.ode_steps, cfg.ode_shift, include=self.levels)
        C, H, W = self.source.latent_shape
        self.sample_shape = (C, cfg.data.num_frames, H, W)
        self.info = {"ode_steps": cfg.ode_steps, "ode_shift": cfg.ode_shift, "grid_points": len(self.grid),
                     "guidance_scale": cfg.guidance_scale, "negative_prompt": cfg.negative_prompt, "seed": cfg.seed,
                     "teacher": cfg.model.checkpoint, "data": to_dict(cfg.data)}

    def indices_of_shard(self, k: int) -> list[int]:
        n = self.cfg.samples_per_shard
        return list(range(k * n, min((k + 1) * n, self.cfg.num_samples)))

    @torch.no_grad()
    def generate(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
        """Trajectories ``[n, S+1, C, F, H, W]``, text ``[n, L, D]`` and prompts of these samples.

        Each integrated batch adds a ``trajectory_batch`` record to the log: a shard can take an hour on
        a CPU, and this is how its progress shows (``tail -f log.jsonl``)."""
        cfg, t = self.cfg, self.trainer
        prompts = [self.source.prompt(i) for i in indices]
        text = self.source.text(prompts)
        out = []
        batches = math.ceil(len(indices) / cfg.batch_size)
        for a in range(0, len(indices), cfg.batch_size):
            started = time.perf_counter()
            chunk = indices[a:a + cfg.batch_size]
            cond = text[a:a + len(chunk)].to(t.device)
            uncond = self.uncond[:len(chunk)]
            noise = torch.stack([keys.randn(self.sample_shape, cfg.seed, "trajectory-noise", i) for i in chunk]).to(t.device)

            def velocity(x, sigma):
                s = torch.full((x.shape[0],), sigma, dtype=torch.float64)
                with t.autocast():
                    return guided_velocity(self.teacher, x, s, cond, uncond, cfg.guidance_scale).float()

            states, taken = solve_ode(velocity, noise, self.grid, self.levels)
            assert taken == [float(s) for s in self.levels]
            out.append(states.cpu())
            t.log({"event": "trajectory_batch", "first_sample": chunk[0], "samples": len(chunk),
                   "batch": a // cfg.batch_size + 1, "batches": batches,
                   "seconds": round(time.perf_counter() - started, 3)})
        return torch.cat(out), text, prompts

    def output_exists(self, step: int) -> bool:
        return (self.trainer.out / shard_name(step)).exists()

    def step(self, step: int) -> dict[str, float]:
        t = self.trainer
        path = t.out / shard_name(step)
        if step % t.world_size != t.rank or (self.output_exists(step) and t.resume_enabled):
            return {"samples": 0.0}
        indices = self.indices_of_shard(step)
        latents, text, prompts = self.generate(indices)
        if not torch.isfinite(latents).all():
            raise NonFiniteError(f"stage trajectories: shard {step}: the teacher's ODE produced non-finite values; "
                                 f"shard not written (the finished shards stay)")
        write_shard(path, latents.to(STORE_DTYPES[self.cfg.store_dtype]), text, self.levels, indices, prompts, self.info)
        return {"samples": float(len(indices))}

    def export(self) -> None:
        t = self.trainer
        t.barrier()
        if t.is_main:
            missing = [k for k in range(self.total_steps) if not (t.out / shard_name(k)).exists()]
            if missing:
                raise RuntimeError(f"trajectories: shards {missing} are missing in {t.out}")
            write_manifest(t.out, self.cfg.num_samples, self.total_steps, self.levels, self.sample_shape, self.info)
