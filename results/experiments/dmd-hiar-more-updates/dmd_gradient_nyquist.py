"""Does HiAR's DMD gradient push the student's period-2 patterns (scan lines) out of its samples, or in?

Samples 21-frame videos of the first 4 held-out prompts with a student (HiAR's sampler), noises them to
several levels, and compares the teacher's x0 prediction (the real score) with the critic's (the fake
score). The generator's update moves a sample by -grad (grad = DMD's (fake - real) / mean|x - real|), so
a positive cosine between the Nyquist part of grad and that of the sample means the update removes the
pattern.

    .venv/bin/python results/experiments/dmd-hiar-more-updates/dmd_gradient_nyquist.py \
        src/hiar/assets/shapes-hiar.safetensors runs/dmd-noise/critic.safetensors   # about 1 minute
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT / "scripts"))
import evaluate_shapes as es  # noqa: E402

from hiar import schedule  # noqa: E402
from hiar.checkpoint import load_model  # noqa: E402
from hiar.generate import shapes_world  # noqa: E402
from hiar.training import objectives  # noqa: E402
from hiar.world.shapes import default_world  # noqa: E402

PROMPTS = 4


def nyquist_part(v: torch.Tensor) -> torch.Tensor:
    """The part of ``v`` [..., H, W] on the Nyquist row and column of its 2-D spectrum."""
    spectrum = torch.fft.fft2(v.double())
    mask = torch.zeros(v.shape[-2:], dtype=torch.bool)
    mask[v.shape[-2] // 2, :] = True
    mask[:, v.shape[-1] // 2] = True
    return torch.fft.ifft2(spectrum * mask).real


def nyquist_share(v: torch.Tensor) -> float:
    v = v - v.mean(dim=(-2, -1), keepdim=True)
    return float(nyquist_part(v).square().sum() / v.double().square().sum())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("student")
    ap.add_argument("critic")
    ap.add_argument("--teacher", default=str(ROOT / "src/hiar/assets/shapes-teacher.safetensors"))
    args = ap.parse_args()

    torch.manual_seed(0)
    world = default_world()
    prompts = [world.prompt(s) for s in es.held_out_specs(world, PROMPTS)]
    student = load_model(args.student).eval()
    gen = shapes_world(student)
    with torch.no_grad():
        x = es.sample_students(student, gen, prompts, list(range(PROMPTS)), 21, "hiar").float()
    teacher, critic = load_model(args.teacher).eval(), load_model(args.critic).eval()
    text = gen.text_encoder.encode(prompts)
    x_nyq = nyquist_part(x)
    print("sample nyquist share", round(nyquist_share(x), 4))
    for sigma in (0.05, 0.1, 0.2, 0.4, 0.6, 0.9):
        s = torch.full((PROMPTS,), sigma)
        xt = schedule.add_noise(x, torch.randn_like(x), s)
        with torch.no_grad():
            real = schedule.x0_from_velocity(xt, objectives.predict_velocity(teacher, xt, s, text), s)
            fake = schedule.x0_from_velocity(xt, objectives.predict_velocity(critic, xt, s, text), s)
        grad = objectives.dmd_gradient(x, fake, real)
        grad_nyq = nyquist_part(grad)
        cos = float((grad_nyq * x_nyq).sum() / (grad_nyq.norm() * x_nyq.norm() + 1e-12))
        print(f"sigma {sigma:.2f}: nyquist share real x0 {nyquist_share(real):.4f} fake x0 {nyquist_share(fake):.4f} "
              f"grad {nyquist_share(grad):.4f} "
              f"| cos(grad, sample) on the Nyquist part {cos:+.3f} (positive: the update removes the pattern)")


if __name__ == "__main__":
    main()
