"""The even - odd row difference (green, of 255) of the DMD generator gradient's direction on the
bundled HiAR student's own 21-frame samples (held-out prompts 0-7): the generator moves along
real_x0 - fake_x0, so a positive value pushes the scan lines (even rows greener) in, a negative one out.
Real score: the teacher (unguided, as the recipe); fake score: the critic given."""
import sys
import numpy as np
import torch
sys.path.insert(0, "scripts")
import evaluate_shapes as es
from hiar import schedule
from hiar.checkpoint import load_model
from hiar.generate import load_shapes_model, shapes_world
from hiar.training.objectives import predict_velocity
from hiar.world.shapes import default_world

world = default_world()
specs = es.held_out_specs(world, 8)
prompts = [world.prompt(s) for s in specs]
student, _ = load_shapes_model("src/hiar/assets/shapes-hiar.safetensors", "hiar")
w = shapes_world(student)
with torch.no_grad():
    x = es.sample_students(student, w, prompts, list(range(8)), 21, "hiar")  # [B, 3, F, H, W]
text = w.text_encoder.encode(prompts)
teacher = load_model("src/hiar/assets/shapes-teacher.safetensors").eval()
critics = {name: load_model(path).eval() for name, path in (a.split("=", 1) for a in sys.argv[1:])}
eo = lambda t: ((t[:, 1, :, 0::2] - t[:, 1, :, 1::2]).mean() * 127.5).item()
print(f"the samples: even - odd, green {eo(x):+.2f}")
for sigma in [0.1, 0.2, 0.4, 0.625, 0.9]:
    s = torch.full((x.shape[0],), sigma)
    xt = schedule.add_noise(x, torch.randn(x.shape, generator=torch.Generator().manual_seed(0)), s)
    with torch.no_grad():
        real = schedule.x0_from_velocity(xt, predict_velocity(teacher, xt, s, text).float(), s)
        line = f"sigma {sigma:5.3f} | teacher x0 {eo(real):+.2f}"
        for name, c in critics.items():
            fake = schedule.x0_from_velocity(xt, predict_velocity(c, xt, s, text).float(), s)
            line += f" | {name}: x0 {eo(fake):+.2f}, real - fake {eo(real - fake):+.2f}"
    print(line, flush=True)
