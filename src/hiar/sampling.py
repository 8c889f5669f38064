"""Sampling on the denoising grid: Self-Forcing, HiAR, their hybrids, in every valid order.

The grid's bookkeeping lives in :mod:`hiar.grid` (context rules, orders, dependencies, and the
:class:`~hiar.grid.Planner` that turns cells into model calls); this module runs the calls. A
video is N blocks of k latent frames; a schedule has S steps. **Cell (n, j)** moves block n from
sigma_j to sigma_{j+1}, attending to earlier blocks at the level the context rule gives:

=========  ======================  =====================================================
rule       context level c(j)      cell (n, j) depends on
=========  ======================  =====================================================
CLEAN      0 (Self-Forcing)        (n, j-1) and (m, S) for m < n
OUTPUT     sigma_{j+1} (HiAR)      (n, j-1) and (m, j) for m < n
INPUT      sigma_j (ablation)      (n, j-1) and (m, j-1) for m < n
Hybrid     block-first first K     (the released code's ``hybrid_block0`` and
           blocks / M steps        ``frame_first_steps``; see :class:`~hiar.grid.Hybrid`)
=========  ======================  =====================================================

Each set of steps that reads every block at the same level has its own KV cache (a *stage*: one
per step for OUTPUT / INPUT, one shared for CLEAN). The noise of every cell comes from a
:class:`NoiseBank` keyed by (seed, block, step), so the numbers depend on neither the execution
order nor the process count.

Fusion: a context write waits in its stage as *pending* until the next denoise that reads the
same cache, and both go through the model in one call over [context block, new block] with
per-frame timesteps. HiAR then costs N + 1 calls per stage (2N unfused); block-first S per block
(S + 1 unfused). Under INPUT the context of a block is its own input, so the denoise call writes
it: N calls per stage either way. The trailing writes (the last block's context) are kept so the
caches stay complete and generation can go on (:meth:`GridSampler.stream` with ``num_blocks=None``).

Given frames (image-to-video, video extension: ``initial_latents``) are whole blocks before block
0: they start out pending in every stage, so they ride along with each stage's first call.

Prompt switching (``prompts=PromptSchedule(...)`` with one text per prompt): each call's segments
cross-attend to the prompt the plan gives them (:class:`~hiar.model.FrameText` when a call mixes
prompts), and under ``SwitchPolicy.KV_RECACHE`` a stage's cache is re-run under the new prompt
before the first block under it reads the cache; the report counts these calls and tokens.
"""

from __future__ import annotations

import enum
import itertools
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import torch

from hiar import schedule
from hiar.attention import AttentionSpec, KVCache, block_causal
from hiar.grid import (  # noqa: F401  (re-exported: the grid's vocabulary is the sampler's)
    Call, CellPlan, ContextRule, Ctx, Hybrid, Order, OrderError, Planner, PromptSchedule, Rule, SwitchPolicy, cells,
    check_order, check_pipelinable, dependencies, valid_orders,
)
from hiar.model import FrameText, TextContext, WanModel


class Transition(enum.Enum):
    EULER = "euler"  # Eq. 3
    RENOISE = "renoise"  # x0_hat re-noised with fresh bank noise (the released code)


class InitContext(enum.Enum):
    """How given frames enter the context.

    ``CLEAN``: as clean context (sigma 0) in every stage's cache, what the released code does.
    ``LEVEL``: at each stage's own context level, noised with the noise bank, as the stage sees the
    blocks HiAR generates (under CLEAN rules both are the same).

    The default is ``LEVEL``, measured (``scripts/measure_given_frames.py``, results/given-frames.json):
    continuing 16 held-out real clips with the bundled HiAR student, ``LEVEL`` scores higher on the
    prompt in the first generated segment (semantic 0.63 vs 0.54) and over the continuation (0.61 vs
    0.54, higher in 14 of 16 clips), and halves the jump at the seam (0.25 vs 0.51 mean absolute pixel
    change; the clip's own frame-to-frame change is 0.04): clean context is not what HiAR's stages
    were trained to read.
    """

    CLEAN = "clean"
    LEVEL = "level"


@dataclass(frozen=True)
class SamplerConfig:
    levels: tuple[float, ...] = tuple(schedule.student_levels().tolist())
    context: ContextRule | Hybrid = ContextRule.OUTPUT
    order: Order = Order.DIAGONAL
    transition: Transition = Transition.RENOISE
    block_frames: int = 3
    window: int | None = None  # KV window in frames (counting the current block); None = all
    sink: int = 0
    fused: bool = True
    batched: bool = False  # run the independent cells of one anti-diagonal as one batched call
    init_context: InitContext = InitContext.LEVEL  # given frames: at each stage's level (measured), or clean
    switch: SwitchPolicy = SwitchPolicy.KV_RECACHE  # at a prompt switch: keep the caches, or re-run them

    def __post_init__(self):
        lv = list(self.levels)
        if len(lv) < 2 or lv[-1] != 0 or any(b >= a for a, b in zip(lv, lv[1:])):
            raise ValueError(f"levels must decrease strictly to a final 0, got {lv}")
        if self.batched and self.order is not Order.DIAGONAL:
            raise ValueError("batched mode runs anti-diagonals: it needs order=diagonal")
        if not isinstance(self.context, (ContextRule, Hybrid)):
            raise ValueError(f"context must be a ContextRule or a Hybrid, got {self.context!r}")
        if isinstance(self.context, Hybrid) and self.context.first_steps > self.num_steps:
            raise ValueError(f"hybrid first_steps must be in 0..{self.num_steps}, got {self.context.first_steps}")

    @property
    def num_steps(self) -> int:
        return len(self.levels) - 1

    @property
    def attention(self) -> AttentionSpec:
        return block_causal(self.block_frames, self.window, self.sink)

    def context_level(self, j: int) -> float:
        """Noise level of the context that cell (., j) reads (0-based step j; blocks past a hybrid's first K)."""
        return self.levels[self.context.level(self.context.horizon, j, self.num_steps)]


# ------------------------------------------------------------------------------------------------
# Noise


class NoiseBank:
    """Gaussian noise keyed by (seed, block, step): the same cell gets the same noise everywhere.

    Each sample of the batch has its own seed, so a batch equals its samples run one by one.
    Noise is drawn on the CPU in float32 (identical on every device) and then moved. Given frames
    (negative blocks) draw from a stream of their own.
    """

    def __init__(self, seeds: list[int], block_shape: tuple[int, ...], device=None, dtype=torch.float32):
        self.seeds = [int(s) for s in seeds]
        self.block_shape = tuple(block_shape)  # [C, k, H, W]
        self.device, self.dtype = device, dtype

    def __call__(self, block: int, step: int) -> torch.Tensor:
        out = []
        for s in self.seeds:
            seq = np.random.SeedSequence([s, block, step]) if block >= 0 else \
                np.random.SeedSequence([s, -block, step], spawn_key=(1,))
            key = int(seq.generate_state(1, np.uint64)[0]) & (2**63 - 1)
            gen = torch.Generator().manual_seed(key)
            out.append(torch.randn(self.block_shape, generator=gen, dtype=torch.float32))
        return torch.stack(out).to(device=self.device, dtype=self.dtype)


# ------------------------------------------------------------------------------------------------
# The denoiser


class Denoiser:
    """A model with its prompts' contexts (one per prompt of a schedule), counting calls and query tokens."""

    def __init__(self, model: WanModel, texts: list[torch.Tensor | TextContext], spec: AttentionSpec):
        self.model, self.spec = model, spec
        self.texts = [t if isinstance(t, TextContext) else model.encode_text(t) for t in texts]
        self.calls = 0
        self.query_tokens = 0

    def tokens(self, x: torch.Tensor) -> int:
        cfg = self.model.cfg
        B, _, Fr, H, W = x.shape
        return B * Fr * (H // cfg.patch_size[1]) * (W // cfg.patch_size[2]) // cfg.patch_size[0]

    def _text(self, prompts: torch.Tensor | None) -> TextContext | FrameText:
        """One prompt for the whole call, or text per group and frame (``prompts`` [G, F])."""
        if prompts is None or bool((prompts == prompts.flatten()[0]).all()):
            return self.texts[0 if prompts is None else int(prompts.flatten()[0])]
        return FrameText(self.texts, prompts)

    def __call__(self, x, sigmas, cache, frames, write_frames, prompts: torch.Tensor | None = None) -> torch.Tensor:
        self.calls += 1
        self.query_tokens += self.tokens(x)
        t = schedule.timestep(sigmas).to(device=x.device, dtype=torch.float32)
        return self.model(x, t, self._text(prompts), attention=self.spec, cache=cache, frames=frames,
                          write_frames=write_frames)


@dataclass
class Stage:
    """One KV cache and the steps that read it."""

    cache: KVCache
    steps: list[int]


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
    recache_calls: int = 0  # of model_calls: the calls that started a KV re-cache (one per stage and switch)
    recache_tokens: int = 0  # of query_tokens: the blocks written again by re-caches

    @property
    def frames_per_s(self) -> float:
        return self.frames / self.wall_s if self.wall_s else 0.0

    def as_dict(self) -> dict:
        return {
            "model_calls": self.model_calls, "query_tokens": self.query_tokens, "blocks": self.blocks,
            "frames": self.frames, "first_block_latency_s": self.first_block_latency_s,
            "wall_s": self.wall_s, "frames_per_s": self.frames_per_s, "cache_bytes": self.cache_bytes,
            "recache_calls": self.recache_calls, "recache_tokens": self.recache_tokens,
        }


# ------------------------------------------------------------------------------------------------
# The executor


class GridSampler:
    """Runs the planned calls of the grid for one prompt batch.

    >>> sampler = GridSampler(model, SamplerConfig(), text, seeds=[0], latent_shape=(16, 60, 104))
    >>> video = sampler.sample(num_blocks=7)            # [1, 16, 21, 60, 104]
    >>> for n, block in sampler.stream(num_blocks=None): ...   # unbounded, constant memory

    ``initial_latents`` ``[B or 1, C, G k, H, W]``: given frames (whole blocks) that the video
    continues; they are context only (``sample`` returns the generated blocks, numbered from 0).
    ``teacher_context``: CausVid's teacher forcing, clean data latents as the clean context.
    ``prompts``: a :class:`~hiar.grid.PromptSchedule`; ``text`` is then a list, one per prompt
    (``config.switch`` says what the caches do at a switch). A sampler runs once (its caches hold the run).
    """

    def __init__(
        self,
        model: WanModel,
        config: SamplerConfig,
        text: torch.Tensor | TextContext | list[torch.Tensor | TextContext],
        *,
        seeds: list[int],
        latent_shape: tuple[int, int, int],
        teacher_context: torch.Tensor | None = None,
        initial_latents: torch.Tensor | None = None,
        prompts: PromptSchedule | None = None,
    ):
        self.model, self.cfg = model, config
        self.prompts = PromptSchedule() if prompts is None else prompts
        texts = list(text) if isinstance(text, (list, tuple)) else [text]
        if len(texts) != self.prompts.num_prompts:
            raise ValueError(f"the prompt schedule has {self.prompts.num_prompts} prompts, but {len(texts)} texts were given")
        self.denoiser = Denoiser(model, texts, config.attention)
        C, H, W = latent_shape
        k = config.block_frames
        self.noise = NoiseBank(seeds, (C, k, H, W), device=model.device, dtype=model.dtype)
        self.batch = len(seeds)
        if teacher_context is not None and config.context is not ContextRule.CLEAN:
            raise ValueError("teacher-forced context is clean data: it needs context=CLEAN")
        self.teacher_context = teacher_context
        self.given = None if initial_latents is None else self._check_given(initial_latents, latent_shape)
        self.given_blocks = 0 if self.given is None else self.given.shape[2] // k
        self.planner: Planner | None = None
        self.stages: list[Stage] = []
        self._kept: dict[Ctx, list] = {}  # produced context blocks waiting to be written: [tensor, stages left]
        self._held: list[dict[Ctx, torch.Tensor]] = []  # per stage, the context blocks its cache holds (to re-cache)
        self.report = GridReport()

    def _check_given(self, x: torch.Tensor, latent_shape) -> torch.Tensor:
        k = self.cfg.block_frames
        if x.dim() != 5 or tuple(x.shape[1:2]) + tuple(x.shape[3:]) != tuple(latent_shape) or x.shape[0] not in (1, self.batch):
            raise ValueError(f"initial latents must be [{self.batch} or 1, {latent_shape[0]}, F, {latent_shape[1]}, "
                             f"{latent_shape[2]}], got {tuple(x.shape)}")
        if x.shape[2] == 0 or x.shape[2] % k:
            raise ValueError(f"initial latents must be whole blocks of {k} frames, got {x.shape[2]} "
                             f"(hiar.conditioning pads given frames to whole blocks)")
        return x.expand(self.batch, -1, -1, -1, -1).to(device=self.model.device, dtype=self.model.dtype)

    # -- setting up a run -------------------------------------------------------------------------
    def start(self, num_blocks: int | None, exit_step: int | None = None) -> Planner:
        """Plan the stages of a run and make their caches (``stream`` calls this; so does a pipeline rank)."""
        if self.planner is not None:
            raise RuntimeError("this sampler has run: its caches hold that run (make a new GridSampler)")
        cfg = self.cfg
        self.planner = Planner(cfg.context, cfg.num_steps, last_step=exit_step, given_blocks=self.given_blocks,
                               given_at_levels=cfg.init_context is InitContext.LEVEL, fused=cfg.fused,
                               num_blocks=num_blocks, prompts=self.prompts, switch=cfg.switch, attention=cfg.attention)
        self.stages = [Stage(self.model.new_cache(cfg.attention), st.steps) for st in self.planner.stages]
        self._held = [{} for _ in self.stages]
        return self.planner

    def initial(self, n: int) -> torch.Tensor:
        """Block n at the first level: pure bank noise (sigma_1 = 1 for every schedule we use)."""
        return self.noise(n, 0)

    # -- running calls ----------------------------------------------------------------------------
    def _sigma(self, level: int) -> float:
        return 0.0 if level == self.cfg.num_steps else self.cfg.levels[level]

    def _context(self, c: Ctx) -> torch.Tensor:
        """The tensor of a context block: a kept result, or given frames (noised to their level)."""
        if c.block >= 0:
            return self._kept[c][0]
        k = self.cfg.block_frames
        start = (self.given_blocks + c.block) * k
        x0 = self.given[:, :, start:start + k]
        if c.level == self.cfg.num_steps:
            return x0
        return schedule.renoise(x0, self.noise(c.block, c.level), self.cfg.levels[c.level])

    def _release(self, call: Call) -> None:
        for c in call.writes[call.rerun:]:  # re-run blocks are held ones, not kept results
            if c.block >= 0:
                entry = self._kept[c]
                entry[1] -= 1
                if entry[1] == 0:
                    del self._kept[c]

    def _full(self, sigma: float, frames: int) -> torch.Tensor:
        return torch.full((self.batch, frames), float(sigma), dtype=torch.float64)

    def _inputs(self, call: Call, x: torch.Tensor | None):
        """Model input of a call: ``[writes..., block]``, per-frame sigmas, absolute frames, frames
        written, and the prompt of each frame (what it writes is remembered, for a re-cache)."""
        k = self.cfg.block_frames
        held = self._held[call.stage]
        parts = [held[c] if i < call.rerun else self._context(c) for i, c in enumerate(call.writes)]
        sigmas = [self._full(self._sigma(c.level), k) for c in call.writes]
        blocks = [c.block for c in call.writes]
        if call.cell is not None:
            n, j = call.cell
            parts.append(x)
            sigmas.append(self._full(self.cfg.levels[j], k))
            blocks.append(n)
        # a recache call's blocks need not be contiguous (sink blocks, then the window)
        frames = torch.cat([torch.arange((self.given_blocks + b) * k, (self.given_blocks + b + 1) * k) for b in blocks])
        write = len(call.writes) * k + (k if call.self_write else 0)
        prompts = torch.tensor(call.prompts or (0,) * len(blocks)).repeat_interleave(k)
        self._remember(call, parts)
        return torch.cat(parts, dim=2), torch.cat(sigmas, dim=1), frames, write, prompts

    def _remember(self, call: Call, parts: list[torch.Tensor]) -> None:
        """Under re-caching, keep the tensors of the context blocks written into a stage's cache, so
        a switch can run them again (:meth:`_forget` drops those the cache no longer holds)."""
        if not self.planner.recaches:
            return
        written = list(zip(call.writes, parts))
        if call.self_write:
            n, j = call.cell
            written.append((Ctx(n, j), parts[-1]))
        self._held[call.stage].update((c, t.detach()) for c, t in written)

    def _forget(self) -> None:
        """After a planned group has run: keep only the blocks the planner says each cache holds."""
        for held, st in zip(self._held, self.planner.stages):
            keep = set(st.held)
            for c in [c for c in held if c not in keep]:
                del held[c]

    def _begin(self, call: Call, x: torch.Tensor) -> None:
        """A call that starts a KV re-cache empties its cache first; count what calls run again."""
        if call.recache:
            self.stages[call.stage].cache.reset()
            self.report.recache_calls += 1
        self.report.recache_tokens += self.denoiser.tokens(x) * call.rerun // (x.shape[2] // self.cfg.block_frames)

    def _write_only(self, call: Call) -> None:
        x, sig, frames, write, prompts = self._inputs(call, None)
        self._begin(call, x)
        with torch.no_grad():
            self.denoiser(x, sig, self.stages[call.stage].cache, frames, write, prompts[None])
        self._release(call)

    def _denoise(self, calls: list[Call], xs: list[torch.Tensor], grad_cells: set) -> list[torch.Tensor]:
        """The cells' model calls; returns each cell's velocity for its block."""
        k = self.cfg.block_frames
        inputs = [self._inputs(c, x) for c, x in zip(calls, xs)]
        for c, inp in zip(calls, inputs):
            self._begin(c, inp[0])
        out: list[torch.Tensor | None] = [None] * len(calls)
        if len(calls) == 1 or not self.cfg.batched:
            for i, (c, (x, sig, frames, write, prompts)) in enumerate(zip(calls, inputs)):
                with torch.enable_grad() if c.cell in grad_cells else torch.no_grad():
                    out[i] = self.denoiser(x, sig, self.stages[c.stage].cache, frames, write, prompts[None])[:, :, -k:]
        else:
            # Batched anti-diagonal: cells with the same input length share one call, each with its cache.
            by_len: dict[int, list[int]] = {}
            for i, inp in enumerate(inputs):
                by_len.setdefault(inp[0].shape[2], []).append(i)
            for idx in by_len.values():
                writes = {inputs[i][3] for i in idx}
                if len(writes) != 1:
                    raise AssertionError("cells of one length must write alike")
                x = torch.cat([inputs[i][0] for i in idx])
                sig = torch.cat([inputs[i][1] for i in idx])
                frames = torch.stack([inputs[i][2] for i in idx])
                prompts = torch.stack([inputs[i][4] for i in idx])
                grad = any(calls[i].cell in grad_cells for i in idx)
                with torch.enable_grad() if grad else torch.no_grad():
                    v = self.denoiser(x, sig, [self.stages[calls[i].stage].cache for i in idx], frames, writes.pop(), prompts)
                for i, vi in zip(idx, v.split(self.batch)):
                    # a cell batched with a grad cell keeps no graph of its own
                    out[i] = vi[:, :, -k:] if calls[i].cell in grad_cells else vi[:, :, -k:].detach()
        for c in calls:
            self._release(c)
        return out

    def _transition(self, n: int, j: int, x: torch.Tensor, velocity: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(x at sigma_{j+1}, x0_hat) of cell (n, j)."""
        sigma, sigma_next = self.cfg.levels[j], self.cfg.levels[j + 1]
        x0_hat = schedule.x0_from_velocity(x, velocity, sigma)
        if sigma_next == 0:
            return x0_hat, x0_hat
        if self.cfg.transition is Transition.EULER:
            return schedule.euler(x, velocity, sigma, sigma_next), x0_hat
        return schedule.renoise(x0_hat, self.noise(n, j + 1), sigma_next), x0_hat

    def run(self, plan: CellPlan, xs: list[torch.Tensor], grad_cells: set = frozenset()) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Execute the calls of one planned group of cells whose inputs are ``xs``: (x_next, x0_hat) per cell."""
        for call in plan.writes:
            self._write_only(call)
        velocities = self._denoise(plan.calls, xs, grad_cells)
        S = self.cfg.num_steps
        results = []
        for call, x, v, keep in zip(plan.calls, xs, velocities, plan.keep):
            n, j = call.cell
            x_next, x0_hat = self._transition(n, j, x, v)
            for c, stages in keep:  # context for later blocks is data: no gradient through it
                if c.level == S:
                    t = x0_hat if self.teacher_context is None else self._teacher_block(n).to(x0_hat)
                else:
                    t = x_next
                self._kept[c] = [t.detach(), stages]
            results.append((x_next, x0_hat))
        self._forget()
        return results

    def _teacher_block(self, n: int) -> torch.Tensor:
        k = self.cfg.block_frames
        return self.teacher_context[:, :, n * k:(n + 1) * k]

    def step(self, n: int, j: int, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One cell, planned and run now (the pipelined runner's unit): (x at sigma_{j+1}, x0_hat)."""
        return self.run(self.planner.plan([(n, j)]), [x])[0]

    def finish(self, steps: list[int] | None = None) -> None:
        """Write what is still pending into the caches of ``steps`` (default: all)."""
        stages = None if steps is None else sorted({self.planner.stage_of[j] for j in steps})
        for call in self.planner.trailing(stages):
            self._write_only(call)
        self._forget()

    # -- streaming --------------------------------------------------------------------------------
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
        last = S if exit_step is None else exit_step
        if not 1 <= last <= S:
            raise ValueError(f"exit_step must be in 1..{S}, got {exit_step}")
        check_order(cfg.order, cfg.context, last, num_blocks)
        planner = self.start(num_blocks, last)
        state: dict[int, torch.Tensor] = {}
        ready: dict[int, torch.Tensor] = {}
        next_out = 0
        t0 = time.perf_counter()
        t_last = t0
        for group in self._groups(cells(cfg.order, num_blocks, last)):
            xs = [state.pop(n) if n in state else self.initial(n) for n, _ in group]
            grad_cells = {(n, j) for n, j in group if grad and j == last - 1}
            for (n, j), (x_next, x0_hat) in zip(group, self.run(planner.plan(group), xs, grad_cells)):
                if j == last - 1:
                    ready[n] = x0_hat  # == x_next when the last step is the schedule's last
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
        self.finish()  # trailing writes: keep every cache complete
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

    def sample(self, num_blocks: int, **kwargs) -> torch.Tensor:
        """All blocks, concatenated along frames: ``[B, C, num_blocks * k, H, W]``."""
        return torch.cat([b for _, b in self.stream(num_blocks, **kwargs)], dim=2)


def planned_recache(config: SamplerConfig, num_blocks: int, prompts: PromptSchedule, given_blocks: int = 0) -> tuple[int, int]:
    """(caches a run empties for re-caching, blocks it writes again), from its plan alone: what a
    pipelined run's :class:`GridReport` would count (its ranks report none)."""
    planner = Planner(config.context, config.num_steps, given_blocks=given_blocks, num_blocks=num_blocks,
                      given_at_levels=config.init_context is InitContext.LEVEL, fused=config.fused, prompts=prompts,
                      switch=config.switch, attention=config.attention)
    plans = [planner.plan([cell]) for cell in cells(config.order, num_blocks, config.num_steps)]
    calls = [c for p in plans for c in p.writes + p.calls]
    return sum(c.recache for c in calls), sum(c.rerun for c in calls)


def sample_video(
    model: WanModel,
    text: torch.Tensor | TextContext | list[torch.Tensor | TextContext],
    *,
    num_blocks: int,
    seeds: list[int],
    latent_shape: tuple[int, int, int],
    config: SamplerConfig = SamplerConfig(),
    initial_latents: torch.Tensor | None = None,
    prompts: PromptSchedule | None = None,
) -> tuple[torch.Tensor, GridReport]:
    """One-call convenience: sample ``num_blocks`` blocks (after any given ones) and return (latents, report)."""
    sampler = GridSampler(model, config, text, seeds=seeds, latent_shape=latent_shape, initial_latents=initial_latents,
                          prompts=prompts)
    video = sampler.sample(num_blocks)
    return video, sampler.report
