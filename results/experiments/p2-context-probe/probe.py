"""Where the bundled patch-2 students lose the picture: 12 frames (4 blocks of 3) of the first held-out
prompts, for the ODE-init, HiAR and Self-Forcing models, sampled as HiAR and as Self-Forcing, from noise
and after a real first block (video extension: the world's own rendering of the prompt's frames 0-2).

    .venv/bin/python results/experiments/p2-context-probe/probe.py   # about 5 min on one CPU core

Writes continuation.png beside this file: per setting, two prompts, 12 frames each (rows of 2).
"""
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT / "scripts"))
import evaluate_shapes as es  # noqa: E402

from hiar.checkpoint import load_model  # noqa: E402
from hiar.generate import method_config, shapes_world  # noqa: E402
from hiar.sampling import GridSampler  # noqa: E402
from hiar.world.shapes import default_world  # noqa: E402

MODELS = {"ODE init": "shapes-ode-init", "HiAR student": "shapes-hiar", "Self-Forcing student": "shapes-self-forcing"}
PROMPTS, SHOWN, FRAMES = 4, 2, 12


def framed(video: np.ndarray) -> np.ndarray:
    """uint8 [F, H, W, 3] -> one row of frames with a white border."""
    return np.concatenate([np.pad(f, ((1, 1), (1, 1), (0, 0)), constant_values=255) for f in video], 1)


def main() -> None:
    world = default_world()
    specs = es.held_out_specs(world, PROMPTS)
    prompts = [world.prompt(s) for s in specs]
    real = np.stack([world.render_numpy(s, 3)[0] for s in specs])  # [B, 3, H, W, 3] in [0, 255]
    rows, labels = [], []
    for title, name in MODELS.items():
        model = load_model(ROOT / f"src/hiar/assets/{name}.safetensors").eval()
        gen = shapes_world(model)
        text = gen.text_encoder.encode(prompts)
        given = gen.codec.encode(torch.from_numpy(real).float().div(127.5).sub(1).permute(0, 4, 1, 2, 3))
        for method in ("hiar", "self-forcing"):
            for start in (None, given):
                sampler = GridSampler(model, method_config(method, window=21), text, seeds=list(range(PROMPTS)),
                                      latent_shape=gen.latent_shape, initial_latents=start)
                with torch.no_grad():
                    latents = torch.cat([b for _, b in sampler.stream(FRAMES // 3 - (start is not None))], 2)
                if start is not None:
                    latents = torch.cat([start, latents], 2)
                videos = es.as_uint8(gen.codec.decode(latents.float()).clamp(-1, 1))
                rows.append(np.concatenate([framed(v[:FRAMES]) for v in videos[:SHOWN]], 0))
                labels.append((title, f"sampled as {method}", "given: " + ("no" if start is None else "real block 0")))
                print(*labels[-1], flush=True)
    grid = Image.fromarray(np.concatenate(rows, 0))
    grid = grid.resize((grid.width * 3, grid.height * 3), Image.NEAREST)
    out = Image.new("RGB", (grid.width + 260, grid.height), "white")
    out.paste(grid, (260, 0))
    draw, step = ImageDraw.Draw(out), grid.height // len(rows)
    try:
        font = ImageFont.truetype("DejaVuSans.ttf", 18)
    except OSError:
        font = ImageFont.load_default()
    for i, label in enumerate(labels):
        draw.line([(0, i * step), (out.width, i * step)], fill="black", width=2)
        for k, text_line in enumerate(label):
            draw.text((8, i * step + 40 + 24 * k), text_line, fill="black", font=font)
    out = out.resize((out.width // 2, out.height // 2), Image.LANCZOS).quantize(128)
    out.save(Path(__file__).with_name("continuation.png"), optimize=True)


if __name__ == "__main__":
    main()
