"""Sharded data parallelism (parallel.strategy: fsdp, FSDP2) on 2 gloo CPU processes.

2 ranks with batch b each take the same steps as 1 plain process with batch 2b; a stopped run resumes
from its sharded checkpoint to the same weights as a straight run; a sharded step folder reads back as
a whole model; the bfloat16 policy is what the blocks compute with.
"""

from __future__ import annotations

import copy
import os

import pytest
import torch
import torch.multiprocessing as mp

from hiar.training import run_stage, stage_config
from tests.training_helpers import TINY, common, ddp_rank, dmd_config, free_port, prepared, settle_rank, weights

FP32_FSDP = {"strategy": "fsdp", "param_dtype": "float32"}
EXPORTS = ("model.safetensors", "model_raw.safetensors", "critic.safetensors")


def assert_close(a, b, atol=1e-5):
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.allclose(wa[k], wb[k], atol=atol, rtol=0), f"{a}: {k} max diff {(wa[k] - wb[k]).abs().max()}"


def spawn(runs) -> None:
    mp.spawn(ddp_rank, args=(2, free_port(), runs), nprocs=2, join=True)


def test_two_fsdp_ranks_with_batch_b_take_the_steps_of_one_process_with_batch_2b(tmp_path):
    root = prepared()
    teacher = lambda out, batch, **kw: common(out, model=TINY, steps=3, batch_size=batch, optimizer={"lr": 1e-3},
                                              prompt_dropout=0.5, **kw)
    # AdamW turns the last-bit differences of a split batch's gradients into lr-sized weight differences
    # (at lr 1e-3 plain DDP is 2e-5 off after 3 DMD steps): lr 1e-4 keeps them well under 1e-5
    dmd = lambda out, batch, **kw: dmd_config(root, out, batch_size=batch, steps=3, optimizer={"lr": 1e-4},
                                              critic_optimizer={"lr": 1e-4}, **kw)
    run_stage(stage_config("teacher", teacher(tmp_path / "single/teacher", 2)))
    run_stage(stage_config("dmd", dmd(tmp_path / "single/dmd", 2)))
    spawn([("teacher", teacher(tmp_path / "fsdp/teacher", 1, parallel=FP32_FSDP)),
           ("dmd", dmd(tmp_path / "fsdp/dmd", 1, parallel=FP32_FSDP))])
    assert_close(tmp_path / "single/teacher/model.safetensors", tmp_path / "fsdp/teacher/model.safetensors")
    for name in EXPORTS:
        assert_close(tmp_path / "single/dmd" / name, tmp_path / "fsdp/dmd" / name)
    start, end = weights(root / "teacher/model.safetensors"), weights(tmp_path / "fsdp/dmd/model_raw.safetensors")
    assert any(not torch.equal(start[k], end[k]) for k in start)  # the processes did train


def test_a_stopped_fsdp_run_resumes_to_the_weights_of_a_straight_run(tmp_path):
    import shutil

    from hiar.checkpoint import DCP_INDEX, load_model
    from hiar.training import runfolder

    root = prepared()
    cfg = dmd_config(root, tmp_path / "straight", batch_size=1, steps=4, checkpoint_every=2, keep_checkpoints=3,
                     parallel=FP32_FSDP)
    spawn([("dmd", cfg)])
    # a run stopped right after its step-2 checkpoint: the straight run's folder as it was then
    stopped = tmp_path / "stopped"
    shutil.copytree(tmp_path / "straight", stopped)
    shutil.rmtree(stopped / "checkpoints/step-0000004")
    (stopped / "checkpoints/latest").write_text("step-0000002\n")
    for name in EXPORTS:
        (stopped / name).unlink()
    spawn([("dmd", {**cfg, "output_dir": str(stopped)})])
    for name in EXPORTS:
        assert_close(tmp_path / "straight" / name, stopped / name, atol=0)
    # it resumed at step 2: its log keeps the first run's records of steps 1-2 (their wall times)
    straight_log, resumed_log = ((p / "log.jsonl").read_text().splitlines() for p in (tmp_path / "straight", stopped))
    assert resumed_log[:2] == straight_log[:2] and len(resumed_log) == 4

    # the sharded step folder: complete per its marker, one shard file per process, the index
    ckpts = stopped / "checkpoints"
    assert runfolder.read_latest(ckpts)[0] == "step-0000004"
    step4 = ckpts / "step-0000004"
    assert runfolder.marker_problem(step4) == (True, None)
    names = {p.name for p in step4.iterdir()}
    assert {".metadata", "__0_0.distcp", "__1_0.distcp", DCP_INDEX, "state.pt", "complete.json"} <= names
    assert not (stopped / runfolder.LOCK).exists()

    # ... reads back in one process as whole models (what `hiar generate --model STEP_FOLDER` loads)
    for which, export in (("auto", "model.safetensors"), ("generator", "model_raw.safetensors"),
                          ("critic", "critic.safetensors")):
        model = load_model(step4, which=which)
        exported = weights(stopped / export)
        for k, v in model.state_dict().items():
            assert torch.equal(v, exported[k]), f"{which}: {k}"


def check_gradients_are_averaged(rank: int) -> None:
    """Float32 policy: the sharded gradients of each rank's half batch == a whole model's gradients of
    the whole batch (averaged, not summed: pytorch/pytorch#162338 was a gloo AVG that summed, which
    AdamW's scale invariance would hide from the training comparison)."""
    from hiar.model import WanModel, get_config
    from hiar.training.configs import ParallelSection
    from hiar.training.fsdp import mixed_precision, shard

    torch.manual_seed(0)
    whole = WanModel(get_config("tiny"))
    model = shard(copy.deepcopy(whole), mixed_precision(ParallelSection(strategy="fsdp", param_dtype="float32")))
    x, t, text = torch.randn(2, 4, 3, 4, 4), torch.tensor([300.0, 700.0]), torch.randn(2, 8, 16)
    whole(x, t, text).square().mean().backward()
    half = slice(rank, rank + 1)
    model(x[half], t[half], text[half]).square().mean().backward()
    for name, p in model.named_parameters():
        ref = dict(whole.named_parameters())[name].grad
        assert torch.allclose(p.grad.full_tensor(), ref, atol=1e-6, rtol=1e-5), name


def check_bf16_policy() -> None:
    """bfloat16 policy: blocks compute in bf16 (also in the registered encode_text), over float32
    master-weight shards with float32 gradients."""
    from torch.distributed.tensor import DTensor

    from hiar.model import WanModel, get_config
    from hiar.training.configs import ParallelSection
    from hiar.training.fsdp import mixed_precision, shard

    torch.manual_seed(0)
    model = shard(WanModel(get_config("tiny")), mixed_precision(ParallelSection(strategy="fsdp")))
    seen = {}

    def record(block, args):  # runs after FSDP's own pre-forward hook has gathered the weights
        seen["block"] = block.ffn[0].weight.dtype

    model.blocks[0].register_forward_pre_hook(record)
    out = model(torch.randn(1, 4, 3, 4, 4), torch.tensor([500.0]), torch.randn(1, 8, 16))
    out.float().square().mean().backward()
    ctx = model.encode_text(torch.randn(1, 8, 16))  # a registered forward method: gathers, in bf16
    weight = model.blocks[0].ffn[0].weight
    assert seen["block"] == torch.bfloat16 and out.dtype == torch.bfloat16 and ctx.kv[0][0].dtype == torch.bfloat16
    assert isinstance(weight, DTensor) and weight.dtype == torch.float32 and weight.grad.dtype == torch.float32


def policy_rank(rank: int, world: int, port: int) -> None:
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        check_gradients_are_averaged(rank)
        check_bf16_policy()
        settle_rank()
    finally:
        dist.destroy_process_group()


def test_sharded_gradients_are_averaged_and_the_bf16_policy_computes_in_bf16_over_float32_shards():
    mp.spawn(policy_rank, args=(2, free_port()), nprocs=2, join=True)


def test_fsdp_without_torchrun_is_a_one_line_error(tmp_path, monkeypatch):
    from hiar.config import ConfigError

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    cfg = stage_config("teacher", common(tmp_path, model=TINY, steps=1, parallel={"strategy": "fsdp"}))
    with pytest.raises(ConfigError, match=r"^parallel.strategy: fsdp needs a torchrun launch") as err:
        run_stage(cfg)
    assert "\n" not in str(err.value)


def test_fsdp_for_the_trajectories_stage_is_refused(tmp_path):
    with pytest.raises(Exception, match="parallel.strategy: fsdp is for stages that train"):
        stage_config("trajectories", common(tmp_path, model=TINY, parallel={"strategy": "fsdp"}))


def owned_group_rank(rank: int, world: int, port: int, cfg: dict, out) -> None:
    """A rank launched as torchrun launches it (the trainer makes and destroys the process group), which
    records how many of the trainer's FSDP models are still alive when the group is destroyed."""
    import json
    import weakref

    import torch.distributed as dist

    from hiar.training.trainer import Trainer

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    refs, alive = [], []
    add_trainable = Trainer.add_trainable

    def recording(self, name, model, *args, **kwargs):
        refs.append(weakref.ref(model))
        return add_trainable(self, name, model, *args, **kwargs)

    destroy = dist.destroy_process_group

    def counting(*args, **kwargs):
        alive.append(sum(ref() is not None for ref in refs))
        return destroy(*args, **kwargs)

    Trainer.add_trainable, dist.destroy_process_group = recording, counting
    run_stage(stage_config("teacher", cfg))
    (out / f"rank{rank}.json").write_text(json.dumps({"models": len(refs), "alive_at_destroy": alive}))


def test_a_trainer_that_owns_the_group_frees_its_fsdp_models_before_destroying_it(tmp_path):
    """FSDP modules sit in reference cycles: left to interpreter exit they outlive the group, and about
    1 torchrun run in 25 of a finished bfloat16 FSDP training then aborted there."""
    import json

    cfg = common(tmp_path / "run", model=TINY, steps=1, batch_size=1, ema_decay=0.5, parallel={"strategy": "fsdp"})
    mp.spawn(owned_group_rank, args=(2, free_port(), cfg, tmp_path), nprocs=2, join=True)
    for rank in range(2):
        record = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert record == {"models": 1, "alive_at_destroy": [0]}, (rank, record)
