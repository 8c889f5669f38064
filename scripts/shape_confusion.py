"""Does a bidirectional model draw the asked shapes? The shapes it draws for each asked shape, against real clips.

    python scripts/shape_confusion.py real src/hiar/assets/shapes-teacher.safetensors
    python scripts/shape_confusion.py runs/x/checkpoints/step-0001000 --frames 3 --json out.json

For each model (a checkpoint path, or ``real`` for the world's own rendering): videos of ``--prompts``
held-out prompts (the evaluation's specs, ``sample_spec((12345, i))``), sampled as
``scripts/evaluate_shapes.py`` samples the teacher (Euler on the shift-``--shift`` grid, CFG
``--guidance`` against the null prompt, seed i for prompt i). In every frame, each asked object's
colour's largest component is read as a shape by its fill ratio (``classify_fill``, the semantic
score's rule), which gives:

* the confusion of asked against drawn shapes (rows asked, columns drawn: circle, square, triangle),
  the accuracy (share on the diagonal; 1/3 is chance) and the mean fill ratio per asked shape
  (real clips: circle ~0.77, square ~0.93, triangle ~0.61; a model that draws blobs gives ~0.77 for all);
* how often the asked colour is missing, and the shapes scorer's semantic score and its colour, shape
  and count parts (means over prompts).

A model whose fill ratios do not depend on the asked shape has not learnt shapes, however good its colours.
``--denoise SIGMA`` scores the model's one-step clean estimate of the real clips noised to SIGMA
instead: whether it keeps a shape it can see (and is told). ``--shape-words`` asks one-object prompts
as each shape with the same seeds: the shape word alone, with no colour-to-shape binding to learn.
``--sampler renoise`` samples with the students' stochastic transition instead of the ODE.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import evaluate_shapes as ev  # noqa: E402

SHAPES = ("circle", "square", "triangle")
PROMPT_SEED = ev.PROMPT_SEED


def videos_of(source: str, world, specs: list, frames: int, *, steps: int, shift: float, guidance: float,
              device: str = "cpu", denoise: float | None = None, transition: str = "euler") -> np.ndarray:
    """uint8 ``[B, F, H, W, 3]``: the real clips, or the model's samples; with ``denoise`` sigma, the
    model's one-step clean estimate ``x_t - sigma v`` of the real clips noised to that level."""
    if source == "real":
        return ev.real_clips(world, specs, frames)
    from hiar import schedule
    from hiar.checkpoint import load_model
    from hiar.generate import shapes_world

    path = Path(source)
    if not path.exists():
        raise FileNotFoundError(f"shape_confusion: {path}: no such checkpoint")
    model = load_model(path, device=device).eval()
    gw = shapes_world(model)
    text = gw.text_encoder.encode([world.prompt(s) for s in specs]).to(device)
    with torch.no_grad():
        if denoise is None:
            latents = ev.sample_teacher(model, text, list(range(len(specs))), gw.latent_shape, num_frames=frames,
                                        steps=steps, shift=shift, guidance=guidance, transition=transition)
        else:
            real = ev.real_clips(world, specs, frames)
            x0 = gw.codec.encode(torch.from_numpy(real).permute(0, 4, 1, 2, 3).float() / 127.5 - 1).to(device)
            noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(0)).to(device)
            xt = schedule.add_noise(x0, noise, denoise)
            t = torch.full((len(specs),), schedule.timestep(denoise), device=device)
            latents = xt - denoise * model(xt, t, text).float()
    return ev.as_uint8(gw.codec.decode(latents.float().cpu()).clamp(-1, 1))


def confusion(videos: np.ndarray, specs: list, scorer) -> dict:
    """Asked-vs-drawn shape counts over (video, frame, asked object), and the scorer's semantic parts."""
    from hiar.eval.shapes_scores import classify_fill

    counts = np.zeros((3, 3), np.int64)
    fills: dict[str, list[float]] = {s: [] for s in SHAPES}
    missing = asked = 0
    parts: dict[str, list[float]] = {k: [] for k in ("semantic", "colour", "shape", "count")}
    for video, spec in zip(videos, specs):
        scores = scorer.score(video, scorer.world.prompt(spec))
        parts["semantic"].append(scores.semantic)
        for k in ("colour", "shape", "count"):
            parts[k].append(scores.details[k])
        det = scorer.detect(video.astype(np.float32) / 255.0)
        for obj in spec.objects:
            k = scorer.color_names.index(obj.color)
            for f in range(det.num_frames):
                asked += 1
                ids = det.in_frame(f, k)
                if not len(ids):
                    missing += 1
                    continue
                fill = float(det.fill[ids[0]])
                counts[SHAPES.index(obj.shape), SHAPES.index(classify_fill(fill))] += 1
                fills[obj.shape].append(fill)
    return {"confusion": counts.tolist(), "accuracy": float(np.trace(counts) / max(counts.sum(), 1)),
            "fill_mean": {s: float(np.mean(v)) if v else None for s, v in fills.items()},
            "missing": missing / max(asked, 1), **{k: float(np.mean(v)) for k, v in parts.items()}}


def one_object_specs(world, n: int, shape: str) -> list:
    """The first object of each of the first ``n`` held-out specs, alone on its background, as ``shape``."""
    import dataclasses

    return [dataclasses.replace(spec, objects=(dataclasses.replace(spec.objects[0], shape=shape),))
            for spec in ev.held_out_specs(world, n)]


def shape_word_effect(source: str, world, scorer, n: int, frames: int, sheet_rows: dict | None = None,
                      **sampling) -> dict:
    """One-object prompts (no colour-to-shape binding to learn): ``n`` objects, each asked as a circle, a
    square and a triangle with the same seeds (a model) or drawn as each (``real``); their confusion.
    ``sheet_rows``: filled with ``"<source> <shape>"`` -> the middle frame of each of the ``n`` videos."""
    per_shape = [one_object_specs(world, n, shape) for shape in SHAPES]
    videos = [videos_of(source, world, specs, frames, **sampling) for specs in per_shape]
    if sheet_rows is not None:
        for shape, v in zip(SHAPES, videos):
            sheet_rows[f"{Path(source).name} {shape}"] = v[:, frames // 2]
    return confusion(np.concatenate(videos), [spec for specs in per_shape for spec in specs], scorer)


def table(rows: dict[str, dict]) -> str:
    lines = [f"{'model':44s} {'accuracy':>8s} {'fill c/s/t':>17s} {'missing':>7s} {'semantic':>8s} "
             f"{'colour':>6s} {'shape':>6s} {'count':>6s}  confusion (rows asked c/s/t)"]
    for name, r in rows.items():
        fill = "/".join("  - " if r["fill_mean"][s] is None else f"{r['fill_mean'][s]:.2f}" for s in SHAPES)
        lines.append(f"{name[-44:]:44s} {r['accuracy']:8.3f} {fill:>17s} {r['missing']:7.3f} {r['semantic']:8.3f} "
                     f"{r['colour']:6.3f} {r['shape']:6.3f} {r['count']:6.3f}  {r['confusion']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("models", nargs="+", help="checkpoint paths, or 'real' for the world's own clips")
    p.add_argument("--prompts", type=int, default=64)
    p.add_argument("--frames", type=int, default=21)
    p.add_argument("--steps", type=int, default=ev.TEACHER_STEPS)
    p.add_argument("--shift", type=float, default=ev.TEACHER_SHIFT)
    p.add_argument("--guidance", type=float, default=ev.TEACHER_GUIDANCE)
    p.add_argument("--sampler", choices=("euler", "renoise"), default="euler",
                   help="euler: the ODE, as the evaluation samples the teacher; renoise: the students' stochastic "
                        "transition (clean estimate, then fresh noise to the next level)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--denoise", type=float, default=None, metavar="SIGMA",
                   help="score the model's one-step clean estimate of the real clips noised to SIGMA instead of samples "
                        "(does it keep a shape it can see?)")
    p.add_argument("--shape-words", action="store_true",
                   help="instead: --prompts one-object prompts, each asked as every shape with the same seeds "
                        "(the shape word alone, no binding of shapes to colours)")
    p.add_argument("--sheet", default=None, metavar="PNG",
                   help="with --shape-words: a picture of what was drawn, a row per model and asked shape, a column "
                        "per object (its middle frame; the same seed down each column)")
    p.add_argument("--json", default=None, help="also write the numbers here")
    args = p.parse_args(argv)
    if args.prompts < 1 or args.frames < 3:
        print("shape_confusion: --prompts must be >= 1 and --frames >= 3 (motion needs 3 frames)", file=sys.stderr)
        return 2
    if args.sheet and not args.shape_words:
        print("shape_confusion: --sheet needs --shape-words (it pictures the one-object prompts)", file=sys.stderr)
        return 2
    from hiar.eval.shapes_scores import ShapesScorer
    from hiar.world.shapes import default_world

    world = default_world()
    scorer = ShapesScorer(world)
    specs = ev.held_out_specs(world, args.prompts)
    sampling = dict(steps=args.steps, shift=args.shift, guidance=args.guidance, device=args.device,
                    denoise=args.denoise, transition=args.sampler)
    rows, sheet_rows = {}, {}
    for source in args.models:
        try:
            if args.shape_words:
                rows[source] = shape_word_effect(source, world, scorer, args.prompts, args.frames, sheet_rows, **sampling)
            else:
                rows[source] = confusion(videos_of(source, world, specs, args.frames, **sampling), specs, scorer)
        except FileNotFoundError as err:
            print(err, file=sys.stderr)
            return 1
    print(table(rows))
    if args.sheet:
        from hiar.video import contact_sheet

        contact_sheet(sheet_rows, args.sheet, columns=args.prompts, cell=64, column_label="#",
                      title="one-object prompts asked as each shape (same seed down a column)")
        print(f"sheet: {args.sheet}")
    if args.json:
        Path(args.json).write_text(json.dumps({"settings": vars(args), "models": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
