"""The denoising grid: block-first (Self-Forcing) and hierarchical (HiAR) sampling in every valid order.

A video is N blocks of k latent frames; a schedule has S steps with levels
sigma_1 > ... > sigma_S > sigma_{S+1} = 0. **Cell (n, j)** moves block n from sigma_j to
sigma_{j+1}, attending to the earlier blocks at the context level c(j) of the rule:

=========  ======================  =====================================================
rule       context level c(j)      cell (n, j) depends on
=========  ======================  =====================================================
CLEAN      0 (Self-Forcing)        (n, j-1) and (m, S) for m < n
OUTPUT     sigma_{j+1} (HiAR)      (n, j-1) and (m, j) for m < n
INPUT      sigma_j (ablation)      (n, j-1) and (m, j-1) for m < n
=========  ======================  =====================================================

Each context level has its own KV cache (one *stage* per step for OUTPUT / INPUT, one shared
stage for CLEAN). The noise of every cell comes from a :class:`NoiseBank` keyed by
(seed, block, step), so the numbers depend on neither the execution order nor the process count.

Fusion: a context write waits in its stage as *pending* until the next denoise that reads the
same cache, and both go through the model in one call over [context block, new block] with
per-frame timesteps. HiAR then costs N + 1 calls per stage (2N unfused); block-first S per block
(S + 1 unfused). Under INPUT the context of a block is its own input, so the denoise call writes
it: N calls per stage either way. The trailing writes (the last block's context) are kept so the
caches stay complete and generation can go on (:meth:`GridSampler.stream` with ``num_blocks=None``).
"""

from __future__ import annotations

import enum
import itertools
import time
from collections.abc import Iterator
from contextlib import nullcontext
from dataclasses import dataclass, field

import numpy as np
import torch

from hiar import schedule
from hiar.attention import AttentionSpec, KVCache, block_causal
from hiar.model import TextContext, WanModel


class ContextRule(enum.Enum):
    CLEAN = "clean"  # t_c = 0: Self-Forcing, CausVid
    OUTPUT = "output"  # t_c = t_{j+1}: HiAR
    INPUT = "input"  # t_c = t_j: ablation


class Order(enum.Enum):
    BLOCK_FIRST = "block_first"  # n outer, j inner
    STEP_FIRST = "step_first"  # j outer, n inner (Alg. 1)
    DIAGONAL = "diagonal"  # by n + j: streaming and pipelined order


class Transition(enum.Enum):
    EULER = "euler"  # Eq. 3
    RENOISE = "renoise"  # x0_hat re-noised with fresh bank noise (the released code)


class OrderError(ValueError):
    """An execution order that breaks the context rule's dependencies."""


@dataclass(frozen=True)
class SamplerConfig:
    levels: tuple[float, ...] = tuple(schedule.student_levels().tolist())
    context: ContextRule = ContextRule.OUTPUT
    order: Order = Order.DIAGONAL
    transition: Transition = Transition.RENOISE
    block_frames: int = 3
    window: int | None = None  # KV window in frames (counting the current block); None = all
    sink: int = 0
    fused: bool = True
    batched: bool = False  # run the independent cells of one anti-diagonal as one batched call

    def __post_init__(self):
        lv = list(self.levels)
        if len(lv) < 2 or lv[-1] != 0 or any(b >= a for a, b in zip(lv, lv[1:])):
            raise ValueError(f"levels must decrease strictly to a final 0, got {lv}")
        if self.batched and self.order is not Order.DIAGONAL:
            raise ValueError("batched mode runs anti-diagonals: it needs order=diagonal")

    @property
    def num_steps(self) -> int:
        return len(self.levels) - 1

    @property
    def attention(self) -> AttentionSpec:
        return block_causal(self.block_frames, self.window, self.sink)

    def context_level(self, j: int) -> float:
        """Noise level of the context that cell (., j) reads (0-based step j)."""
        if self.context is ContextRule.CLEAN:
            return 0.0
        return self.levels[j + 1] if self.context is ContextRule.OUTPUT else self.levels[j]


# ------------------------------------------------------------------------------------------------
# Orders and their validity


def cells(order: Order, num_blocks: int | None, num_steps: int) -> Iterator[tuple[int, int]]:
    """The cells (block n, step j) in execution order; unbounded when ``num_blocks`` is None."""
    S = num_steps
    if order is Order.BLOCK_FIRST:
        for n in itertools.count() if num_blocks is None else range(num_blocks):
            for j in range(S):
                yield n, j
    elif order is Order.STEP_FIRST:
        if num_blocks is None:
            raise OrderError("step_first finishes no block before the last step: it needs a finite number of blocks")
        for j in range(S):
            for n in range(num_blocks):
                yield n, j
    else:
        for d in itertools.count() if num_blocks is None else range(num_blocks + S - 1):
            for j in range(S):
                n = d - j
                if n >= 0 and (num_blocks is None or n < num_blocks):
                    yield n, j


def dependencies(rule: ContextRule, n: int, j: int, num_steps: int) -> list[tuple[int, int, str]]:
    """Cells that must run before (n, j), each with the reason, per the design's table."""
    deps = [(n, j - 1, f"block {n}'s own previous step")] if j > 0 else []
    if n > 0:
        m = n - 1
        if rule is ContextRule.CLEAN:
            deps.append((m, num_steps - 1, f"block {m} fully denoised (clean context, t_c = 0)"))
        elif rule is ContextRule.OUTPUT:
            deps.append((m, j, f"block {m} at the output level of step {j} (t_c = t_(j+1))"))
        elif j > 0:
            deps.append((m, j - 1, f"block {m} at the input level of step {j} (t_c = t_j)"))
    return deps


def check_order(order: Order, rule: ContextRule, num_steps: int, num_blocks: int | None = None) -> None:
    """Refuse an order that would run a cell before one it depends on."""
    if num_blocks is None and order is Order.STEP_FIRST:
        raise OrderError("step_first finishes no block before the last step: it needs a finite number of blocks")
    # A prefix of S + 2 blocks shows every kind of dependency of an unbounded run.
    n_check = num_steps + 2 if num_blocks is None else num_blocks
    done: set[tuple[int, int]] = set()
    for n, j in cells(order, n_check, num_steps):
        for dep in dependencies(rule, n, j, num_steps):
            if dep[:2] not in done:
                raise OrderError(
                    f"order '{order.value}' is invalid for context rule {rule.name}: cell (block {n}, step {j}) "
                    f"needs {dep[2]}, i.e. cell (block {dep[0]}, step {dep[1]}), which this order runs later"
                    + (" (use order=block_first)" if rule is ContextRule.CLEAN else "")
                )
        done.add((n, j))


# ------------------------------------------------------------------------------------------------
# Noise


class NoiseBank:
    """Gaussian noise keyed by (seed, block, step): the same cell gets the same noise everywhere.

    Each sample of the batch has its own seed, so a batch equals its samples run one by one.
    Noise is drawn on the CPU in float32 (identical on every device) and then moved.
    """

    def __init__(self, seeds: list[int], block_shape: tuple[int, ...], device=None, dtype=torch.float32):
        self.seeds = [int(s) for s in seeds]
        self.block_shape = tuple(block_shape)  # [C, k, H, W]
        self.device, self.dtype = device, dtype

    def __call__(self, block: int, step: int) -> torch.Tensor:
        out = []
        for s in self.seeds:
            key = int(np.random.SeedSequence([s, block, step]).generate_state(1, np.uint64)[0]) & (2**63 - 1)
            gen = torch.Generator().manual_seed(key)
            out.append(torch.randn(self.block_shape, generator=gen, dtype=torch.float32))
        return torch.stack(out).to(device=self.device, dtype=self.dtype)


# ------------------------------------------------------------------------------------------------
# The denoiser and one stage of the grid


class Denoiser:
    """A model with its prompt context, counting calls and query tokens."""

    def __init__(self, model: WanModel, text: torch.Tensor | TextContext, spec: AttentionSpec):
        self.model, self.spec = model, spec
        self.text = text if isinstance(text, TextContext) else model.encode_text(text)
        self.calls = 0
        self.query_tokens = 0

    def __call__(self, x, sigmas, cache, frames, write_frames) -> torch.Tensor:
        cfg = self.model.cfg
        self.calls += 1
        B, _, Fr, H, W = x.shape
        self.query_tokens += B * Fr * (H // cfg.patch_size[1]) * (W // cfg.patch_size[2]) // cfg.patch_size[0]
        t = schedule.timestep(sigmas).to(device=x.device, dtype=torch.float32)
        return self.model(x, t, self.text, attention=self.spec, cache=cache, frames=frames, write_frames=write_frames)


@dataclass
class Pending:
    """A context block waiting to be written into a stage's cache (fused into the next read)."""

    block: int
    x: torch.Tensor
    sigma: float


class Stage:
    """One context level: its KV cache and the block waiting to be written into it."""

    def __init__(self, cache: KVCache):
        self.cache = cache
        self.pending: Pending | None = None
        self.written = 0  # blocks written so far (they arrive in order)


@dataclass
class CellTask:
    """What one cell sends through the model: [pending context block?, block n]."""

    n: int
    j: int
    stage: Stage
    x: torch.Tensor  # [B, C, F, H, W]
    sigmas: torch.Tensor  # [B, F]
    frames: torch.Tensor  # [F]
    write_frames: int
    pending_written: Pending | None


@dataclass
class GridReport:
    """Counts and timings of one run."""

    model_calls: int = 0
    query_tokens: int = 0
    blocks: int = 0
    frames: int = 0
    first_block_latency_s: float | None = None
    block_times_s: list[float] = field(default_factory=list)
    wall_s: float = 0.0
    cache_bytes: int = 0

    @property
    def frames_per_s(self) -> float:
        return self.frames / self.wall_s if self.wall_s else 0.0

    def as_dict(self) -> dict:
        return {
            "model_calls": self.model_calls, "query_tokens": self.query_tokens, "blocks": self.blocks,
            "frames": self.frames, "first_block_latency_s": self.first_block_latency_s,
            "wall_s": self.wall_s, "frames_per_s": self.frames_per_s, "cache_bytes": self.cache_bytes,
        }


# ------------------------------------------------------------------------------------------------
# The sampler


class GridSampler:
    """Runs the grid for one prompt batch.

    >>> sampler = GridSampler(model, SamplerConfig(), text, seeds=[0], latent_shape=(16, 60, 104))
    >>> video = sampler.sample(num_blocks=7)            # [1, 16, 21, 60, 104]
    >>> for n, block in sampler.stream(num_blocks=None): ...   # unbounded, constant memory
    """

    def __init__(
        self,
        model: WanModel,
        config: SamplerConfig,
        text: torch.Tensor | TextContext,
        *,
        seeds: list[int],
        latent_shape: tuple[int, int, int],
        teacher_context: torch.Tensor | None = None,
    ):
        self.model, self.cfg = model, config
        self.denoiser = Denoiser(model, text, config.attention)
        C, H, W = latent_shape
        k = config.block_frames
        self.noise = NoiseBank(seeds, (C, k, H, W), device=model.device, dtype=model.dtype)
        self.batch = len(seeds)
        # CausVid's teacher forcing: clean context comes from data, not from the model.
        self.teacher_context = teacher_context
        if teacher_context is not None and config.context is not ContextRule.CLEAN:
            raise ValueError("teacher-forced context is clean data: it needs context=CLEAN")
        S = config.num_steps
        n_stages = 1 if config.context is ContextRule.CLEAN else S
        self.stages = [Stage(model.new_cache(config.attention)) for _ in range(n_stages)]
        self.report = GridReport()

    # -- pieces shared with the pipelined runner ----------------------------------------------------
    def stage_for(self, j: int) -> Stage:
        return self.stages[0] if self.cfg.context is ContextRule.CLEAN else self.stages[j]

    def initial(self, n: int) -> torch.Tensor:
        """Block n at the first level: pure bank noise (sigma_1 = 1 for every schedule we use)."""
        return self.noise(n, 0)

    def _sigmas(self, sigma: float, frames: int) -> torch.Tensor:
        return torch.full((self.batch, frames), float(sigma), dtype=torch.float64)

    def plan_cell(self, n: int, j: int, x: torch.Tensor, stage: Stage) -> CellTask:
        """Assemble the model input of cell (n, j), fusing the stage's pending write if fused."""
        k = self.cfg.block_frames
        sigma = self.cfg.levels[j]
        if stage.written + (stage.pending is not None) != n:
            raise OrderError(f"cell (block {n}, step {j}) runs with {stage.written} blocks in its cache: blocks must arrive in order")
        if self.cfg.context is ContextRule.INPUT:  # the block's own input is its context: write it now
            return CellTask(n, j, stage, x, self._sigmas(sigma, k), torch.arange(n * k, n * k + k), k, None)
        pend = stage.pending
        if pend is not None and not self.cfg.fused:
            self.flush(stage)
            pend = None
        if pend is None:
            return CellTask(n, j, stage, x, self._sigmas(sigma, k), torch.arange(n * k, n * k + k), 0, None)
        xin = torch.cat([pend.x, x], dim=2)
        sig = torch.cat([self._sigmas(pend.sigma, k), self._sigmas(sigma, k)], dim=1)
        return CellTask(n, j, stage, xin, sig, torch.arange((n - 1) * k, n * k + k), k, pend)

    def flush(self, stage: Stage) -> None:
        """Write the stage's pending context block in a call of its own."""
        pend = stage.pending
        if pend is None:
            return
        k = self.cfg.block_frames
        frames = torch.arange(pend.block * k, pend.block * k + k)
        with torch.no_grad():
            self.denoiser(pend.x, self._sigmas(pend.sigma, k), stage.cache, frames, k)
        stage.pending = None
        stage.written += 1

    def finish_cell(self, task: CellTask, velocity: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Apply the transition; queue the context write. Returns (x at sigma_{j+1}, x0_hat)."""
        n, j, stage = task.n, task.j, task.stage
        if task.pending_written is not None or self.cfg.context is ContextRule.INPUT:
            stage.pending = None
            stage.written += 1
        sigma, sigma_next = self.cfg.levels[j], self.cfg.levels[j + 1]
        x0_hat = schedule.x0_from_velocity(x, velocity, sigma)
        if sigma_next == 0:
            x_next = x0_hat
        elif self.cfg.transition is Transition.EULER:
            x_next = schedule.euler(x, velocity, sigma, sigma_next)
        else:
            x_next = schedule.renoise(x0_hat, self.noise(n, j + 1), sigma_next)
        return x_next, x0_hat

    def queue_context(self, n: int, j: int, x_next: torch.Tensor, x0_hat: torch.Tensor, last: bool) -> None:
        """After cell (n, j): the block's context for later blocks, at the rule's level."""
        rule = self.cfg.context
        if rule is ContextRule.OUTPUT:
            self.stage_for(j).pending = Pending(n, x_next.detach(), self.cfg.levels[j + 1])
        elif rule is ContextRule.CLEAN and last:
            clean = x0_hat.detach()
            if self.teacher_context is not None:
                k = self.cfg.block_frames
                clean = self.teacher_context[:, :, n * k:(n + 1) * k].to(clean)
            self.stage_for(j).pending = Pending(n, clean, 0.0)

    # -- running ----------------------------------------------------------------------------------
    def stream(
        self,
        num_blocks: int | None,
        *,
        exit_step: int | None = None,
        grad: bool = False,
    ) -> Iterator[tuple[int, torch.Tensor]]:
        """Yield (n, x0 of block n) in block order as soon as each block is final.

        ``exit_step`` (1..S) stops every block after that many steps and yields its x0 prediction
        there (the self-rollout of DMD training); with ``grad`` only the cells of that last step
        keep a graph. ``num_blocks=None`` runs forever (break out of the loop to stop).
        """
        cfg = self.cfg
        S = cfg.num_steps
        last_step = S if exit_step is None else exit_step
        if not 1 <= last_step <= S:
            raise ValueError(f"exit_step must be in 1..{S}, got {exit_step}")
        check_order(cfg.order, cfg.context, last_step, num_blocks)
        order = cells(cfg.order, num_blocks, last_step)
        state: dict[int, torch.Tensor] = {}
        ready: dict[int, torch.Tensor] = {}
        next_out = 0
        t0 = time.perf_counter()
        t_last = t0
        for group in self._groups(order):
            tasks = []
            for n, j in group:
                if n not in state:
                    state[n] = self.initial(n)
                tasks.append(self.plan_cell(n, j, state[n], self.stage_for(j)))
            grad_cells = {(t.n, t.j) for t in tasks if grad and t.j == last_step - 1}
            velocities = self.run_cells(tasks, grad_cells)
            for task, v in zip(tasks, velocities):
                n, j = task.n, task.j
                x_next, x0_hat = self.finish_cell(task, v, state[n])
                final = j == last_step - 1
                self.queue_context(n, j, x_next, x0_hat, final)
                if final:
                    ready[n] = x0_hat  # == x_next when the last step is the schedule's last
                    del state[n]
                else:
                    state[n] = x_next
            while next_out in ready:
                now = time.perf_counter()
                if self.report.first_block_latency_s is None:
                    self.report.first_block_latency_s = now - t0
                self.report.block_times_s.append(now - t_last)
                t_last = now
                self._account(t0)
                yield next_out, ready.pop(next_out)
                next_out += 1
        for stage in self.stages:  # trailing writes: keep every cache complete
            if stage.pending is not None:
                self.flush(stage)
        self._account(t0)

    def _account(self, t0: float) -> None:
        r = self.report
        r.model_calls = self.denoiser.calls
        r.query_tokens = self.denoiser.query_tokens
        r.blocks = len(r.block_times_s)
        r.frames = r.blocks * self.cfg.block_frames
        r.wall_s = time.perf_counter() - t0
        r.cache_bytes = sum(s.cache.nbytes() for s in self.stages)

    def _groups(self, order: Iterator[tuple[int, int]]) -> Iterator[list[tuple[int, int]]]:
        """Single cells, or (batched mode) whole anti-diagonals."""
        if not self.cfg.batched:
            for cell in order:
                yield [cell]
            return
        for _, diag in itertools.groupby(order, key=lambda c: c[0] + c[1]):
            yield list(diag)

    def run_cells(self, tasks: list[CellTask], grad_cells: set = frozenset()) -> list[torch.Tensor]:
        """Model calls for a group of cells; returns each cell's velocity for its block."""
        k = self.cfg.block_frames
        if len(tasks) == 1 or not self.cfg.batched:
            out = []
            for t in tasks:
                with torch.enable_grad() if (t.n, t.j) in grad_cells else torch.no_grad():
                    v = self.denoiser(t.x, t.sigmas, t.stage.cache, t.frames, t.write_frames)
                out.append(v[:, :, -k:])
            return out
        # Batched anti-diagonal: cells with the same input length share one call, each with its cache.
        out: list[torch.Tensor | None] = [None] * len(tasks)
        by_len: dict[int, list[int]] = {}
        for i, t in enumerate(tasks):
            by_len.setdefault(t.x.shape[2], []).append(i)
        for idx in by_len.values():
            group = [tasks[i] for i in idx]
            writes = {t.write_frames for t in group}
            if len(writes) != 1:
                raise AssertionError("cells of one length must write alike")
            x = torch.cat([t.x for t in group])
            sig = torch.cat([t.sigmas for t in group])
            frames = torch.stack([t.frames for t in group])
            with torch.enable_grad() if any((t.n, t.j) in grad_cells for t in group) else torch.no_grad():
                v = self.denoiser(x, sig, [t.stage.cache for t in group], frames, writes.pop())
            for i, vi, t in zip(idx, v.split(self.batch), group):
                # a cell batched with a grad cell keeps no graph of its own
                out[i] = vi[:, :, -k:] if (t.n, t.j) in grad_cells else vi[:, :, -k:].detach()
        return out

    def sample(self, num_blocks: int, **kwargs) -> torch.Tensor:
        """All blocks, concatenated along frames: ``[B, C, num_blocks * k, H, W]``."""
        return torch.cat([b for _, b in self.stream(num_blocks, **kwargs)], dim=2)


def sample_video(
    model: WanModel,
    text: torch.Tensor | TextContext,
    *,
    num_blocks: int,
    seeds: list[int],
    latent_shape: tuple[int, int, int],
    config: SamplerConfig = SamplerConfig(),
) -> tuple[torch.Tensor, GridReport]:
    """One-call convenience: sample ``num_blocks`` blocks and return (latents, report)."""
    sampler = GridSampler(model, config, text, seeds=seeds, latent_shape=latent_shape)
    video = sampler.sample(num_blocks)
    return video, sampler.report
