"""Scores of the bundled HiAR student's 21-frame videos (held-out prompts 0-7, HiAR's sampler) as drawn,
and with each video's mean even-odd row difference per colour channel taken out (half added to the odd
rows, half taken from the even ones): what the quality score would be without the constant part of the
scan lines."""
import json
import sys
import numpy as np
import torch
sys.path.insert(0, "scripts")
import evaluate_shapes as es
from hiar.eval.shapes_scores import ShapesScorer
from hiar.generate import load_shapes_model, shapes_world
from hiar.world.shapes import default_world

world = default_world()
prompts = [world.prompt(s) for s in es.held_out_specs(world, 8)]
scorer = ShapesScorer(world, reference_clips=8)
model, _ = load_shapes_model(sys.argv[1], "hiar")
with torch.no_grad():
    videos = es.as_uint8(es.sample_students(model, shapes_world(model), prompts, list(range(8)), 21, "hiar"))
rows = {"as drawn": [], "offset out": []}
offsets = []
for v, p in zip(videos, prompts):
    x = v.astype(np.float32)
    off = (x[:, 0::2] - x[:, 1::2]).mean(axis=(0, 1, 2))
    offsets.append(off)
    y = x.copy(); y[:, 0::2] -= off / 2; y[:, 1::2] += off / 2
    for name, z in [("as drawn", x), ("offset out", y)]:
        s = scorer.score(np.clip(z, 0, 255).round().astype(np.uint8), p)
        rows[name].append([s.quality, s.details["sharpness"], s.details["saturation"], s.details["palette"], s.semantic, s.dynamic])
print("even - odd rows per video (R, G, B, of 255):", np.round(offsets, 1).tolist())
for name, r in rows.items():
    m = np.mean(r, axis=0)
    print(f"{name:11s} quality {m[0]:.3f} sharpness {m[1]:.3f} saturation {m[2]:.3f} palette {m[3]:.3f} | semantic {m[4]:.3f} dynamic {m[5]:.3f}")
