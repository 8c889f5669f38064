"""Quality, palette fidelity, edge ratio and Nyquist share of each 3-frame block of 21-frame videos (the
first 8 held-out prompts, seeds 0-7), for several models each sampled by several methods: where along
the video the speckle (palette) or the scan lines (edge ratio, Nyquist share) start, and whether they
grow block by block.

    .venv/bin/python results/experiments/ode-init-perturbed-context/per_block.py hiar,hiar-input-context \
        ode=src/hiar/assets/shapes-ode-init.safetensors hiar=src/hiar/assets/shapes-hiar.safetensors \
        --out per-block.json      # about 40 s a model and method on 2 CPU cores
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT / "scripts"))
import evaluate_shapes as es  # noqa: E402

from hiar.eval import stats  # noqa: E402
from hiar.eval.shapes_scores import ShapesScorer  # noqa: E402
from hiar.generate import load_shapes_model, shapes_world  # noqa: E402
from hiar.world.shapes import default_world  # noqa: E402

PROMPTS, FRAMES, BLOCK = 8, 21, 3


def edge_ratio(video: np.ndarray) -> float:
    """The scorer's raw edge sharpness, sum |Laplacian| / sum |gradient| of the luma, over frames
    (real clips: about 1.6; above it means high-frequency texture such as scan lines, below it blur)."""
    return float(stats.edge_sharpness(stats.as_unit_frames(video)).mean())


def nyquist_share(video: np.ndarray) -> float:
    """Share of the luma's non-DC spectral power on the Nyquist row and column (period-2 patterns such as
    scan lines, which the central-difference gradient does not see and the Laplacian does). Real clips:
    about 0.0003."""
    y = video.astype(np.float32).mean(-1)
    y = y - y.mean(axis=(1, 2), keepdims=True)
    power = np.abs(np.fft.fft2(y)) ** 2
    h, w = y.shape[1] // 2, y.shape[2] // 2
    return float((power[:, h, :].sum() + power[:, :, w].sum()) / max(power.sum(), 1e-12))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("methods", help="comma-separated sampler methods, e.g. hiar,hiar-input-context")
    ap.add_argument("models", nargs="+", help="LABEL=PATH of each model")
    ap.add_argument("--out", default="per-block.json")
    args = ap.parse_args()

    world = default_world()
    prompts = [world.prompt(s) for s in es.held_out_specs(world, PROMPTS)]
    scorer = ShapesScorer(world, reference_clips=8)
    out = {}
    for label, path in (m.split("=", 1) for m in args.models):
        model, _ = load_shapes_model(path, "hiar")
        gen = shapes_world(model)
        for method in args.methods.split(","):
            with torch.no_grad():
                videos = es.as_uint8(es.sample_students(model, gen, prompts, list(range(PROMPTS)), FRAMES, method))
            blocks = [[v[a:a + BLOCK] for a in range(0, FRAMES, BLOCK)] for v in videos]
            per = [[scorer.score(b, p) for b in row] for row, p in zip(blocks, prompts)]
            quality = np.mean([[s.quality for s in row] for row in per], axis=0)
            palette = np.mean([[s.details["palette"] for s in row] for row in per], axis=0)
            edges = np.mean([[edge_ratio(b) for b in row] for row in blocks], axis=0)
            nyquist = np.mean([[nyquist_share(b) for b in row] for row in blocks], axis=0)
            out[f"{label}:{method}"] = {"quality": quality.round(3).tolist(), "palette": palette.round(3).tolist(),
                                        "edge_ratio": edges.round(3).tolist(), "nyquist_share": nyquist.round(4).tolist()}
            print(f"{label:12s} {method:20s} quality", " ".join(f"{x:.2f}" for x in quality),
                  "| palette", " ".join(f"{x:.2f}" for x in palette),
                  "| edge ratio", " ".join(f"{x:.2f}" for x in edges),
                  "| nyquist", " ".join(f"{x:.3f}" for x in nyquist), flush=True)
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
