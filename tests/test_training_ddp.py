"""Data parallelism: 2 gloo processes with batch b each == 1 process with batch 2b."""

from __future__ import annotations

import torch
import torch.multiprocessing as mp

from hiar.training import run_stage, stage_config
from tests.training_helpers import TINY, common, ddp_rank, dmd_config, free_port, prepared, weights


def runs(root, out, batch):
    teacher = common(out / "teacher", model=TINY, steps=2, batch_size=batch, optimizer={"lr": 1e-3}, prompt_dropout=0.5)
    dmd = dmd_config(root, out / "dmd", batch_size=batch, steps=2)
    timed = common(out / "timed", model=TINY, steps=3, batch_size=batch, optimizer={"lr": 1e-3}, max_seconds=0)
    return [("teacher", teacher), ("dmd", dmd), ("teacher", timed)]


def assert_close(a, b):
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.allclose(wa[k], wb[k], atol=2e-5, rtol=1e-4), f"{a.name}: {k} max diff {(wa[k] - wb[k]).abs().max()}"


def test_two_gloo_ranks_with_batch_b_equal_one_process_with_batch_2b(tmp_path):
    root = prepared()
    for stage, cfg in runs(root, tmp_path / "single", 2):
        run_stage(stage_config(stage, cfg))
    mp.spawn(ddp_rank, args=(2, free_port(), runs(root, tmp_path / "ddp", 1)), nprocs=2, join=True)
    for name in ("teacher/model.safetensors", "dmd/model.safetensors", "dmd/model_raw.safetensors", "dmd/critic.safetensors",
                 "timed/model.safetensors"):
        assert_close(tmp_path / "single" / name, tmp_path / "ddp" / name)
    # max_seconds: the ranks agree to stop after the same step (else the next all-reduce would hang)
    assert '"event": "time_limit", "step": 1' in (tmp_path / "ddp" / "timed" / "log.jsonl").read_text()
    # and the processes did train: the weights moved away from the starting point
    start, end = weights(root / "teacher/model.safetensors"), weights(tmp_path / "ddp/dmd/model_raw.safetensors")
    assert any(not torch.equal(start[k], end[k]) for k in start)
