"""Small pieces the stages share: keyed per-sample draws, prompt dropout, per-block levels, export."""

from __future__ import annotations

import torch

from hiar.training import keys


def keyed_noise(shape, seed: int, purpose: str, step: int, indices: list[int]) -> torch.Tensor:
    """``[B, *shape]`` standard normal noise, sample b keyed by its global index."""
    return torch.stack([keys.randn(shape, seed, purpose, step, i) for i in indices])


def keyed_sigmas(sampler, seed: int, purpose: str, step: int, indices: list[int]) -> torch.Tensor:
    """``[B]`` noise levels (float64), one per sample."""
    return torch.tensor([sampler(seed, purpose, step, i) for i in indices], dtype=torch.float64)


def block_sigmas(sampler, seed: int, purpose: str, step: int, indices: list[int], num_frames: int, block_frames: int) -> torch.Tensor:
    """``[B, F]`` levels, independent per block of ``block_frames`` frames (diffusion forcing)."""
    nb = -(-num_frames // block_frames)
    per_block = torch.tensor([[sampler(seed, purpose, step, i, b) for b in range(nb)] for i in indices], dtype=torch.float64)
    return per_block.repeat_interleave(block_frames, dim=1)[:, :num_frames]


def drop_prompts(text: torch.Tensor, p: float, seed: int, step: int, indices: list[int]) -> torch.Tensor:
    """Replace each sample's text states by the null prompt (zeros) with probability ``p``."""
    if p <= 0:
        return text
    drop = torch.tensor([keys.uniform(seed, "prompt-dropout", step, i) < p for i in indices])
    return torch.where(drop[:, None, None], torch.zeros_like(text), text)


def export_trainable(trainer, name: str, filename: str = "model.safetensors") -> None:
    """``model.safetensors`` = the EMA weights when there is an EMA (``model_raw.safetensors`` = the
    raw ones), else the raw weights."""
    ema = trainer.emas.get(name)
    trainer.save_model(ema.model if ema is not None else trainer.models[name], filename, weights="ema" if ema else "raw")
    if ema is not None:
        trainer.save_model(trainer.models[name], filename.replace(".safetensors", "_raw.safetensors"), weights="raw")
