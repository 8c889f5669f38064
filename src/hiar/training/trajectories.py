"""Teacher ODE trajectories saved exactly at the student's levels, and their on-disk store.

The teacher integrates the probability-flow ODE with Euler on a fine grid (Wan's 50 shifted steps)
into which the student's levels are *inserted* (:func:`hiar.schedule.uniform_levels` with
``include``), so the states it saves are exactly at sigma_1 .. sigma_S and 0 - the forward-KL targets
and the ODE-init pairs align with the student's schedule (the released code does not insert them).

A trajectory folder holds shards ``shard-00000.safetensors`` ... each with

* ``latents`` ``[n, S+1, C, F, H, W]``: x at sigma_1 (pure noise), ..., sigma_S, and the clean end;
* ``text`` ``[n, L, D]``: the prompts' text states (so later stages need no text encoder);
* ``levels`` ``[S+1]`` float64 and ``indices`` ``[n]`` (global sample index);
* metadata: ``format = hiar-trajectories``, the prompts (JSON) and how they were made (JSON);

and, once every shard is written, ``manifest.json``. Shards are written atomically (temp file +
rename), so an interrupted run resumes by skipping the shards that exist.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import torch

FORMAT = "hiar-trajectories"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
LEVEL_TOLERANCE = 1e-9


def shard_name(k: int) -> str:
    return f"shard-{k:05d}.safetensors"


def solve_ode(
    velocity: Callable[[torch.Tensor, float], torch.Tensor],
    noise: torch.Tensor,
    grid: torch.Tensor,
    save_levels: torch.Tensor,
) -> tuple[torch.Tensor, list[float]]:
    """Euler (Eq. 3) from ``noise`` at ``grid[0]`` down the ``grid``, saving x at each of ``save_levels``.

    ``velocity(x, sigma)`` is the (guided) teacher. Every save level must be a point of the grid
    (insert them with ``uniform_levels(..., include=levels)``). Returns the states stacked on dim 1,
    ``[B, len(save_levels), ...]``, and the grid sigmas at which they were taken (equal to the levels).
    """
    grid = [float(s) for s in grid.to(torch.float64)]
    wanted = [float(s) for s in save_levels.to(torch.float64)]
    missing = [s for s in wanted if s not in grid]
    if missing:
        raise ValueError(f"levels {missing} are not points of the ODE grid: insert them (uniform_levels(include=...))")
    if grid[0] != wanted[0]:
        raise ValueError(f"the grid starts at {grid[0]} but the first save level is {wanted[0]}")
    x = noise
    saved, taken = [], []
    for i, sigma in enumerate(grid):
        if sigma in wanted:
            saved.append(x)
            taken.append(sigma)
        if i + 1 < len(grid):
            x = x + velocity(x, sigma) * (grid[i + 1] - sigma)
    return torch.stack(saved, dim=1), taken


def write_shard(path: Path, latents: torch.Tensor, text: torch.Tensor, levels: torch.Tensor, indices: list[int],
                prompts: list[str], info: dict) -> Path:
    from hiar.checkpoint import save_state_dict

    tensors = {
        "latents": latents, "text": text.float(), "levels": levels.to(torch.float64),
        "indices": torch.tensor(indices, dtype=torch.int64),
    }
    meta = {"format": FORMAT, "format_version": str(FORMAT_VERSION), "prompts": json.dumps(prompts),
            "info": json.dumps(info)}
    return save_state_dict(tensors, path, metadata=meta)


def write_manifest(folder: Path, num_samples: int, num_shards: int, levels: torch.Tensor, sample_shape, info: dict) -> None:
    from hiar.checkpoint import _atomic_write

    data = {"format": FORMAT, "format_version": FORMAT_VERSION, "num_samples": num_samples, "num_shards": num_shards,
            "levels": [float(s) for s in levels], "sample_shape": list(sample_shape), "info": info}
    _atomic_write(folder / MANIFEST, lambda tmp: Path(tmp).write_text(json.dumps(data, indent=2)))


def check_levels(found: torch.Tensor, expected: torch.Tensor, where: str) -> None:
    found, expected = found.to(torch.float64).flatten(), expected.to(torch.float64).flatten()
    if found.shape != expected.shape or (found - expected).abs().max() > LEVEL_TOLERANCE:
        raise ValueError(
            f"{where}: trajectories were made for levels {[round(float(s), 6) for s in found]}, but this stage's "
            f"student uses {[round(float(s), 6) for s in expected]}; make trajectories for this schedule"
        )


class TrajectoryDataset:
    """Read a trajectory folder: ``ds[i]`` -> ``{"latents" [S+1, C, F, H, W] float32, "text", "prompt", "index"}``.

    ``levels``: refuse trajectories made for another schedule. Shards are opened lazily (memory-mapped
    safetensors); text states and prompts are small and kept in memory.
    """

    def __init__(self, folder: str | Path, levels: torch.Tensor | None = None):
        from safetensors import safe_open

        self.folder = Path(folder)
        manifest = self.folder / MANIFEST
        if not manifest.is_file():
            raise FileNotFoundError(
                f"{self.folder}: no {MANIFEST}: not a finished trajectory folder (run the trajectories stage; it resumes)"
            )
        self.manifest = json.loads(manifest.read_text())
        self.shards = sorted(self.folder.glob("shard-*.safetensors"))
        if len(self.shards) != self.manifest["num_shards"]:
            raise ValueError(f"{self.folder}: {len(self.shards)} shards on disk, the manifest lists {self.manifest['num_shards']}")
        self.levels = torch.tensor(self.manifest["levels"], dtype=torch.float64)
        self.sample_shape = tuple(self.manifest["sample_shape"])  # (C, F, H, W)
        self._where: list[tuple[int, int]] = []
        self._text: list[torch.Tensor] = []
        self._prompts: list[list[str]] = []
        for k, shard in enumerate(self.shards):
            with safe_open(str(shard), framework="pt") as f:
                meta = f.metadata() or {}
                if meta.get("format") != FORMAT:
                    raise ValueError(f"{shard}: not a hiar trajectory shard")
                check_levels(f.get_tensor("levels"), self.levels, str(shard))
                n = f.get_slice("latents").get_shape()[0]
                self._text.append(f.get_tensor("text"))
            self._prompts.append(json.loads(meta.get("prompts", "[]")))
            self._where += [(k, r) for r in range(n)]
        if levels is not None:
            check_levels(self.levels, levels, str(self.folder))

    def __len__(self) -> int:
        return len(self._where)

    def latents(self, i: int) -> torch.Tensor:
        from safetensors import safe_open

        k, r = self._where[i]
        with safe_open(str(self.shards[k]), framework="pt") as f:
            return f.get_slice("latents")[r:r + 1][0].float()

    def prompt(self, i: int) -> str:
        k, r = self._where[i]
        prompts = self._prompts[k]
        return prompts[r] if r < len(prompts) else ""

    def __getitem__(self, i: int) -> dict:
        k, r = self._where[i]
        return {"latents": self.latents(i), "text": self._text[k][r], "prompt": self.prompt(i), "index": i}

    def batch(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(latents [B, S+1, C, F, H, W], text [B, L, D])`` for indices taken modulo the size."""
        items = [self[i % len(self)] for i in indices]
        return torch.stack([it["latents"] for it in items]), torch.stack([it["text"] for it in items])
