"""Stage 1, teacher: bidirectional flow matching on the world's clips, with prompt dropout (for CFG)."""

from __future__ import annotations

from hiar.training.data import make_source
from hiar.training.objectives import flow_matching_loss, predict_velocity
from hiar.training.stages.common import drop_prompts, export_trainable, keyed_noise, keyed_sigmas
from hiar.training.trainer import Stage
from hiar import schedule


class TeacherStage(Stage):
    name = "teacher"

    def setup(self) -> None:
        cfg, t = self.cfg, self.trainer
        self.model = t.build_model(cfg.model, "teacher")
        mc = self.model.cfg
        self.source = make_source(cfg.data, text_dim=mc.text_dim, text_len=mc.text_len, device=t.device)
        if not self.source.has_clips:
            raise ValueError("the teacher stage trains on clips: data.kind must be shapes or trajectories")
        self.sigmas = cfg.noise.sampler()
        t.add_trainable("model", self.model, cfg.optimizer, ema_decay=cfg.ema_decay, ema_start=cfg.ema_start)

    def step(self, step: int) -> dict[str, float]:
        cfg, t = self.cfg, self.trainer
        idx = t.indices(step)
        x0, text, _ = self.source.batch(idx)
        text = drop_prompts(text, cfg.prompt_dropout, cfg.seed, step, idx)
        noise = keyed_noise(x0.shape[1:], cfg.seed, "noise", step, idx)
        sigma = keyed_sigmas(self.sigmas, cfg.seed, "sigma", step, idx)
        x0, noise, text = (v.to(t.device) for v in (x0, noise, text))
        xt = schedule.add_noise(x0, noise, sigma)
        with t.autocast():
            velocity = predict_velocity(self.model, xt, sigma, text)
        loss = flow_matching_loss(velocity, x0, noise)
        return {"loss": t.optimize("model", loss, step)}

    def export(self) -> None:
        export_trainable(self.trainer, "model")
