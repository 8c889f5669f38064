"""Smoke runs of every stage on a micro model, the CLI, and the shapes recipe's configs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from hiar.checkpoint import load_model
from hiar.cli.main import main
from hiar.training import load_stage_config, run_stage, stage_config
from hiar.training.stages.ode_init import per_block_inputs
from tests.training_helpers import TINY, common, dmd_config, prepared, weights

ROOT = Path(__file__).resolve().parents[1]


def test_teacher_and_trajectories_outputs():
    root = prepared()
    assert load_model(root / "teacher/model.safetensors").cfg.in_dim == 3
    manifest = json.loads((root / "traj/manifest.json").read_text())
    assert manifest["num_samples"] == 4 and manifest["num_shards"] == 2
    # one progress record per integrated batch, covering every sample once
    records = [json.loads(x) for x in (root / "traj/log.jsonl").read_text().splitlines()]
    batches = [r for r in records if r.get("event") == "trajectory_batch"]
    covered = sorted(i for r in batches for i in range(r["first_sample"], r["first_sample"] + r["samples"]))
    assert covered == [0, 1, 2, 3] and all(r["seconds"] >= 0 and 1 <= r["batch"] <= r["batches"] for r in batches)


def test_ode_init_and_diffusion_forcing_run(tmp_path):
    root = prepared()
    teacher = {"checkpoint": str(root / "teacher/model.safetensors")}
    run_stage(stage_config("ode_init", common(tmp_path / "ode", model=teacher, steps=2, trajectories=str(root / "traj"),
                                              student={"block_frames": 3})))
    run_stage(stage_config("diffusion_forcing", common(tmp_path / "df", model={"checkpoint": str(tmp_path / "ode/model.safetensors")},
                                                       steps=2, ema_decay=0.9)))
    for out in ("ode", "df"):
        log = (tmp_path / out / "log.jsonl").read_text().splitlines()
        assert len(log) == 2 and all(torch.isfinite(torch.tensor(json.loads(x)["loss"])) for x in log)
    assert (tmp_path / "df/model_raw.safetensors").is_file()  # EMA -> model.safetensors, raw weights beside it


def test_per_block_inputs_pick_each_blocks_level():
    lat = torch.arange(5.0)[None, :, None, None, None, None].expand(1, 5, 2, 6, 2, 2).clone()  # value = level index
    x = per_block_inputs(lat, torch.tensor([[3, 0]]), 3)
    assert x.shape == (1, 2, 6, 2, 2)
    assert bool((x[:, :, :3] == 3).all()) and bool((x[:, :, 3:] == 0).all())


def test_the_x0_loss_over_chosen_frames_is_their_mean_squared_error():
    from hiar.training.objectives import x0_regression_loss

    pred, target = torch.randn(2, 3, 6, 2, 2), torch.randn(2, 3, 6, 2, 2)
    frames = torch.tensor([[True] * 3 + [False] * 3, [False] * 6])  # sample 0's first block only
    expected = (pred[0, :, :3] - target[0, :, :3]).square().mean()
    assert torch.allclose(x0_regression_loss(pred, target, frames), expected)
    assert torch.allclose(x0_regression_loss(pred, target, torch.ones(2, 6, dtype=torch.bool)),
                          x0_regression_loss(pred, target))


def test_ode_init_clean_context_gives_clean_blocks_without_loss(tmp_path):
    """clean_context p: about p of the blocks are given clean (level index S), the rest keep the draws of
    p = 0 (so a run of before resumes on the same levels); and the stage trains with them."""
    from hiar.training.stages.ode_init import OdeInitStage

    root = prepared()
    teacher = {"checkpoint": str(root / "teacher/model.safetensors")}

    def stage(p, name, layout="blocks"):
        cfg = stage_config("ode_init", common(tmp_path / name, model=teacher, steps=2, trajectories=str(root / "traj"),
                                               student={"block_frames": 3}, clean_context=p,
                                               clean_context_layout=layout))
        st = OdeInitStage.__new__(OdeInitStage)
        st.cfg, st.levels = cfg, cfg.student.levels
        return st, cfg

    plain, _ = stage(0.0, "plain")
    clean, cfg = stage(0.3, "clean")
    prefix, _ = stage(0.5, "prefix", "prefix")
    S = len(clean.levels) - 1
    rows = [(clean.draw_levels(step, i, 7), plain.draw_levels(step, i, 7), prefix.draw_levels(step, i, 7))
            for step in range(50) for i in range(4)]
    draws = [(c, p) for cs, ps, _ in rows for c, p in zip(cs, ps)]
    share = sum(c == S for c, _ in draws) / len(draws)
    assert 0.2 < share < 0.4, share
    assert all(p < S for _, p in draws) and all(c == p for c, p in draws if c != S)
    # prefix: about half the samples start with 1 .. 6 clean blocks, all of them before any noisy one
    counts = [next((b for b, level in enumerate(row) if level < S), 7) for _, _, row in rows]
    assert all(S not in row[k:] for k, (_, _, row) in zip(counts, rows)) and max(counts) == 6
    assert 0.35 < sum(k > 0 for k in counts) / len(counts) < 0.65
    assert all(row[k:] == p[k:] for k, (_, p, row) in zip(counts, rows))
    run_stage(cfg)
    log = [json.loads(x) for x in (tmp_path / "clean/log.jsonl").read_text().splitlines()]
    assert len(log) == 2 and all(torch.isfinite(torch.tensor(r["loss"])) for r in log)
    with pytest.raises(ValueError, match="clean_context"):
        stage(1.0, "all")
    with pytest.raises(ValueError, match="clean_context_layout"):
        stage(0.5, "typo", "prefixes")


def ode_stage_and_batch(tmp_path, name: str, *, model=None, **overrides):
    """An ode_init stage of the prepared micro run (clean prefix with probability 0.9 unless overridden),
    set up without a trainer, and the first 4 trajectories with a step where 1-3 of them start clean."""
    import contextlib
    from types import SimpleNamespace

    from hiar.attention import block_causal
    from hiar.training.stages.ode_init import OdeInitStage
    from hiar.training.trajectories import TrajectoryDataset

    root = prepared()
    cfg = stage_config("ode_init", common(tmp_path / name, model={"checkpoint": str(root / "teacher/model.safetensors")},
                                           steps=2, trajectories=str(root / "traj"), student={"block_frames": 3},
                                           **({"clean_context": 0.9, "clean_context_layout": "prefix"} | overrides)))
    st = OdeInitStage.__new__(OdeInitStage)
    st.cfg, st.levels, st.k, st.model, st.attention = cfg, cfg.student.levels, 3, model, block_causal(3)
    st.trainer = SimpleNamespace(device=torch.device("cpu"), autocast=contextlib.nullcontext)
    idx = [0, 1, 2, 3]
    latents, text = TrajectoryDataset(root / "traj", levels=st.levels).batch(idx)
    S = len(st.levels) - 1
    step = next(k for k in range(20) if sum(st.draw_levels(k, i, 2)[0] == S for i in idx) in (1, 2, 3))
    return st, cfg, (step, idx, latents, text)


def test_ode_init_clean_context_from_the_model_is_its_own_estimate(tmp_path):
    """clean_context_source: model gives each clean block as the model's x0 estimate from the trajectory's
    state at the last noisy level (a call over those frames only, block-causal), which is not the
    trajectory's endpoint; the noisy blocks are the same as with the endpoint; and the stage trains."""
    from hiar import schedule
    from hiar.attention import block_causal
    from hiar.training.objectives import predict_velocity

    model = load_model(prepared() / "teacher/model.safetensors").eval()
    endpoint, _, batch = ode_stage_and_batch(tmp_path, "endpoint", model=model, clean_context_source="trajectory")
    own, cfg, _ = ode_stage_and_batch(tmp_path, "own", model=model, clean_context_source="model")
    step, idx, latents, text = batch
    S = len(own.levels) - 1
    x_end, sigma_end, frames_end = endpoint.inputs(step, idx, latents, text)
    x_own, sigma_own, frames_own = own.inputs(step, idx, latents, text)
    assert torch.equal(frames_end, frames_own) and torch.equal(sigma_end, sigma_own)
    clean = frames_own[:, 0] == S  # the samples whose first block is clean
    assert torch.equal(x_end[clean][:, :, :3], latents[clean][:, S, :, :3])
    with torch.no_grad():  # the reference: the whole clip at the last noisy level, first block kept
        state = latents[:, S - 1]
        sigma = torch.full((4, 6), float(own.levels[S - 1]), dtype=torch.float64)
        estimate = schedule.x0_from_velocity(state, predict_velocity(model, state, sigma, text, block_causal(3)).float(), sigma)
    torch.testing.assert_close(x_own[clean][:, :, :3], estimate[clean][:, :, :3], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(x_own[clean][:, :, :3], x_end[clean][:, :, :3], atol=1e-3)
    assert torch.equal(x_own[~clean], x_end[~clean]) and torch.equal(x_own[:, :, 3:], x_end[:, :, 3:])
    run_stage(cfg)
    log = [json.loads(x) for x in (tmp_path / "own/log.jsonl").read_text().splitlines()]
    assert len(log) == 2 and all(torch.isfinite(torch.tensor(r["loss"])) for r in log)
    with pytest.raises(ValueError, match="clean_context_source"):
        ode_stage_and_batch(tmp_path, "typo", clean_context_source="teacher")


def test_ode_init_perturbed_clean_context_is_renoised_but_labelled_clean(tmp_path):
    """clean_context_noise m: each sample's clean frames are its endpoint renoised (Eq. 1) with keyed noise
    to one keyed level in [0, m], while their sigma stays 0; the noisy frames are untouched; a second call
    (a resumed run) perturbs alike; and the stage trains."""
    from hiar import schedule
    from hiar.training import keys

    plain, _, batch = ode_stage_and_batch(tmp_path, "plain")
    noisy, cfg, _ = ode_stage_and_batch(tmp_path, "noisy", clean_context_noise=0.4)
    step, idx, latents, text = batch
    S = len(noisy.levels) - 1
    x_plain, sigma_plain, frames_plain = plain.inputs(step, idx, latents, text)
    x_noisy, sigma_noisy, frames_noisy = noisy.inputs(step, idx, latents, text)
    assert torch.equal(sigma_noisy, sigma_plain) and torch.equal(frames_noisy, frames_plain)
    clean = frames_noisy == S  # [B, F]
    assert bool(clean.any()) and not bool(clean.all())
    assert torch.equal(x_noisy.permute(0, 2, 1, 3, 4)[~clean], x_plain.permute(0, 2, 1, 3, 4)[~clean])
    for row, sample in enumerate(idx):
        if not bool(clean[row].any()):
            continue
        level = 0.4 * keys.uniform(cfg.seed, "ode-clean-noise", step, sample)
        noise = keys.randn(x_plain.shape[1:], cfg.seed, "ode-clean-noise", step, sample)
        expected = schedule.add_noise(x_plain[row][:, clean[row]], noise[:, clean[row]], level)
        torch.testing.assert_close(x_noisy[row][:, clean[row]], expected)
        assert 0 < level < 0.4 and not torch.allclose(x_noisy[row][:, clean[row]], x_plain[row][:, clean[row]])
    assert torch.equal(noisy.inputs(step, idx, latents, text)[0], x_noisy)
    run_stage(cfg)
    log = [json.loads(x) for x in (tmp_path / "noisy/log.jsonl").read_text().splitlines()]
    assert len(log) == 2 and all(torch.isfinite(torch.tensor(r["loss"])) for r in log)
    with pytest.raises(ValueError, match="clean_context_noise"):
        ode_stage_and_batch(tmp_path, "typo", clean_context_noise=1.0)


@pytest.mark.parametrize("method,fkl_attention", [("self_forcing", None), ("causvid", None), ("hiar", "causal")])
def test_dmd_methods_run(tmp_path, method, fkl_attention):
    root = prepared()
    extra = {"fkl": {"weight": 0.1, "trajectories": str(root / "traj"), "attention": fkl_attention}} if fkl_attention else {}
    cfg = stage_config("dmd", dmd_config(root, tmp_path / method, method=method, steps=3, **extra))
    run_stage(cfg)
    log = [json.loads(x) for x in (tmp_path / method / "log.jsonl").read_text().splitlines()]
    assert "dmd_loss" in log[0] and "critic_loss" in log[1] and "dmd_loss" not in log[1]  # 1 generator : 2 critic
    assert ("fkl_loss" in log[0]) == (method == "hiar")
    start, ema = weights(root / "teacher/model.safetensors"), weights(tmp_path / method / "model.safetensors")
    assert any(not torch.equal(start[k], ema[k]) for k in start)
    assert (tmp_path / method / "critic.safetensors").is_file()


def test_dmd_trains_only_the_generator_parameters_it_names(tmp_path):
    root = prepared()
    cfg = stage_config("dmd", dmd_config(root, tmp_path / "head", steps=3, checkpoint_every=3,
                                         optimizer={"lr": 1e-3, "params": ["head"]}))
    run_stage(cfg)
    start = weights(root / "teacher/model.safetensors")
    raw = weights(tmp_path / "head/checkpoints/step-0000003/generator.safetensors")
    critic = weights(tmp_path / "head/critic.safetensors")
    moved = {k for k in start if not torch.equal(start[k], raw[k])}
    assert moved and all(k.startswith("head.") for k in moved)  # the head moved, nothing else
    assert any(not k.startswith("head.") and not torch.equal(start[k], critic[k]) for k in start)  # the critic: all
    with pytest.raises(ValueError, match=r"generator: optimizer.params names 'heads', which is no parameter"):
        run_stage(stage_config("dmd", dmd_config(root, tmp_path / "typo", optimizer={"lr": 1e-3, "params": ["heads"]})))


@pytest.mark.parametrize("last_step_only", [False, True])
def test_dmd_rollouts_exit_at_the_drawn_step_or_always_the_last(tmp_path, monkeypatch, last_step_only):
    from hiar.training.rollout import draw_exit_step
    from hiar.training.stages import dmd

    exits = []

    def spy(*args, exit_step, **kw):
        exits.append(exit_step)
        return real(*args, exit_step=exit_step, **kw)

    real = dmd.self_rollout
    monkeypatch.setattr(dmd, "self_rollout", spy)
    cfg = stage_config("dmd", dmd_config(prepared(), tmp_path / "run", steps=3, last_step_only=last_step_only))
    run_stage(cfg)
    S = len(cfg.student.timesteps)
    # 1 generator : 2 critic updates: steps 0 and 2 update the generator, then the critic; step 1 the critic
    purposes = [(0, "generator"), (0, "critic"), (1, "critic"), (2, "generator"), (2, "critic")]
    drawn = [draw_exit_step(cfg.seed, s, S, purpose) for s, purpose in purposes]
    assert exits == ([S] * 5 if last_step_only else drawn)
    assert last_step_only or set(drawn) != {S}  # the keyed draws are not all the last step here


def test_cli_train_with_overrides(tmp_path, capsys):
    config = tmp_path / "teacher.yaml"
    config.write_text(yaml.safe_dump({"stage": "teacher", "output_dir": str(tmp_path / "cli"), "model": TINY,
                                      "data": {"num_frames": 6, "shapes": {"height": 8, "width": 8}},
                                      "batch_size": 1, "steps": 5, "progress": False, "tensorboard": False,
                                      "log_every": 1}))
    assert main(["train", str(config), "--set", "steps=2", "--set", "optimizer.lr=0.001"]) == 0
    assert "teacher finished at step 2/2" in capsys.readouterr().out
    assert yaml.safe_load((tmp_path / "cli/config.yaml").read_text())["optimizer"]["lr"] == 0.001
    assert main(["train", str(config), "--set", "stepz=2"]) == 2
    assert "stepz" in capsys.readouterr().err
    assert main(["train", str(config), "--set", "steps=3", "--overwrite"]) == 0
    log = [json.loads(x) for x in (tmp_path / "cli/log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3]  # started over
    assert main(["train", str(config), "--set", "steps=5", "--set", "max_seconds=0"]) == 0
    assert "teacher stopped by max_seconds at step 4/5" in capsys.readouterr().out


def test_the_shapes_recipe_chains_its_stages():
    recipe = {p.stem: load_stage_config(p) for p in sorted((ROOT / "configs/shapes").glob("*.yaml"))}
    assert set(recipe) == {"teacher_short", "teacher", "trajectories", "ode_init", "diffusion_forcing",
                           "dmd_self_forcing", "dmd_causvid", "dmd_hiar"}
    out = {name: cfg.output_dir for name, cfg in recipe.items()}
    assert recipe["teacher_short"].model.preset == "toy" and recipe["teacher_short"].model.checkpoint is None
    assert recipe["teacher"].model.checkpoint == f"{out['teacher_short']}/model.safetensors"
    assert recipe["teacher"].data.num_frames == 21
    assert recipe["trajectories"].model.checkpoint == f"{out['teacher']}/model.safetensors"
    assert recipe["ode_init"].trajectories == out["trajectories"]
    assert recipe["ode_init"].model.checkpoint == f"{out['teacher']}/model.safetensors"
    assert recipe["diffusion_forcing"].model.checkpoint == f"{out['ode_init']}/model.safetensors"
    for name in ("dmd_self_forcing", "dmd_causvid", "dmd_hiar"):
        assert recipe[name].model.checkpoint == f"{out['ode_init']}/model.safetensors"  # diffusion forcing is optional
        assert recipe[name].teacher.checkpoint == f"{out['teacher']}/model.safetensors"
        assert recipe[name].method == name[4:]
    assert recipe["dmd_hiar"].fkl.weight == 0.1 and recipe["dmd_hiar"].fkl.trajectories == out["trajectories"]
    assert recipe["dmd_hiar"].student.levels.tolist() == recipe["trajectories"].student.levels.tolist()
    wan = load_stage_config(ROOT / "configs/wan/dmd_hiar.yaml")
    assert wan.method == "hiar" and wan.data.kind == "prompts" and wan.fkl.weight == 0.1
    assert wan.parallel.strategy == "fsdp" and wan.parallel.param_dtype == "bfloat16" and wan.teacher.gradient_checkpointing
    assert wan.negative_prompt.startswith("色调艳丽，过曝，静态") and wan.negative_prompt.endswith("倒着走")


def test_recipe_teacher_configs_run_with_small_overrides(tmp_path):
    over = {"steps": 1, "batch_size": 1, "data.num_frames": 3, "progress": False, "tensorboard": False}
    summary = run_stage(load_stage_config(ROOT / "configs/shapes/teacher_short.yaml", {**over, "output_dir": str(tmp_path / "s")}))
    assert summary["end_step"] == 1 and (tmp_path / "s/model.safetensors").is_file()
    phase2 = {**over, "output_dir": str(tmp_path / "t"), "model.checkpoint": str(tmp_path / "s/model.safetensors")}
    summary = run_stage(load_stage_config(ROOT / "configs/shapes/teacher.yaml", phase2))
    assert summary["end_step"] == 1 and (tmp_path / "t/model.safetensors").is_file()


NEGATIVE = "a slow gray square"  # shapes-world words (its toy encoder refuses others)


def shapes_encoding(prompt: str, batch: int) -> torch.Tensor:
    """``[batch, L, D]``: the shapes encoder's states of ``prompt`` at the TINY models' text size."""
    from hiar.model import get_config
    from hiar.world.shapes import ShapesTextEncoder

    mc = get_config(TINY["preset"], **TINY["overrides"])
    return ShapesTextEncoder(dim=mc.text_dim, max_len=mc.text_len).encode([prompt]).expand(batch, -1, -1)


def spy_guidance(monkeypatch, module) -> list[torch.Tensor]:
    """Record the unconditional text that ``module`` passes to ``guided_velocity``."""
    seen = []
    real = module.guided_velocity

    def spy(model, x, sigma, cond, uncond, scale, *args, **kw):
        seen.append(uncond.detach().cpu().clone())
        return real(model, x, sigma, cond, uncond, scale, *args, **kw)

    monkeypatch.setattr(module, "guided_velocity", spy)
    return seen


@pytest.mark.parametrize("negative", [NEGATIVE, None])
def test_dmd_teacher_gets_the_negative_prompt_or_the_null_prompt(tmp_path, monkeypatch, negative):
    from hiar.training.stages import dmd
    from hiar.training.trainer import Trainer

    cfg = stage_config("dmd", common(tmp_path, method="self_forcing", model=TINY, teacher=TINY, steps=1,
                                     negative_prompt=negative))
    stage = Trainer(cfg, dmd.DmdStage).stage
    stage.setup()
    seen = spy_guidance(monkeypatch, dmd)
    stage.generator_step(0)
    assert len(seen) == 1
    expected = shapes_encoding(negative, 2) if negative else torch.zeros_like(seen[0])
    assert torch.equal(seen[0], expected) and (negative is None) == (not seen[0].any())


def test_trajectories_use_the_negative_prompt_and_trajectory_data_refuses_one(tmp_path, monkeypatch):
    from hiar.training.configs import DataSection
    from hiar.training.data import make_source
    from hiar.training.stages import trajectories

    seen = spy_guidance(monkeypatch, trajectories)
    run_stage(stage_config("trajectories", common(tmp_path / "traj", model=TINY, num_samples=3, samples_per_shard=3,
                                                  ode_steps=2, negative_prompt=NEGATIVE)))
    assert seen and all(torch.equal(u, shapes_encoding(NEGATIVE, len(u))) for u in seen)
    assert {len(u) for u in seen} == {2, 1}  # batch_size 2: the last chunk takes one row of the expansion
    assert json.loads((tmp_path / "traj/manifest.json").read_text())["info"]["negative_prompt"] == NEGATIVE
    data = {"kind": "trajectories", "trajectories": str(tmp_path / "traj"), "num_frames": 6}
    stored = make_source(DataSection(**data), text_dim=0, text_len=0)  # text sizes come from the folder
    assert torch.equal(stored.unconditional_text(2), torch.zeros(2, *stored.batch([0])[1].shape[1:]))
    cfg = stage_config("dmd", common(tmp_path / "dmd", method="causvid", model=TINY, teacher=TINY, data=data,
                                     negative_prompt=NEGATIVE))
    with pytest.raises(ValueError, match="negative_prompt.*data.kind shapes or prompts") as err:
        run_stage(cfg)
    assert "\n" not in str(err.value)


def test_a_negative_prompt_the_encoder_refuses_names_the_setting(tmp_path):
    cfg = stage_config("dmd", common(tmp_path, method="self_forcing", model=TINY, teacher=TINY,
                                     negative_prompt="blurry, low quality"))
    with pytest.raises(ValueError, match=r"negative_prompt: unknown words 'blurry'"):
        run_stage(cfg)


def test_shapes_batch_is_its_items_clips_and_prompts():
    from hiar.training.configs import DataSection
    from hiar.training.data import ShapesSource
    from hiar.world.shapes import ShapesDataset

    source = ShapesSource(DataSection(num_frames=3, seed=5), text_dim=64, text_len=16)
    idx = [7, 3, 12]
    x, text, prompts = source.batch(idx)
    ds = ShapesDataset(num_frames=3, seed=5)
    assert prompts == [ds.clip(i)[1] for i in idx] == [source.prompt(i) for i in idx]
    assert torch.equal(x, torch.stack([ds.clip(i)[0] for i in idx]))
    assert torch.equal(text, source.text(prompts))
    none, text_only, same = source.batch(idx, clips=False)
    assert none is None and same == prompts and torch.equal(text_only, text)
