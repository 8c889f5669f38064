"""Stage 5, DMD: self-rollout distribution matching distillation (Self-Forcing, HiAR, CausVid).

Per step (Self-Forcing's loop): every ``critic_updates_per_generator``-th step first updates the
generator - a self-rollout with the gradient at one random exit step shared by all blocks (the last
step with ``last_step_only``), the DMD generator loss against the teacher with CFG (real score) and
the critic (fake score), both bidirectional over the whole clip, plus lambda x the forward-KL
regulariser on trajectories - then every step updates the critic by flow matching on a fresh rollout
without gradient.
"""

from __future__ import annotations

import torch

from hiar import schedule
from hiar.attention import BIDIRECTIONAL, block_causal
from hiar.training import keys
from hiar.training.data import make_source
from hiar.training.objectives import critic_loss, dmd_loss, fkl_loss, guided_velocity, predict_velocity
from hiar.training.rollout import draw_exit_step, rollout_config, rollout_seeds, self_rollout
from hiar.training.stages.common import export_trainable, keyed_noise, keyed_sigmas
from hiar.training.trainer import Stage
from hiar.training.trajectories import TrajectoryDataset


class DmdStage(Stage):
    name = "dmd"

    def setup(self) -> None:
        cfg, t = self.cfg, self.trainer
        self.generator = t.build_model(cfg.model, "generator")
        self.teacher = t.frozen(t.build_model(cfg.teacher, "teacher"))
        self.critic = t.build_model(cfg.critic or cfg.teacher, "critic")
        mc = self.generator.cfg
        self.source = make_source(cfg.data, text_dim=mc.text_dim, text_len=mc.text_len, device=t.device)
        # guidance's unconditional text: the null prompt, or the negative prompt encoded once here
        self.uncond = self.source.unconditional_text(cfg.batch_size, cfg.negative_prompt).to(t.device)
        st = cfg.student
        self.levels = st.levels
        self.S = len(self.levels) - 1
        self.sampler = rollout_config(cfg.method, self.levels, block_frames=st.block_frames, transition=st.transition,
                                      order=cfg.order)
        self.num_blocks = cfg.data.num_frames // st.block_frames
        self.score_sigmas = cfg.score_noise
        self.fkl_data = None
        if cfg.fkl.weight > 0:
            if cfg.fkl.num_levels > self.S:
                raise ValueError(f"fkl.num_levels={cfg.fkl.num_levels} exceeds the student's {self.S} steps")
            self.fkl_data = TrajectoryDataset(cfg.fkl.trajectories, levels=self.levels)
            self.fkl_attention = BIDIRECTIONAL if cfg.fkl.attention == "bidirectional" else block_causal(st.block_frames)
        t.add_trainable("generator", self.generator, cfg.optimizer, ema_decay=cfg.ema_decay, ema_start=cfg.ema_start)
        t.add_trainable("critic", self.critic, cfg.critic_optimizer)

    # -- pieces ---------------------------------------------------------------------------------
    def _prompts(self, idx):
        clips = self.cfg.method == "causvid"
        x, text, _ = self.source.batch(idx, clips=clips)
        dev = self.trainer.device
        return (x.to(dev) if x is not None else None), text.to(dev)

    def rollout(self, step: int, purpose: str, idx: list[int], text, clean, grad: bool) -> tuple[torch.Tensor, int]:
        cfg = self.cfg
        exit_step = self.S if cfg.last_step_only else draw_exit_step(cfg.seed, step, self.S, purpose)
        with self.trainer.autocast():
            x = self_rollout(self.generator, self.sampler, text, seeds=rollout_seeds(cfg.seed, step, idx, purpose),
                             latent_shape=self.source.latent_shape, num_blocks=self.num_blocks, exit_step=exit_step,
                             grad=grad, teacher_context=clean)
        return x.float(), exit_step

    def fkl(self, step: int) -> torch.Tensor:
        """Eq. 10 on a batch of trajectories: the student's velocity at x_ref[i], sigma_i, i < K."""
        cfg, t = self.cfg, self.trainer
        idx = t.indices(step, cfg.fkl.batch_size)
        latents, text = self.fkl_data.batch(idx)
        i = torch.tensor([keys.randint(cfg.fkl.num_levels, cfg.seed, "fkl-level", step, g) for g in idx])
        rows = torch.arange(len(idx))
        x_i, x_next = latents[rows, i].to(t.device), latents[rows, i + 1].to(t.device)
        sigma_i, sigma_next = self.levels[i], self.levels[i + 1]
        with t.autocast():
            velocity = predict_velocity(self.generator, x_i, sigma_i, text.to(t.device), self.fkl_attention)
        return fkl_loss(velocity.float(), x_i, x_next, sigma_i, sigma_next)

    # -- the two updates ------------------------------------------------------------------------
    def generator_step(self, step: int) -> dict[str, float]:
        cfg, t = self.cfg, self.trainer
        idx = t.indices(step)
        clean, text = self._prompts(idx)
        x, exit_step = self.rollout(step, "generator", idx, text, clean, grad=True)
        sigma = keyed_sigmas(self.score_sigmas, cfg.seed, "dmd-sigma", step, idx)
        noise = keyed_noise(x.shape[1:], cfg.seed, "dmd-noise", step, idx).to(t.device)
        with torch.no_grad(), t.autocast():
            xt = schedule.add_noise(x.detach(), noise, sigma)
            fake_x0 = schedule.x0_from_velocity(xt, predict_velocity(self.critic, xt, sigma, text).float(), sigma)
            # Self-Forcing's guidance convention: cond + g (cond - uncond) = CFG with scale 1 + g
            real_v = guided_velocity(self.teacher, xt, sigma, text, self.uncond, 1.0 + cfg.real_guidance)
            real_x0 = schedule.x0_from_velocity(xt, real_v.float(), sigma)
        loss_dmd, grad = dmd_loss(x, fake_x0, real_x0)
        logs = {"dmd_loss": float(loss_dmd.detach()), "dmd_grad_abs": float(grad.abs().mean()), "exit_step": float(exit_step)}
        loss = loss_dmd
        if self.fkl_data is not None:
            loss_fkl = self.fkl(step)
            loss = loss + cfg.fkl.weight * loss_fkl
            logs["fkl_loss"] = float(loss_fkl.detach())
        logs["generator_loss"] = t.optimize("generator", loss, step)
        return logs

    def critic_step(self, step: int) -> dict[str, float]:
        cfg, t = self.cfg, self.trainer
        idx = t.indices(step)
        clean, text = self._prompts(idx)
        with torch.no_grad():
            x, _ = self.rollout(step, "critic", idx, text, clean, grad=False)
        sigma = keyed_sigmas(self.score_sigmas, cfg.seed, "critic-sigma", step, idx)
        noise = keyed_noise(x.shape[1:], cfg.seed, "critic-noise", step, idx).to(t.device)
        with t.autocast():
            loss = critic_loss(self.critic, x, sigma, noise, text)
        return {"critic_loss": t.optimize("critic", loss, step)}

    def step(self, step: int) -> dict[str, float]:
        logs = {}
        if step % self.cfg.critic_updates_per_generator == 0:
            logs.update(self.generator_step(step))
        logs.update(self.critic_step(step))
        return logs

    def export(self) -> None:
        export_trainable(self.trainer, "generator", "model.safetensors")
        self.trainer.save_model(self.critic, "critic.safetensors")
