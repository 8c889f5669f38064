"""Shared, cached set-ups of the training tests: tiny configs, and one small teacher + trajectory set
made once per test process (module-level cache: several test modules reuse it)."""

from __future__ import annotations

import atexit
import shutil
import tempfile
from pathlib import Path

import torch

TINY = {"preset": "tiny", "overrides": {"in_dim": 3, "out_dim": 3, "text_len": 16}}
DATA = {"num_frames": 6, "shapes": {"height": 8, "width": 8}}


def common(output_dir, **kw) -> dict:
    base = dict(output_dir=str(output_dir), data=DATA, batch_size=2, progress=False, log_every=1, tensorboard=False)
    base.update(kw)
    return base


_CACHE: dict[str, Path] = {}


def prepared() -> Path:
    """A folder with ``teacher/model.safetensors`` (2 steps) and ``traj/`` (4 trajectories, 8 ODE steps)."""
    if "root" in _CACHE:
        return _CACHE["root"]
    from hiar.training import run_stage, stage_config

    root = Path(tempfile.mkdtemp(prefix="hiar-train-test-"))
    atexit.register(shutil.rmtree, root, True)
    run_stage(stage_config("teacher", common(root / "teacher", model=TINY, steps=2, optimizer={"lr": 1e-3})))
    run_stage(stage_config("trajectories", common(root / "traj", model={"checkpoint": str(root / "teacher/model.safetensors")},
                                                  num_samples=4, samples_per_shard=2, ode_steps=8)))
    _CACHE["root"] = root
    return root


def dmd_config(root: Path, out, method="hiar", **kw) -> dict:
    teacher = {"checkpoint": str(root / "teacher/model.safetensors")}
    cfg = common(out, method=method, model=teacher, teacher=teacher, steps=2, critic_updates_per_generator=2,
                 ema_decay=0.5, optimizer={"lr": 1e-3}, critic_optimizer={"lr": 1e-3})
    if method == "hiar":
        cfg["fkl"] = {"weight": 0.1, "trajectories": str(root / "traj")}
    cfg.update(kw)
    return cfg


def weights(path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ddp_rank(rank: int, world: int, port: int, runs: list[tuple[str, dict]]) -> None:
    """One gloo rank of a data-parallel run (spawned by torch.multiprocessing)."""
    import os

    import torch.distributed as dist

    from hiar.training import run_stage, stage_config

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        for stage, cfg in runs:
            run_stage(stage_config(stage, cfg))
        settle_rank()
    finally:
        dist.destroy_process_group()


def settle_rank() -> None:
    """Before a spawned gloo rank destroys its process group: wait for the other rank, then free this
    one's sharded models. FSDP modules sit in reference cycles, so without the collect they die at
    interpreter exit, after the group; about 1 run in 14 of the FSDP policy test then aborted there
    ("terminate called without an active exception"), 0 in 80 with both."""
    import gc

    import torch.distributed as dist

    dist.barrier()
    gc.collect()
