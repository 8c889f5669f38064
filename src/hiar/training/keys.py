"""Randomness keyed by what it is for, never drawn from an ambient stream.

Every random draw of training (a sample's noise, its noise level, its prompt dropout, the exit step
of a rollout, the rollout's noise-bank seeds) comes from a generator seeded by a tuple of keys such as
``(seed, "noise", step, sample_index)``. So a draw depends neither on how many draws came before
(exact resume needs only the step), nor on the batch size or the process count (2 ranks x b samples
== 1 rank x 2b samples: each sample is keyed by its *global* index).
"""

from __future__ import annotations

import zlib

import numpy as np
import torch


def _part(p) -> int:
    if isinstance(p, str):
        return zlib.crc32(p.encode())
    return int(p)


def key(*parts) -> int:
    """A 63-bit integer from any tuple of ints and strings (stable across machines and versions)."""
    seq = np.random.SeedSequence([_part(p) for p in parts])
    return int(seq.generate_state(1, np.uint64)[0]) & (2**63 - 1)


def generator(*parts) -> torch.Generator:
    """A CPU generator seeded by ``key(*parts)``."""
    return torch.Generator().manual_seed(key(*parts))


def randn(shape, *parts) -> torch.Tensor:
    """Standard normal float32 noise of ``shape`` on the CPU, keyed by ``parts``."""
    return torch.randn(tuple(shape), generator=generator(*parts), dtype=torch.float32)


def uniform(*parts) -> float:
    """One U[0, 1) draw keyed by ``parts`` (float64)."""
    return float(torch.rand((), generator=generator(*parts), dtype=torch.float64))


def randint(high: int, *parts) -> int:
    """One integer in ``0 .. high - 1`` keyed by ``parts``."""
    return int(torch.randint(high, (), generator=generator(*parts)))


def seed31(*parts) -> int:
    """A non-negative 31-bit seed (for APIs that take an int seed, e.g. the sampler's noise bank)."""
    return key(*parts) & (2**31 - 1)
