"""The denoising grid as bookkeeping: context rules, execution orders, and the plan of model calls.

No tensors here. A video is N blocks of k latent frames; a schedule has S steps with levels
sigma_1 > ... > sigma_S > sigma_{S+1} = 0. **Cell (n, j)** (0-based) moves block n from sigma_j to
sigma_{j+1}, attending to earlier blocks through a KV cache. A *context rule* says which state of
an earlier block m the cell reads: m's state after ``rule.level(m, j, S)`` of its own steps (0: its
initial noise, S: its clean x0). So a rule is a function of the context block and the reading step:

==========================  ============================  ===========================================
rule                        level(m, j)                   method
==========================  ============================  ===========================================
``CLEAN``                   S                             Self-Forcing, CausVid (block-first)
``OUTPUT``                  j + 1                         HiAR
``INPUT``                   j                             the t_c = t_j ablation
``Hybrid(first_blocks=K)``  S for m < K, else j + 1       the released code's ``hybrid_block0``
``Hybrid(first_steps=M)``   max(j + 1, M)                 the released code's ``frame_first_steps``
==========================  ============================  ===========================================

Everything else follows from the rule: which cells a cell depends on (so which orders are valid),
how many KV caches (*stages*) there are (steps that read every block at the same level share one),
and where a fused call can write a context block together with the denoise that first reads it.

:class:`Planner` turns a sequence of cells into model calls (:class:`Call`) without running any:
it tracks, per stage, how many blocks its cache holds and which context blocks wait to be written
(*pending*). The executor (:class:`hiar.sampling.GridSampler`) holds the tensors and runs the calls.

Prompt switching (LongLive's interactive video) is data too: a :class:`PromptSchedule` says under
which prompt each block is made, every call says which prompt each of its segments cross-attends
to, and a :class:`SwitchPolicy` says whether a stage's cached context is re-run under the new
prompt (a *recache*: the cache is emptied and the blocks it held are written again, riding along
with the new block's call like pending context) before the first block under it reads the cache.
"""

from __future__ import annotations

import bisect
import enum
import itertools
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from hiar.attention import AttentionSpec


class ContextRule(enum.Enum):
    CLEAN = "clean"  # t_c = 0: Self-Forcing, CausVid
    OUTPUT = "output"  # t_c = t_{j+1}: HiAR
    INPUT = "input"  # t_c = t_j: ablation

    def level(self, block: int, step: int, num_steps: int) -> int:
        """Steps that block ``block`` has taken when step ``step`` of a later block reads it."""
        if self is ContextRule.CLEAN:
            return num_steps
        return step + 1 if self is ContextRule.OUTPUT else step

    @property
    def horizon(self) -> int:
        """Blocks from which on the rule no longer depends on the block (0: never does)."""
        return 0


@dataclass(frozen=True)
class Hybrid:
    """The released code's hybrid schedules as one context rule: block-first first, hierarchical after.

    ``first_blocks`` (K, the released ``--num_frame_first_blocks`` of ``hybrid_block0``): the first K
    blocks are denoised block-first and seen clean by every later cell; the blocks after them are
    hierarchical (read at the output level, t_c = t_{j+1}). ``first_steps`` (M, the released
    ``frame_first_steps``): the first M steps of every block read the earlier blocks at their state
    after M steps (so they run block-first), the remaining steps are hierarchical. K = 0 and M <= 1
    are HiAR; M = S, or K at least the number of blocks, is Self-Forcing. Both can be set at once.
    Blocks are counted from the first generated one: given frames are before the first K.
    """

    first_blocks: int = 0
    first_steps: int = 0

    def __post_init__(self):
        if self.first_blocks < 0 or self.first_steps < 0:
            raise ValueError(f"hybrid first_blocks and first_steps must be >= 0, got {self.first_blocks}, {self.first_steps}")

    def level(self, block: int, step: int, num_steps: int) -> int:
        if block < self.first_blocks:
            return num_steps
        return max(step + 1, min(self.first_steps, num_steps))

    @property
    def horizon(self) -> int:
        return self.first_blocks

    @property
    def value(self) -> str:
        return f"hybrid(first_blocks={self.first_blocks}, first_steps={self.first_steps})"

    @property
    def name(self) -> str:
        return self.value.upper()


Rule = ContextRule | Hybrid


class Order(enum.Enum):
    BLOCK_FIRST = "block_first"  # n outer, j inner
    STEP_FIRST = "step_first"  # j outer, n inner (Alg. 1)
    DIAGONAL = "diagonal"  # by n + j: streaming and pipelined order


class OrderError(ValueError):
    """An execution order that breaks the context rule's dependencies."""


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


def _reason(m: int, level: int, j: int, num_steps: int) -> str:
    if level == num_steps:
        return f"block {m} fully denoised (clean context, t_c = 0)"
    if level == j + 1:
        return f"block {m} at the output level of step {j} (t_c = t_(j+1))"
    if level == j:
        return f"block {m} at the input level of step {j} (t_c = t_j)"
    return f"block {m} after {level} of its steps"


def dependencies(rule: Rule, n: int, j: int, num_steps: int) -> list[tuple[int, int, str]]:
    """Cells that must run before (n, j), each with the reason.

    Block m's state after i steps comes from cell (m, i - 1). Only the previous block and the
    blocks before the rule's horizon are listed: the rest follow through the previous block's chain.
    """
    deps = [(n, j - 1, f"block {n}'s own previous step")] if j > 0 else []
    for m in sorted({n - 1, *range(min(rule.horizon, n - 1))}, reverse=True):
        if m < 0:
            continue
        level = rule.level(m, j, num_steps)
        if level > 0:
            deps.append((m, level - 1, _reason(m, level, j, num_steps)))
    return deps


def check_order(order: Order, rule: Rule, num_steps: int, num_blocks: int | None = None) -> None:
    """Refuse an order that would run a cell before one it depends on.

    Every order is the same pattern for any number of blocks, and S + 2 blocks past the rule's horizon
    show every kind of dependency, so a run of N blocks is checked on its first min(N, S + 2 + horizon):
    the check costs the same for 10 blocks and for 10**12 (walking every cell of a huge run would take
    hours and gigabytes before the first frame).
    """
    if num_blocks is None and order is Order.STEP_FIRST:
        raise OrderError("step_first finishes no block before the last step: it needs a finite number of blocks")
    prefix = num_steps + 2 + rule.horizon
    n_check = prefix if num_blocks is None else min(num_blocks, prefix)
    done: set[tuple[int, int]] = set()
    for n, j in cells(order, n_check, num_steps):
        for dep in dependencies(rule, n, j, num_steps):
            if dep[:2] not in done:
                raise OrderError(
                    f"order '{order.value}' is invalid for context rule {rule.name}: cell (block {n}, step {j}) "
                    f"needs {dep[2]}, i.e. cell (block {dep[0]}, step {dep[1]}), which this order runs later"
                    + (" (use order=block_first)" if order is not Order.BLOCK_FIRST else "")
                )
        done.add((n, j))


def valid_orders(rule: Rule, num_steps: int, num_blocks: int | None = None) -> list[Order]:
    """The orders :func:`check_order` accepts for this rule."""
    ok = []
    for order in Order:
        try:
            check_order(order, rule, num_steps, num_blocks)
        except OrderError:
            continue
        ok.append(order)
    return ok


def check_pipelinable(rule: Rule, num_steps: int) -> None:
    """A pipelined run holds stage j on rank j, which only ever sees a block at sigma_j and sigma_{j+1}:
    every step must read every block at its own input or output level (one stage per step)."""
    for j in range(num_steps):
        for m in range(rule.horizon + 1):
            level = rule.level(m, j, num_steps)
            if level not in (j, j + 1):
                raise ValueError(
                    f"pipelined inference needs hierarchical context (OUTPUT or INPUT): under {rule.name} step {j} "
                    f"reads {_reason(m, level, j, num_steps)}, which rank {j} never holds"
                )


# ------------------------------------------------------------------------------------------------
# Prompts


class SwitchPolicy(enum.Enum):
    """What a stage's KV cache holds when the prompt changes.

    ``KV_KEEP``: cached context stays as it was written: each context block's keys and values were
    computed under the prompt of that block. ``KV_RECACHE`` (LongLive's KV re-cache): before the
    first cell under a new prompt reads a stage's cache, the context blocks it reads from that cache
    (those in its window, and the sink; each at the stage's context level) are run again under the
    new prompt, as one clip on the emptied cache (they attend to each other as usual, not to blocks
    that left the window; they ride along with the next call on that cache, as pending context
    does); context written later is written under the new prompt too. So every cell reads context
    computed under its own block's prompt.
    """

    KV_KEEP = "kv-keep"
    KV_RECACHE = "kv-recache"


@dataclass(frozen=True)
class PromptSchedule:
    """Under which prompt each block is made: prompt i from generated block ``starts[i]`` on.

    Given frames (negative blocks) count as prompt 0's. ``PromptSchedule()`` is one prompt.
    """

    starts: tuple[int, ...] = (0,)

    def __post_init__(self):
        starts = tuple(int(b) for b in self.starts)
        object.__setattr__(self, "starts", starts)
        if not starts or starts[0] != 0:
            raise ValueError(f"a prompt schedule starts with prompt 0 at block 0, got starts {list(starts)}")
        if any(b <= a for a, b in zip(starts, starts[1:])):
            raise ValueError(f"the first blocks of a prompt schedule must increase strictly, got {list(starts)}")

    @property
    def num_prompts(self) -> int:
        return len(self.starts)

    def prompt(self, block: int) -> int:
        """The prompt block ``block`` is made under."""
        return 0 if block < 0 else bisect.bisect_right(self.starts, block) - 1


# ------------------------------------------------------------------------------------------------
# The plan of model calls


@dataclass(frozen=True)
class Ctx:
    """A context block: block ``block`` after ``level`` of its steps (negative blocks are given frames)."""

    block: int
    level: int


@dataclass(frozen=True)
class Call:
    """One model call on one stage's cache: ``[writes..., cell's block]``, the writes' K/V kept.

    ``cell`` None: a write-only call. ``self_write``: the cell's own input is its context for later
    blocks (level(n, j) = j), so the call writes it too. ``prompts``: the prompt each segment
    (each write, then the cell) cross-attends to. ``recache``: the call starts a KV re-cache: the
    cache is emptied first, and the first ``rerun`` writes are blocks it held, written again.
    """

    stage: int
    writes: tuple[Ctx, ...]
    cell: tuple[int, int] | None = None
    self_write: bool = False
    prompts: tuple[int, ...] = ()
    recache: bool = False
    rerun: int = 0


@dataclass
class CellPlan:
    """The calls of one group of cells: write-only calls first, then one call per cell, and which of
    each cell's results later calls will write (``keep[i]``: (context block, number of stages))."""

    writes: list[Call]
    calls: list[Call]
    keep: list[list[tuple[Ctx, int]]]


@dataclass
class _Stage:
    steps: list[int]  # the steps that read this cache
    written: int = 0  # blocks in the cache (given blocks included)
    pending: list[Ctx] = field(default_factory=list)
    prompt: int = 0  # the prompt of the last cell that read this cache
    held: list[Ctx] = field(default_factory=list)  # context blocks the cache still holds (tracked for recaching)
    reset: bool = False  # a recache waits: the next call empties the cache
    rerun: int = 0  # the first `rerun` pending blocks are held ones, to be written again


class Planner:
    """Model calls for a sequence of cells, under a rule, without running anything.

    ``num_steps`` S is the schedule's; ``last_step`` (<= S) is where every block stops (the DMD
    rollout's exit step): then level S means the block's x0 prediction at that step, labelled clean.
    ``given_blocks`` blocks of given frames (block indices -G..-1) start out pending in every stage,
    clean (``given_at_levels`` False: the released code) or at each stage's own level.
    ``prompts`` and ``switch``: see :class:`PromptSchedule`, :class:`SwitchPolicy`; ``attention``
    (its window and sink) says which context blocks a cache still holds, which a recache re-runs
    (None: every block written).
    """

    def __init__(self, rule: Rule, num_steps: int, *, last_step: int | None = None, given_blocks: int = 0,
                 given_at_levels: bool = False, fused: bool = True, num_blocks: int | None = None,
                 prompts: PromptSchedule = PromptSchedule(), switch: SwitchPolicy = SwitchPolicy.KV_RECACHE,
                 attention: "AttentionSpec | None" = None):
        S = num_steps
        self.rule, self.S = rule, S
        self.last = S if last_step is None else last_step
        self.given, self.fused = given_blocks, fused
        self.prompts, self.switch, self.attention = prompts, switch, attention
        # Only a run that re-caches needs to know what each cache holds.
        self.recaches = switch is SwitchPolicy.KV_RECACHE and prompts.num_prompts > 1
        # Steps share a cache when they read every block at the same level (the rule is constant past
        # its horizon). Steps past the exit step never run: they get no cache.
        lo = -given_blocks if given_at_levels else 0
        hi = rule.horizon + 1 if num_blocks is None else max(1, min(rule.horizon + 1, num_blocks))
        keys: dict[tuple, int] = {}
        self.stage_of: list[int] = []
        for j in range(self.last):
            key = tuple(self.level(b, j) for b in range(lo, hi))
            self.stage_of.append(keys.setdefault(key, len(keys)))
        self.stages = [_Stage([j for j in range(self.last) if self.stage_of[j] == s]) for s in range(len(keys))]
        for st in self.stages:
            j = st.steps[0]
            st.pending = [Ctx(b, self.level(b, j) if given_at_levels else S) for b in range(-given_blocks, 0)]
            for b in range(hi):  # every level a step reads must be reached by the exit step
                level = self.level(b, j)
                if self.last < level < S:
                    raise ValueError(f"with exit step {self.last}, blocks stop before step {j}'s context under "
                                     f"{rule.name} ({_reason(b, level, j, S)})")

    def level(self, block: int, step: int) -> int:
        return self.rule.level(block, step, self.S)

    def _self_write(self, n: int, j: int) -> bool:
        return self.level(n, j) == j

    def _write_prompt(self, st: _Stage, c: Ctx) -> int:
        """kv-keep: a context block is written under its own prompt; kv-recache: under the prompt
        the cache is now read under (the same until a switch, and the new one after it)."""
        return st.prompt if self.switch is SwitchPolicy.KV_RECACHE else self.prompts.prompt(c.block)

    def _wrote(self, st: _Stage, ctxs: list[Ctx]) -> None:
        """Count blocks written into a stage; under recaching, track which ones its cache still holds."""
        st.written += len(ctxs)
        if self.recaches and ctxs:
            st.held = self._holds(st.held + ctxs)

    def _holds(self, written: list[Ctx]) -> list[Ctx]:
        """Of the context blocks written into a cache (in order), those it still holds: each block
        with a frame in the sink or among the last ``sink + window - k`` frames (KVCache's ring)."""
        spec = self.attention
        if spec is None or spec.cache_frames is None or not written:
            return written
        k = spec.block_frames
        end = (self.given + written[-1].block + 1) * k  # frames the cache has seen
        ring = spec.cache_frames - spec.sink
        return [c for c in written if (self.given + c.block) * k < spec.sink or (self.given + c.block + 1) * k > end - ring]

    def _call(self, s: int, ctxs: list[Ctx], cell: tuple[int, int] | None = None, self_write: bool = False) -> Call:
        """The call on stage ``s`` writing ``ctxs`` (then denoising ``cell``), and its bookkeeping."""
        st = self.stages[s]
        rerun = min(st.rerun, len(ctxs))
        st.rerun -= rerun
        recache, st.reset = st.reset, False
        prompts = tuple(self._write_prompt(st, c) for c in ctxs) + (() if cell is None else (self.prompts.prompt(cell[0]),))
        self._wrote(st, list(ctxs) + ([Ctx(*cell)] if self_write else []))
        return Call(s, tuple(ctxs), cell, self_write, prompts, recache, rerun)

    def _flush(self, s: int) -> list[Call]:
        st = self.stages[s]
        pending, st.pending = st.pending, []
        if not pending:
            return []
        return [self._call(s, g) for g in ([pending] if self.fused else [[c] for c in pending])]

    def _switch(self, s: int, prompt: int) -> None:
        """The stage's prompt becomes ``prompt``. Under kv-recache, a cache that holds blocks is
        emptied, and the blocks the new block would read from it (those of its window and the sink,
        after the pending ones are written) become pending again, ahead of the pending ones: so they
        are written again, under the new prompt, as one clip with them."""
        st = self.stages[s]
        if prompt == st.prompt:
            return
        st.prompt = prompt
        if self.switch is not SwitchPolicy.KV_RECACHE or not st.held:
            return
        after = self._holds(st.held + st.pending)
        rerun = [c for c in st.held if c in after]
        st.written -= len(rerun)
        st.pending = rerun + st.pending
        st.rerun, st.reset, st.held = len(rerun), True, []

    def plan(self, group: list[tuple[int, int]]) -> CellPlan:
        """The calls of a group of cells run together (one cell, or a batched anti-diagonal)."""
        writes, calls, keep = [], [], []
        seen: set[int] = set()
        for n, j in group:
            s = self.stage_of[j]
            st = self.stages[s]
            if s in seen:
                raise OrderError(f"cells of one batched group share stage {s}: they cannot run as one call")
            seen.add(s)
            if st.written + len(st.pending) != self.given + n:
                raise OrderError(f"cell (block {n}, step {j}) runs with {st.written + len(st.pending) - self.given} "
                                 f"earlier blocks for its cache: blocks must arrive in order")
            self._switch(s, self.prompts.prompt(n))
            if not self.fused:
                writes += self._flush(s)
            pending, st.pending = st.pending, []
            calls.append(self._call(s, pending, (n, j), self._self_write(n, j)))
        for n, j in group:  # what each cell produces for later blocks, once the whole group has read
            produced = {j + 1} | ({self.S} if j == self.last - 1 else set())
            mine: dict[Ctx, int] = {}
            for s, st in enumerate(self.stages):
                level = self.level(n, st.steps[0])
                if level in produced and not self._self_write(n, st.steps[0]):
                    st.pending.append(Ctx(n, level))
                    mine[Ctx(n, level)] = mine.get(Ctx(n, level), 0) + 1
            keep.append(list(mine.items()))
        return CellPlan(writes, calls, keep)

    def trailing(self, stages: list[int] | None = None) -> list[Call]:
        """Write-only calls for what is still pending (keeps the caches complete, so a video can go on)."""
        return [c for s in (range(len(self.stages)) if stages is None else stages) for c in self._flush(s)]
