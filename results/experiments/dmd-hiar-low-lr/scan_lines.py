"""Where the scan lines sit: the mean difference of even and odd pixel rows per colour channel, and the
amplitude of the row Nyquist component (sum over rows of (-1)^r x[r]) with the share of columns that
carry it with the same sign. A constant row offset gives a channel mean far from 0 and one sign in
most columns; an edge pattern does not. Real clips and each model's 21-frame HiAR videos of the first 8
held-out prompts, in [-1, 1].

    .venv/bin/python results/experiments/dmd-hiar-low-lr/scan_lines.py real \
        bundled=src/hiar/assets/shapes-hiar.safetensors      # about 1 min a model on 2 CPU cores
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT / "scripts"))
import evaluate_shapes as es  # noqa: E402

from hiar.generate import load_shapes_model, shapes_world  # noqa: E402
from hiar.world.shapes import default_world  # noqa: E402

PROMPTS, FRAMES = 8, 21


def videos(label: str, path: str | None, world, specs) -> np.ndarray:
    if path is None:
        v = es.real_clips(world, specs, FRAMES)
    else:
        model, _ = load_shapes_model(path, "hiar")
        with torch.no_grad():
            v = es.as_uint8(es.sample_students(model, shapes_world(model), [world.prompt(s) for s in specs],
                                               list(range(PROMPTS)), FRAMES, "hiar"))
    return np.stack(list(v)).astype(np.float32) / 127.5 - 1  # [N, F, H, W, 3]


def main() -> None:
    world = default_world()
    specs = es.held_out_specs(world, PROMPTS)
    for arg in sys.argv[1:]:
        label, _, path = arg.partition("=")
        v = videos(label, path or None, world, specs)
        parity = v[:, :, 0::2] - v[:, :, 1::2]
        nyquist = (v * ((-1.0) ** np.arange(v.shape[2]))[None, None, :, None, None]).mean(axis=2)
        majority = np.mean(np.sign(nyquist) == np.sign(nyquist.mean()))
        print(f"{label:10s} even - odd rows, mean by channel (R G B) {parity.mean(axis=(0, 1, 2, 3)).round(4)} | "
              f"row Nyquist amplitude: mean {nyquist.mean():+.4f}, mean |.| {np.abs(nyquist).mean():.4f}, "
              f"columns with the majority sign {majority:.2f}", flush=True)


if __name__ == "__main__":
    main()
