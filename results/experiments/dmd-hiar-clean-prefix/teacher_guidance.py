"""The teacher's 21-frame samples at other CFG scales (held-out prompts 0-7): what DMD's real score
targets. `real_guidance: 0` (the recipe) is CFG 1, the conditional prediction alone.

    .venv/bin/python results/experiments/dmd-hiar-clean-prefix/teacher_guidance.py 1 --out teacher-cfg.json

About 11 minutes a scale on 2 CPU cores (30 Euler steps over 16 videos of 21 frames)."""
import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "scripts"))
import evaluate_shapes as es  # noqa: E402
from hiar.eval.drift import DriftSuite  # noqa: E402
from hiar.eval.shapes_scores import ShapesScorer  # noqa: E402
from hiar.world.shapes import default_world  # noqa: E402

parser = argparse.ArgumentParser()
parser.add_argument("guidance", type=float, nargs="+")
parser.add_argument("--teacher", default="src/hiar/assets/shapes-teacher.safetensors")
parser.add_argument("--prompts", type=int, default=8)
parser.add_argument("--out", required=True)
args = parser.parse_args()

world = default_world()
specs = es.held_out_specs(world, args.prompts)
scorer, suite = ShapesScorer(world, reference_clips=8), DriftSuite(segments=5)
teacher, models = es.Entry(es.TEACHER_LABEL, "teacher", args.teacher), {}
results = {}
for g in args.guidance:
    # the evaluation's own teacher job (sampling and scoring), at another guidance
    settings = es.Settings(num_prompts=args.prompts, teacher_guidance=g)
    payload, _ = es.run_job(teacher, es.TEACHER_FRAMES, settings, world, specs, scorer, suite, models)
    videos = payload["per_video"]
    details = {k: sum(v["details"][k] for v in videos) / len(videos) for k in videos[0]["details"]}
    results[str(g)] = {k: payload["scores"][k]["mean"] for k in es.SCORE_KEYS} | {"details": details}
    print(g, json.dumps(results[str(g)]), flush=True)
    Path(args.out).write_text(json.dumps({"teacher": args.teacher, "frames": es.TEACHER_FRAMES,
                                          "steps": es.TEACHER_STEPS, "shift": es.TEACHER_SHIFT,
                                          "prompt_specs": [[es.PROMPT_SEED, i] for i in range(len(specs))],
                                          "seeds": list(range(len(specs))), "by_guidance": results}, indent=1) + "\n")
