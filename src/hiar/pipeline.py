"""Pipelined hierarchical inference over torch.distributed: stage j on rank j.

Rank j owns step j's KV cache and runs cells (0, j), (1, j), ... in block order. It receives
block n at sigma_j from rank j - 1 (rank 0 draws it from the noise bank), runs the cell (fused
with the context write of block n - 1), and sends block n at sigma_{j+1} on to rank j + 1; the
last rank holds the finished blocks. At anti-diagonal d, rank j works on block d - j, so S ranks
keep S cells in flight. The noise bank is keyed by (seed, block, step), so the output is the
single-process run's, bit for bit on the same hardware.

Launch with ``torchrun --nproc-per-node S your_script.py`` (calling :func:`pipeline_stream`), or
let :func:`spawn_pipeline` start the ranks itself (what ``hiar generate --pipeline`` does). A rank
that fails takes the others down: the launcher terminates them and re-raises the first error, and
every receive has a timeout so no rank waits forever on a dead peer.
"""

from __future__ import annotations

import datetime
import json
import os
import socket
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.distributed as dist

from hiar.model import TextContext, WanModel
from hiar.sampling import GridSampler, Order, SamplerConfig, check_pipelinable


class PipelineError(RuntimeError):
    """A rank of the pipeline failed; the message names the rank and its error."""


def _check(cfg: SamplerConfig, world: int) -> None:
    check_pipelinable(cfg.context, cfg.num_steps)  # e.g. CLEAN: every step of block n needs block n-1 finished
    if world != cfg.num_steps:
        raise ValueError(f"pipelined inference runs one stage per rank: {cfg.num_steps} steps need {cfg.num_steps} ranks, got {world}")


def pipeline_stream(
    model: WanModel,
    config: SamplerConfig,
    text: torch.Tensor | TextContext,
    *,
    seeds: list[int],
    latent_shape: tuple[int, int, int],
    num_blocks: int,
    group=None,
    initial_latents: torch.Tensor | None = None,
) -> Iterator[tuple[int, torch.Tensor]]:
    """Run this rank's stage; yields (n, x0 block) on the last rank, nothing elsewhere.

    Needs an initialised process group whose size is the number of steps. ``initial_latents``:
    given frames, written by every rank into its own stage (as :class:`GridSampler` does).
    """
    rank, world = dist.get_rank(group), dist.get_world_size(group)
    _check(config, world)
    # One process per stage: the sampler below only ever touches stage `rank`.
    sampler = GridSampler(model, replace(config, order=Order.DIAGONAL, batched=False), text, seeds=seeds,
                          latent_shape=latent_shape, initial_latents=initial_latents)
    sampler.start(num_blocks)
    j = rank
    C, H, W = latent_shape
    shape = (len(seeds), C, config.block_frames, H, W)
    sends = []
    for n in range(num_blocks):
        if j == 0:
            x = sampler.initial(n)
        else:
            buf = torch.empty(shape, dtype=model.dtype, device=model.device)
            dist.recv(buf, src=j - 1, group=group)
            x = buf
        with torch.no_grad():
            x_next, x0_hat = sampler.step(n, j, x)
        if j < world - 1:
            sends.append(dist.isend(x_next.contiguous(), dst=j + 1, group=group))
            if len(sends) > 2:  # bounded number of in-flight buffers
                sends.pop(0).wait()
        else:
            yield n, x0_hat
    for req in sends:
        req.wait()
    sampler.finish(steps=[j])


@dataclass
class PipelineJob:
    """Everything a spawned rank needs (picklable)."""

    build_model: Callable[[], WanModel]
    config: SamplerConfig
    text: torch.Tensor
    seeds: list[int]
    latent_shape: tuple[int, int, int]
    num_blocks: int
    threads_per_rank: int = 1
    timeout_s: float = 300.0
    initial_latents: torch.Tensor | None = None  # given frames (whole blocks), as GridSampler takes them


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, job: PipelineJob, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(job.threads_per_rank)
    use_cuda = torch.cuda.is_available() and torch.cuda.device_count() >= world
    backend = "nccl" if use_cuda else "gloo"
    if use_cuda:
        torch.cuda.set_device(rank)
    dist.init_process_group(backend, rank=rank, world_size=world, timeout=datetime.timedelta(seconds=job.timeout_s))
    try:
        model = job.build_model()
        if use_cuda:
            model = model.to(f"cuda:{rank}")
        dist.barrier()  # time the pipeline, not process start-up and model loading
        t0 = time.perf_counter()
        blocks, times = [], []
        for n, block in pipeline_stream(model, job.config, job.text.to(model.device), seeds=job.seeds,
                                        latent_shape=job.latent_shape, num_blocks=job.num_blocks,
                                        initial_latents=job.initial_latents):
            blocks.append(block.cpu())
            times.append(time.perf_counter() - t0)
        if blocks:
            torch.save(torch.cat(blocks, dim=2), Path(out_dir) / "video.pt")
            (Path(out_dir) / "times.json").write_text(json.dumps(times))
    except BaseException:
        (Path(out_dir) / f"error-rank{rank}.txt").write_text(traceback.format_exc())
        raise
    finally:
        dist.destroy_process_group()


@dataclass
class PipelineResult:
    video: torch.Tensor  # [B, C, F, H, W]
    block_done_s: list[float]  # when each block was final, from the start barrier

    @property
    def first_block_latency_s(self) -> float:
        return self.block_done_s[0]

    @property
    def wall_s(self) -> float:
        return self.block_done_s[-1]


def spawn_pipeline(job: PipelineJob) -> torch.Tensor:
    """Start one process per step, run the pipeline, return the video ``[B, C, F, H, W]``."""
    return spawn_pipeline_timed(job).video


def spawn_pipeline_timed(job: PipelineJob) -> PipelineResult:
    """:func:`spawn_pipeline`, also returning when each block was done (timed after start-up)."""
    import torch.multiprocessing as mp

    world = job.config.num_steps
    _check(job.config, world)
    with tempfile.TemporaryDirectory(prefix="hiar-pipeline-") as out_dir:
        try:
            mp.start_processes(_worker, args=(world, job, _free_port(), out_dir), nprocs=world, start_method="spawn")
        except Exception as err:  # ProcessRaisedException / ProcessExitedException: others were terminated
            # The first rank to fail is the cause; the others then lose their peer.
            errors = sorted(Path(out_dir).glob("error-rank*.txt"), key=lambda p: p.stat().st_mtime_ns)
            detail = errors[0].read_text().strip().splitlines()[-1] if errors else str(err).strip().splitlines()[-1]
            who = errors[0].stem.replace("error-", "") if errors else "a rank"
            raise PipelineError(f"pipelined inference failed on {who}: {detail}") from None
        video = torch.load(Path(out_dir) / "video.pt", weights_only=True)
        return PipelineResult(video, json.loads((Path(out_dir) / "times.json").read_text()))
