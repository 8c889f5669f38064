"""The shared trainer loop: exact resume, checkpoints, logs, the NaN/inf guard, config errors."""

from __future__ import annotations

import json

import pytest
import torch

from hiar.config import ConfigError
from hiar.training import NonFiniteError, run_stage, stage_config
from hiar.training.stages import teacher as teacher_module
from hiar.training.stages.teacher import TeacherStage
from tests.training_helpers import TINY, common, dmd_config, prepared, weights


def teacher_cfg(out, **kw):
    return stage_config("teacher", common(out, model=TINY, steps=4, checkpoint_every=2, ema_decay=0.5,
                                          optimizer={"lr": 1e-3, "warmup_steps": 2}, **kw))


def assert_same_checkpoint(a, b, names):
    for name in names:
        wa, wb = weights(a / f"{name}.safetensors"), weights(b / f"{name}.safetensors")
        assert wa.keys() == wb.keys()
        for k in wa:
            assert torch.equal(wa[k], wb[k]), f"{name}: {k} differs"
    sa = torch.load(a / "state.pt", weights_only=True)
    sb = torch.load(b / "state.pt", weights_only=True)
    assert sa["step"] == sb["step"]
    for name, opt in sa["optimizers"].items():
        for pid, st in opt["state"].items():
            for k, v in st.items():
                assert torch.equal(v, sb["optimizers"][name]["state"][pid][k])


def test_stopped_and_resumed_teacher_equals_a_straight_run(tmp_path, monkeypatch):
    run_stage(teacher_cfg(tmp_path / "straight"))
    original = TeacherStage.step

    def crash_at_3(self, step):
        if step == 3:
            raise KeyboardInterrupt
        return original(self, step)

    monkeypatch.setattr(TeacherStage, "step", crash_at_3)
    with pytest.raises(KeyboardInterrupt):
        run_stage(teacher_cfg(tmp_path / "resumed"))
    assert (tmp_path / "resumed/checkpoints/latest").read_text().strip() == "step-0000002"
    monkeypatch.setattr(TeacherStage, "step", original)
    summary = run_stage(teacher_cfg(tmp_path / "resumed"))
    assert summary["start_step"] == 2 and summary["end_step"] == 4
    ckpt = "checkpoints/step-0000004"
    assert_same_checkpoint(tmp_path / "straight" / ckpt, tmp_path / "resumed" / ckpt, ["model", "model_ema"])
    assert torch.equal(weights(tmp_path / "straight/model.safetensors")["head.head.weight"],
                       weights(tmp_path / "resumed/model.safetensors")["head.head.weight"])
    steps = [json.loads(line)["step"] for line in (tmp_path / "resumed/log.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]  # the step logged after the last checkpoint was dropped and redone


def test_stopped_and_resumed_dmd_equals_a_straight_run(tmp_path):
    root = prepared()
    run_stage(stage_config("dmd", dmd_config(root, tmp_path / "straight", steps=4, checkpoint_every=2)))
    run_stage(stage_config("dmd", dmd_config(root, tmp_path / "resumed", steps=2, checkpoint_every=2)))
    summary = run_stage(stage_config("dmd", dmd_config(root, tmp_path / "resumed", steps=4, checkpoint_every=2)))
    assert summary["start_step"] == 2
    ckpt = "checkpoints/step-0000004"
    assert_same_checkpoint(tmp_path / "straight" / ckpt, tmp_path / "resumed" / ckpt, ["generator", "generator_ema", "critic"])


def test_checkpoints_are_pruned_loadable_and_state_is_weights_only(tmp_path):
    from hiar.checkpoint import load_model

    out = tmp_path / "t"
    run_stage(stage_config("teacher", common(out, model=TINY, steps=3, checkpoint_every=1, keep_checkpoints=2,
                                             tensorboard=True)))
    dirs = sorted(p.name for p in (out / "checkpoints").iterdir() if p.is_dir())
    assert dirs == ["step-0000002", "step-0000003"]
    assert (out / "checkpoints/latest").read_text().strip() == "step-0000003"
    model = load_model(out / "checkpoints/step-0000003/model.safetensors")
    assert model.cfg.in_dim == 3
    state = torch.load(out / "checkpoints/step-0000003/state.pt", weights_only=True)
    assert state["step"] == 3
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3] and all("loss" in r and "sec_per_step" in r for r in log)
    assert list((out / "tb").glob("events.out.tfevents.*"))
    assert (out / "config.yaml").is_file() and (out / "model.safetensors").is_file()
    # a finished run resumed again does nothing more
    assert run_stage(stage_config("teacher", common(out, model=TINY, steps=3)))["start_step"] == 3


def test_nan_loss_stops_with_a_clear_message_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    real = teacher_module.flow_matching_loss
    calls = {"n": 0}

    def nan_at_third_step(*args):
        calls["n"] += 1
        loss = real(*args)
        return loss * float("nan") if calls["n"] == 3 else loss

    monkeypatch.setattr(teacher_module, "flow_matching_loss", nan_at_third_step)
    out = tmp_path / "nan"
    cfg = stage_config("teacher", common(out, model=TINY, steps=5, checkpoint_every=1))
    with pytest.raises(NonFiniteError, match=r"stage teacher: step 3: model loss is nan .*step-0000002"):
        run_stage(cfg)
    assert (out / "checkpoints/latest").read_text().strip() == "step-0000002"
    assert not (out / "checkpoints/step-0000003").exists()
    assert not (out / "model.safetensors").exists()
    assert "non_finite" in (out / "log.jsonl").read_text()


class InfGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, g):
        return g * float("inf")


def test_infinite_gradient_is_caught_before_the_update(tmp_path, monkeypatch):
    real = teacher_module.flow_matching_loss
    monkeypatch.setattr(teacher_module, "flow_matching_loss", lambda *a: InfGrad.apply(real(*a)))
    with pytest.raises(NonFiniteError, match="stage teacher: step 1: model gradient norm is"):
        run_stage(stage_config("teacher", common(tmp_path / "inf", model=TINY, steps=2)))
    assert not (tmp_path / "inf/checkpoints").exists()


def test_config_errors_name_the_key(tmp_path):
    with pytest.raises(ConfigError, match="stepz"):
        stage_config("teacher", {"stepz": 3})
    with pytest.raises(ConfigError, match="optimizer.lr"):
        stage_config("teacher", {"optimizer": {"lr": "fast"}})
    with pytest.raises(ConfigError, match="fkl"):
        stage_config("dmd", {"fkl": {"weight": 0.1}})
    with pytest.raises(ConfigError, match="method"):
        stage_config("dmd", {"method": "dmd2"})
    bad = tmp_path / "bad.yaml"
    bad.write_text("stage: teacher\nbatch_size: two\n")
    from hiar.training import load_stage_config

    with pytest.raises(ConfigError, match="batch_size"):
        load_stage_config(bad)
    bad.write_text("steps: 3\n")
    with pytest.raises(ConfigError, match="stage"):
        load_stage_config(bad)


def test_max_seconds_checkpoints_exports_and_a_second_run_finishes(tmp_path):
    out = tmp_path / "run"
    summary = run_stage(teacher_cfg(out, max_seconds=0))  # spent after the first step
    assert summary["end_step"] == 1 and summary["stopped"]["event"] == "time_limit"
    assert (out / "checkpoints" / "step-0000001").is_dir()  # off the checkpoint_every grid, written anyway
    assert (out / "model.safetensors").is_file()  # exported as it stands
    events = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert {"event": "time_limit", "step": 1, "steps": 4, "max_seconds": 0} in events
    summary = run_stage(teacher_cfg(out))  # no limit: resumes at 1, trains to 4
    assert summary["start_step"] == 1 and summary["end_step"] == 4 and "stopped" not in summary
    run_stage(teacher_cfg(tmp_path / "straight"))
    assert_same_checkpoint(out / "checkpoints" / "step-0000004", tmp_path / "straight" / "checkpoints" / "step-0000004",
                           ["model", "model_ema"])


def test_max_seconds_must_not_be_negative(tmp_path):
    with pytest.raises(ConfigError, match="max_seconds"):
        teacher_cfg(tmp_path, max_seconds=-1)


def test_data_workers_render_ahead_the_same_batches_and_the_same_training(tmp_path):
    from hiar.training.configs import DataSection
    from hiar.training.data import PrefetchingSource, ShapesSource, rank_indices

    cfg = DataSection(num_frames=3, seed=3, shapes={"height": 16, "width": 16}, workers=2)
    ahead, plain = PrefetchingSource(cfg, 64, 16), ShapesSource(cfg, 64, 16)
    steps = [0, 1, 2, 3, 7, 8, 9]  # a jump, as a resumed run makes
    for step in steps:
        idx = rank_indices(step, 5, rank=1, world_size=2)
        for a, b in zip(ahead.batch(idx), plain.batch(idx)):
            assert a == b if isinstance(a, list) else torch.equal(a, b)
    assert set(ahead.ahead) == {tuple(rank_indices(s, 5, 1, 2)) for s in (10, 11)}  # started, 2 steps ahead
    none, text, prompts = ahead.batch(idx, clips=False)
    assert none is None and prompts == plain.batch(idx)[2]
    # a whole run: the same weights with and without workers
    data = {"num_frames": 6, "shapes": {"height": 8, "width": 8}}
    run_stage(teacher_cfg(tmp_path / "plain", data=data))
    run_stage(teacher_cfg(tmp_path / "workers", data={**data, "workers": 2}))
    assert_same_checkpoint(tmp_path / "plain" / "checkpoints" / "step-0000004",
                           tmp_path / "workers" / "checkpoints" / "step-0000004", ["model", "model_ema"])


def test_data_workers_are_for_the_shapes_world(tmp_path):
    with pytest.raises(ConfigError, match="data.workers"):
        stage_config("ode_init", common(tmp_path, model=TINY, data={"kind": "trajectories", "trajectories": "x",
                                                                    "workers": 1}))
    with pytest.raises(ConfigError, match="data.workers must be >= 0"):
        teacher_cfg(tmp_path, data={"workers": -1})
