"""Pipelined hierarchical inference over torch.distributed: stage j on rank j.

Rank j owns step j's KV cache and runs cells (0, j), (1, j), ... in block order. It receives
block n at sigma_j from rank j - 1 (rank 0 draws it from the noise bank), runs the cell (fused
with the context write of block n - 1), and sends block n at sigma_{j+1} on to rank j + 1; the
last rank holds the finished blocks. At anti-diagonal d, rank j works on block d - j, so S ranks
keep S cells in flight. The noise bank is keyed by (seed, block, step), so the output is the
single-process run's, bit for bit on the same hardware.

Launch with ``torchrun --nproc-per-node S your_script.py`` (calling :func:`pipeline_stream`), or
let :class:`SpawnedPipeline` start the ranks itself (what ``hiar generate --pipeline`` does): the last
rank sends each block to the launching process as soon as it is final, so the caller can write it at
once and a stopped or failed run keeps every finished block. A rank that fails takes the others
down: the launcher terminates them and raises :class:`PipelineError` naming the first rank that
failed, and every receive has a timeout so no rank waits forever on a dead peer.
"""

from __future__ import annotations

import datetime
import io
import os
import queue
import signal
import socket
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.distributed as dist

from hiar.errors import UserError, one_line
from hiar.model import TextContext, WanModel
from hiar.sampling import GridSampler, Order, PromptSchedule, SamplerConfig, check_pipelinable


class PipelineError(UserError, RuntimeError):
    """A rank of the pipeline failed; the message names the rank and its error."""


def _check(cfg: SamplerConfig, world: int) -> None:
    check_pipelinable(cfg.context, cfg.num_steps)  # e.g. CLEAN: every step of block n needs block n-1 finished
    if world != cfg.num_steps:
        raise ValueError(f"pipelined inference runs one stage per rank: {cfg.num_steps} steps need {cfg.num_steps} ranks, got {world}")


def pipeline_stream(
    model: WanModel,
    config: SamplerConfig,
    text: torch.Tensor | TextContext | list[torch.Tensor | TextContext],
    *,
    seeds: list[int],
    latent_shape: tuple[int, int, int],
    num_blocks: int,
    group=None,
    initial_latents: torch.Tensor | None = None,
    prompts: PromptSchedule | None = None,
) -> Iterator[tuple[int, torch.Tensor]]:
    """Run this rank's stage; yields (n, x0 block) on the last rank, nothing elsewhere.

    Needs an initialised process group whose size is the number of steps. ``initial_latents``:
    given frames, written by every rank into its own stage (as :class:`GridSampler` does).
    ``prompts``: a prompt schedule (``text`` one per prompt); each rank re-caches its own stage.
    """
    rank, world = dist.get_rank(group), dist.get_world_size(group)
    _check(config, world)
    # One process per stage: the sampler below only ever touches stage `rank`.
    sampler = GridSampler(model, replace(config, order=Order.DIAGONAL, batched=False), text, seeds=seeds,
                          latent_shape=latent_shape, initial_latents=initial_latents, prompts=prompts)
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
    text: torch.Tensor | list[torch.Tensor]  # one per prompt of ``prompts``
    seeds: list[int]
    latent_shape: tuple[int, int, int]
    num_blocks: int
    threads_per_rank: int = 1
    timeout_s: float = 300.0
    initial_latents: torch.Tensor | None = None  # given frames (whole blocks), as GridSampler takes them
    prompts: PromptSchedule | None = None  # prompt switching, as GridSampler takes it


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, job: PipelineJob, port: int, out_dir: str, blocks: "queue.Queue") -> None:
    # Ctrl-C reaches the whole process group: the launcher decides, and terminates the ranks itself.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
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
        text = [t.to(model.device) for t in job.text] if isinstance(job.text, (list, tuple)) else job.text.to(model.device)
        for n, block in pipeline_stream(model, job.config, text, seeds=job.seeds,
                                        latent_shape=job.latent_shape, num_blocks=job.num_blocks,
                                        initial_latents=job.initial_latents, prompts=job.prompts):
            buf = io.BytesIO()
            torch.save(block.cpu(), buf)
            blocks.put((n, buf.getvalue(), time.perf_counter() - t0))
        if rank == world - 1:
            blocks.put(None)  # the last block was sent
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


class SpawnedPipeline:
    """Start one process per step and yield ``(n, x0 block)`` in the launching process as each is final.

    >>> with SpawnedPipeline(job) as run:
    ...     for n, block in run: ...    # [B, C, k, h, w], as soon as the last rank has it
    >>> run.block_done_s                 # when each block was final, from the ranks' start barrier

    Leaving the ``with`` block or the loop early (a ``break``, Ctrl-C, an error in the caller)
    terminates the ranks at once. A rank that fails ends the loop with :class:`PipelineError`
    naming it; the blocks yielded before stay the caller's.
    """

    def __init__(self, job: PipelineJob, poll_s: float = 0.1):
        _check(job.config, job.config.num_steps)
        self.job, self.poll_s = job, poll_s
        self.block_done_s: list[float] = []
        self._context = None

    def __enter__(self) -> "SpawnedPipeline":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Terminate the ranks that still run."""
        context, self._context = self._context, None
        if context is not None:
            _stop(context)

    def __iter__(self) -> Iterator[tuple[int, torch.Tensor]]:
        import torch.multiprocessing as mp

        world = self.job.config.num_steps
        with tempfile.TemporaryDirectory(prefix="hiar-pipeline-") as out_dir:
            blocks = mp.get_context("spawn").Queue()
            self._context = context = mp.start_processes(
                _worker, args=(world, self.job, _free_port(), out_dir, blocks), nprocs=world, join=False,
                start_method="spawn")
            try:
                while (item := self._next(blocks, context, out_dir)) is not None:
                    n, data, done_s = item
                    self.block_done_s.append(done_s)
                    yield n, torch.load(io.BytesIO(data), weights_only=True)
                while not self._join(context, out_dir, timeout=self.poll_s):
                    pass
            finally:
                self.close()

    def _next(self, blocks, context, out_dir):
        """The next message of the last rank; raises :class:`PipelineError` as soon as a rank fails."""
        while True:
            try:
                return blocks.get(timeout=self.poll_s)
            except queue.Empty:
                if self._join(context, out_dir, timeout=0):  # every rank is done, yet no end mark came
                    try:
                        return blocks.get(timeout=5)
                    except queue.Empty:
                        raise PipelineError("pipelined inference: the ranks exited without sending the video") from None

    @staticmethod
    def _join(context, out_dir: str, timeout: float) -> bool:
        try:
            return context.join(timeout)
        except Exception as err:  # ProcessRaisedException / ProcessExitedException: the others were terminated
            raise _first_failure(out_dir, err) from None


def _first_failure(out_dir: str, err: Exception) -> PipelineError:
    """The first rank to fail is the cause; the others then lost their peer."""
    errors = sorted(Path(out_dir).glob("error-rank*.txt"), key=lambda p: p.stat().st_mtime_ns)
    detail = errors[0].read_text().strip().splitlines()[-1] if errors else one_line(str(err).strip().splitlines()[-1])
    who = errors[0].stem.replace("error-", "") if errors else "a rank"
    return PipelineError(f"pipelined inference failed on {who}: {detail}")


def _stop(context) -> None:
    """Terminate ranks that still run (the loop was left early) and reap them."""
    for proc in context.processes:
        if proc.is_alive():
            proc.terminate()
    for proc in context.processes:
        proc.join(10)
        if proc.is_alive():
            proc.kill()
            proc.join()


def spawn_pipeline(job: PipelineJob) -> torch.Tensor:
    """Start one process per step, run the pipeline, return the video ``[B, C, F, H, W]``."""
    return spawn_pipeline_timed(job).video


def spawn_pipeline_timed(job: PipelineJob) -> PipelineResult:
    """:func:`spawn_pipeline`, also returning when each block was done (timed after start-up)."""
    with SpawnedPipeline(job) as run:
        video = torch.cat([block for _, block in run], dim=2)
    return PipelineResult(video, run.block_done_s)
