"""Teacher ODE trajectories: checkpoints exactly at the student's levels; shards; resume; level check."""

from __future__ import annotations

import shutil

import pytest
import torch

from hiar import schedule
from hiar.training import keys, run_stage, stage_config
from hiar.training.trajectories import TrajectoryDataset, solve_ode
from tests.training_helpers import common, prepared

LEVELS = schedule.student_levels()


def test_checkpoints_land_exactly_on_the_student_levels():
    grid = schedule.uniform_levels(50, include=LEVELS)
    assert all(float(s) in grid.tolist() for s in LEVELS)
    x0 = torch.randn(2, 3, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    noise = torch.randn(2, 3, 3, 4, 4, generator=torch.Generator().manual_seed(1))
    # a teacher whose velocity is the true straight-line one: Euler is exact on any grid
    states, taken = solve_ode(lambda x, s: noise - x0, noise, grid, LEVELS)
    assert taken == LEVELS.tolist()  # bit-exact levels, not nearest grid points
    assert states.shape == (2, len(LEVELS), 3, 3, 4, 4)
    for i, s in enumerate(LEVELS):
        assert torch.allclose(states[:, i], schedule.add_noise(x0, noise, float(s)), atol=1e-5)
    assert torch.equal(states[:, 0], noise)


def test_levels_off_the_grid_are_refused():
    plain = schedule.uniform_levels(7)  # the student's levels are not on a 7-step grid
    with pytest.raises(ValueError, match="not points of the ODE grid"):
        solve_ode(lambda x, s: x, torch.zeros(1), plain, LEVELS)


def test_stage_shards_hold_the_student_levels_and_refuse_another_schedule():
    root = prepared()
    ds = TrajectoryDataset(root / "traj", levels=LEVELS)
    assert len(ds) == 4 and ds.sample_shape == (3, 6, 8, 8)
    assert torch.equal(ds.levels, LEVELS)
    item = ds[3]
    assert item["latents"].shape == (len(LEVELS), 3, 6, 8, 8)
    assert torch.equal(item["latents"][0], keys.randn((3, 6, 8, 8), 0, "trajectory-noise", 3))  # keyed start noise
    assert item["text"].shape == (16, 16) and item["prompt"]
    with pytest.raises(ValueError, match="made for levels"):
        TrajectoryDataset(root / "traj", levels=schedule.student_levels(shift=3.0))


def test_trajectories_resume_skips_finished_shards(tmp_path, capsys):
    root = prepared()
    folder = tmp_path / "traj"
    shutil.copytree(root / "traj", folder)
    (folder / "manifest.json").unlink()
    before = (folder / "shard-00000.safetensors").stat().st_mtime_ns
    original = (folder / "shard-00001.safetensors").read_bytes()
    (folder / "shard-00001.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="manifest"):
        TrajectoryDataset(folder)
    cfg = stage_config("trajectories", common(folder, model={"checkpoint": str(root / "teacher/model.safetensors")},
                                              num_samples=4, samples_per_shard=2, ode_steps=8))
    run_stage(cfg)
    assert (folder / "shard-00000.safetensors").stat().st_mtime_ns == before  # kept
    # the kept shard counts as done before the run (the progress bar starts at 1/2, its rate from the new one)
    assert "resumed: 1 of 2 steps' outputs exist and are kept" in capsys.readouterr().err
    a = TrajectoryDataset(folder)
    b = TrajectoryDataset(root / "traj")
    for i in range(4):  # the regenerated shard holds the same numbers
        assert torch.equal(a[i]["latents"], b[i]["latents"])
    assert len(original) > 0
