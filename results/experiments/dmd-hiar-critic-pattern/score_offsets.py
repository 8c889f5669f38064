"""Whose x0 estimate carries the scan lines? Real clips (no pattern) of held-out prompts 0-7, 21 frames,
noised to several levels; the mean even - odd row difference per channel (of 255) of each model's x0
estimate (bidirectional, conditional text), averaged over clips and 2 noise draws."""
import sys
import numpy as np
import torch
sys.path.insert(0, "scripts")
import evaluate_shapes as es
from hiar import schedule
from hiar.checkpoint import load_model
from hiar.generate import shapes_world
from hiar.training.objectives import predict_velocity
from hiar.world.shapes import default_world

world = default_world()
specs = es.held_out_specs(world, 8)
clips = torch.stack([world.render(s, 21)[0] for s in specs])  # [B, 3, F, H, W] in [-1, 1]
models = {name: load_model(path).eval() for name, path in (a.split("=", 1) for a in sys.argv[1:])}
w = shapes_world(next(iter(models.values())))
text = w.text_encoder.encode([world.prompt(s) for s in specs])
print("real clips: even-odd (R, G, B):", ((clips[:, :, :, 0::2] - clips[:, :, :, 1::2]).mean(dim=(0, 2, 3, 4)) * 127.5).numpy().round(2))
for sigma in [0.05, 0.1, 0.2, 0.4, 0.625, 0.9]:
    line = f"sigma {sigma:5.3f}"
    for name, m in models.items():
        offs = []
        for draw in range(2):
            g = torch.Generator().manual_seed(draw)
            noise = torch.randn(clips.shape, generator=g)
            s = torch.full((clips.shape[0],), sigma)
            xt = schedule.add_noise(clips, noise, s)
            with torch.no_grad():
                x0 = schedule.x0_from_velocity(xt, predict_velocity(m, xt, s, text).float(), s)
            offs.append(((x0[:, :, :, 0::2] - x0[:, :, :, 1::2]).mean(dim=(0, 2, 3, 4)) * 127.5).numpy())
        line += f" | {name} " + " ".join(f"{v:+.2f}" for v in np.mean(offs, 0))
    print(line, flush=True)
