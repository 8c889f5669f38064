"""How given frames should enter the context: clean (the released code) or at each stage's level.

    python scripts/measure_given_frames.py            # bundled HiAR student, 16 held-out prompts -> results/given-frames.json

For each held-out prompt (the specs of scripts/evaluate_shapes.py), the world renders a real clip;
its first ``--given`` frames are given to the bundled student (``generate(init_frames=...)``), which
continues for ``--frames`` frames, once with ``init_context`` clean and once at the stage levels
(same seed). Scored against the prompt (:class:`hiar.eval.shapes_scores.ShapesScorer`): the first
generated segment (as many frames as were given: does the continuation keep the clip's objects?) and
the whole continuation; plus the jump at the seam (mean absolute pixel change from the last given
frame to the first generated one, against the clip's own mean frame-to-frame change). The same
student without given frames is the reference row.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))


def measure(method: str, prompts: int, given: int, frames: int, seed: int) -> dict:
    from evaluate_shapes import held_out_specs

    from hiar.checkpoint import load_model
    from hiar.eval.shapes_scores import ShapesScorer
    from hiar.generate import bundled_model_path, generate, method_config, shapes_world
    from hiar.sampling import InitContext
    from hiar.world.shapes import default_world, render_clip

    shapes = default_world()
    model = load_model(bundled_model_path(method)).eval()
    world = shapes_world(model)
    scorer = ShapesScorer(world=None)
    rows: dict[str, list[dict]] = {"none": [], **{c.value: [] for c in InitContext}}
    for i, spec in enumerate(held_out_specs(shapes, prompts)):
        prompt = shapes.prompt(spec)
        clip, _ = render_clip(spec, given + frames)
        natural_step = float((clip[:, 1:] - clip[:, :-1]).abs().mean())
        for name in rows:
            init = None if name == "none" else clip[:, :given]
            cfg = method_config(method, window=21, **({} if name == "none" else {"init_context": InitContext(name)}))
            video, _ = generate(model, world, prompt, num_frames=frames, config=cfg, seed=seed + i,
                                init_frames=init, progress=False)
            out = video[:, (0 if init is None else given):]
            first = scorer.score(out[:, :given], prompt)
            whole = scorer.score(out, prompt)
            seam = float((out[:, 0] - clip[:, given - 1]).abs().mean()) if init is not None else None
            rows[name].append({"prompt": prompt, "first_semantic": first.semantic, "first_colour": first.details["colour"],
                               "first_shape": first.details["shape"], "semantic": whole.semantic, "dynamic": whole.dynamic,
                               "quality": whole.quality, "seam_jump": seam, "clip_step": natural_step})
    keys = ["first_semantic", "first_colour", "first_shape", "semantic", "dynamic", "quality", "seam_jump"]
    summary = {name: {k: float(np.mean([r[k] for r in rs])) for k in keys if rs[0][k] is not None}
               for name, rs in rows.items()}
    return {"method": method, "prompts": prompts, "given_frames": given, "generated_frames": frames, "seed": seed,
            "clip_step": float(np.mean([r["clip_step"] for r in rows["none"]])), "summary": summary, "per_prompt": rows}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--method", default="hiar")
    p.add_argument("--prompts", type=int, default=16)
    p.add_argument("--given", type=int, default=6, help="given frames of the real clip (default: two blocks)")
    p.add_argument("--frames", type=int, default=24, help="frames to generate after them")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=str(ROOT / "results" / "given-frames.json"))
    args = p.parse_args(argv)
    torch.set_grad_enabled(False)
    result = measure(args.method, args.prompts, args.given, args.frames, args.seed)
    keys = list(result["summary"]["clean"])
    print(f"{args.method}: {args.prompts} held-out prompts, {args.given} given frames of a real clip, {args.frames} generated")
    print("init      " + "  ".join(f"{k:>14}" for k in keys))
    for name, s in result["summary"].items():
        print(f"{name:9} " + "  ".join(f"{s[k]:14.3f}" if k in s else f"{'-':>14}" for k in keys))
    print(f"(the real clip's own mean frame-to-frame change: {result['clip_step']:.3f})")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
