"""Why quality falls after the first 17 frames under HiAR's sampler: the model's own errors in its
clean context, or the place (absolute frames past the 21 it was trained on, a full KV window)?

    .venv/bin/python results/experiments/own-context-errors/probe.py \
        --model src/hiar/assets/shapes-hiar.safetensors --out probe-hiar.json   # about 10 min on 2 CPU cores

For the first ``--prompts`` held-out prompts (the specs of scripts/evaluate_shapes.py), sampled as HiAR
with the default KV window, same seeds:

- from nothing: 84 frames, as the evaluation makes them;
- after the truth: the world's own rendering of the prompt's frames 0-41 given as clean context, then
  42 frames generated. These frames sit where the from-nothing video's frames 42-83 sit, with the same
  full window, but read the world's frames instead of the model's own.

Each part is scored for quality against its prompt (:class:`hiar.eval.shapes_scores.ShapesScorer`).
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

from hiar.eval.shapes_scores import ShapesScorer  # noqa: E402
from hiar.generate import load_shapes_model, shapes_world  # noqa: E402
from hiar.world.shapes import default_world  # noqa: E402

GIVEN = FIRST = 42  # frames given / generated after them (whole blocks of 3)
SEGMENT = 17  # the evaluation's first drift segment of an 84-frame video


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=str(ROOT / "src/hiar/assets/shapes-hiar.safetensors"))
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--out", default="probe.json")
    args = ap.parse_args()

    world = default_world()
    specs = es.held_out_specs(world, args.prompts)
    prompts = [world.prompt(s) for s in specs]
    scorer = ShapesScorer(world, reference_clips=8)
    model, _ = load_shapes_model(args.model, "hiar")
    gen = shapes_world(model)
    seeds = list(range(args.prompts))

    def sample(given: torch.Tensor | None, frames: int) -> np.ndarray:
        return es.as_uint8(es.sample_students(model, gen, prompts, seeds, frames, "hiar", initial_latents=given))

    def quality(videos: np.ndarray) -> list[float]:
        return [round(scorer.score(v, p).quality, 4) for v, p in zip(videos, prompts)]

    with torch.no_grad():
        real = es.real_clips(world, specs, GIVEN + FIRST)  # uint8 [B, F, H, W, 3]
        pixels = torch.from_numpy(real[:, :GIVEN]).permute(0, 4, 1, 2, 3).float() / 127.5 - 1
        after = sample(gen.codec.encode(pixels).to(model.device, model.dtype), FIRST)
        fresh = sample(None, GIVEN + FIRST)

    rows = {
        "from nothing, frames 0-16": quality(fresh[:, :SEGMENT]),
        "from nothing, frames 0-41": quality(fresh[:, :GIVEN]),
        "from nothing, frames 42-58": quality(fresh[:, GIVEN:GIVEN + SEGMENT]),
        "from nothing, frames 42-83": quality(fresh[:, GIVEN:]),
        "after the truth, frames 42-58": quality(after[:, :SEGMENT]),
        "after the truth, frames 42-83": quality(after),
        "real clips, frames 42-83": quality(real[:, GIVEN:]),
    }
    for name, values in rows.items():
        print(f"{name:32s} {np.mean(values):.3f}  per prompt {values}")
    Path(args.out).write_text(json.dumps({"model": Path(args.model).name, "prompts": prompts,
                                          "quality": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
