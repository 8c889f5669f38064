"""Seconds per step and memory peak of every training stage of the shapes recipe (toy preset, or ``--preset``).

    python benchmarks/training.py                 # CPU (or --device cuda), all stages
    python benchmarks/training.py --stages teacher dmd_hiar --steps 3 --json out.json

Each stage runs in its own process (so its memory peak is its own) from the recipe's config in
``configs/shapes/`` - same model, batch and clip size - with inputs made up for timing: a randomly
initialised toy teacher and a random trajectory set of the recipe's shape. Step times come from the
trainer's own ``log.jsonl`` (one record per step, warm-up steps dropped). For DMD a step is one
iteration (a critic update, plus a generator update every ``critic_updates_per_generator``-th), so the
mean is taken over whole cycles; the generator and critic-only iterations are also shown.

The trajectories stage is timed on one forward batch of a shortened ODE on the CPU (the full ODE on a
GPU) and scaled to the recipe's steps (cost is linear in the steps); its "step" is one trajectory.
Every stage is timed in float32 and in bfloat16 autocast, side by side (``--dtypes`` to pick). The
table ends with the recipe total: the ``steps`` of each stage that scripts/train_shapes_bundle.sh runs,
each in its own config's dtype.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "configs" / "shapes"
STAGES = ["teacher_short", "teacher", "trajectories", "ode_init", "diffusion_forcing", "dmd_hiar", "dmd_self_forcing",
          "dmd_causvid"]
# What scripts/train_shapes_bundle.sh runs (diffusion forcing is optional and not in it).
RECIPE_ORDER = ["teacher_short", "teacher", "trajectories", "ode_init", "dmd_hiar", "dmd_self_forcing", "dmd_causvid"]
DTYPES = ["float32", "bfloat16"]


def prepare(work: Path, preset: str = "toy") -> None:
    """A random teacher of ``preset`` (its head made non-zero) and a random trajectory set of the recipe's shape."""
    from hiar.checkpoint import save_model
    from hiar.model import build_model
    from hiar.training import load_stage_config
    from hiar.training.trajectories import shard_name, write_manifest, write_shard

    torch.manual_seed(0)
    model = build_model(preset)
    with torch.no_grad():
        model.head.head.weight.normal_(0, 0.02)
    save_model(model, work / "teacher.safetensors")
    traj = load_stage_config(RECIPE / "trajectories.yaml")
    levels = traj.student.levels
    C, F, H, W = 3, traj.data.num_frames, 32, 32
    n = 32
    lat = torch.randn(n, len(levels), C, F, H, W).to(torch.float16)
    text = torch.randn(n, model.cfg.text_len, model.cfg.text_dim)
    folder = work / "trajectories"
    write_shard(folder / shard_name(0), lat, text, levels, list(range(n)), ["a red circle"] * n, {})
    write_manifest(folder, n, 1, levels, (C, F, H, W), {})


def overrides(stage: str, work: Path, device: str, steps: int, dtype: str) -> dict:
    teacher = str(work / "teacher.safetensors")
    o = {"output_dir": str(work / "out" / f"{stage}-{dtype}"), "device": device, "dtype": dtype, "steps": steps, "log_every": 1,
         "checkpoint_every": 10**6, "progress": False, "tensorboard": False, "model.checkpoint": teacher,
         "model.preset": None}  # the checkpoint's architecture (teacher_short.yaml names the toy preset)
    if stage == "ode_init":
        o["trajectories"] = str(work / "trajectories")
    if stage.startswith("dmd"):
        o["teacher.checkpoint"] = teacher
        if stage == "dmd_hiar":
            o["fkl.trajectories"] = str(work / "trajectories")
    return o


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def worker(stage: str, work: Path, device: str, steps: int, warmup: int, dtype: str) -> dict:
    from hiar.training import load_stage_config, run_stage

    if stage == "trajectories":
        return trajectories_worker(work, device, dtype)
    cfg0 = load_stage_config(RECIPE / f"{stage}.yaml")
    ratio = getattr(cfg0, "critic_updates_per_generator", 1) if stage.startswith("dmd") else 1
    warm = ratio * max(1, -(-warmup // ratio)) if ratio > 1 else warmup
    timed = ratio * max(1, -(-steps // ratio)) if ratio > 1 else steps
    cfg = load_stage_config(RECIPE / f"{stage}.yaml", overrides(stage, work, device, warm + timed, dtype))
    run_stage(cfg)
    records = [json.loads(line) for line in (Path(cfg.output_dir) / "log.jsonl").read_text().splitlines()]
    times = {r["step"]: r["sec_per_step"] for r in records if "sec_per_step" in r}
    kept = [s for s in sorted(times) if s > warm]
    out = {"stage": stage, "dtype": dtype, "recipe_dtype": cfg0.dtype, "batch_size": cfg.batch_size,
           "sec_per_step": sum(times[s] for s in kept) / len(kept), "recipe_steps": cfg0.steps, "timed_steps": len(kept)}
    if ratio > 1:
        gen = [times[s] for s in kept if (s - 1) % ratio == 0]
        critic = [times[s] for s in kept if (s - 1) % ratio]
        out["generator_iteration_s"] = sum(gen) / len(gen)
        out["critic_iteration_s"] = sum(critic) / len(critic)
    out["peak_memory_mb"] = peak_memory_mb(torch.device(cfg.device if cfg.device != "auto" else
                                                        ("cuda" if torch.cuda.is_available() else "cpu")))
    return out


def trajectories_worker(work: Path, device: str, dtype: str) -> dict:
    from hiar import schedule
    from hiar.training import load_stage_config
    from hiar.training.stages.trajectories import TrajectoriesStage
    from hiar.training.trainer import Trainer

    cfg0 = load_stage_config(RECIPE / "trajectories.yaml")
    dev = torch.device("cuda" if device in ("auto", "cuda") and torch.cuda.is_available() else device if device != "auto" else "cpu")
    short = cfg0.ode_steps if dev.type == "cuda" else 4
    o = overrides("trajectories", work, device, 0, dtype)
    for k in ("steps", "checkpoint_every"):
        o.pop(k)
    o["ode_steps"] = short
    cfg = load_stage_config(RECIPE / "trajectories.yaml", o)
    trainer = Trainer(cfg, TrajectoriesStage)
    stage = trainer.stage
    stage.setup()
    batch = list(range(cfg.batch_size))
    stage.generate(batch[:1])  # warm-up
    t0 = time.perf_counter()
    stage.generate(batch)
    dt = time.perf_counter() - t0
    full = len(schedule.uniform_levels(cfg0.ode_steps, cfg0.ode_shift, include=cfg0.student.levels)) - 1
    done = len(stage.grid) - 1
    per_traj = dt / len(batch) * full / done
    return {"stage": "trajectories", "dtype": dtype, "recipe_dtype": cfg0.dtype, "batch_size": cfg.batch_size,
            "sec_per_step": per_traj, "recipe_steps": cfg0.num_samples,
            "timed_steps": len(batch), "note": f"per trajectory, {done}-step ODE scaled to {full}",
            "peak_memory_mb": peak_memory_mb(dev)}


def fmt_time(s: float) -> str:
    return f"{s / 3600:.1f} h" if s >= 3600 else f"{s / 60:.0f} min" if s >= 60 else f"{s:.0f} s"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", help="cpu | cuda | auto")
    p.add_argument("--stages", nargs="*", default=STAGES, choices=STAGES)
    p.add_argument("--steps", type=int, default=3, help="timed steps per stage (DMD: rounded up to whole cycles)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads per stage (default: torch's)")
    p.add_argument("--dtypes", nargs="*", default=DTYPES, choices=DTYPES,
                   help="time every stage in each (default: both, side by side); the recipe total uses each config's own")
    p.add_argument("--preset", default="toy", help="the model every stage trains (a hiar.model preset; the recipe's is toy)")
    p.add_argument("--json", help="also write the results here")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--dtype", help=argparse.SUPPRESS)
    p.add_argument("--workdir", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.worker:
        print("RESULT " + json.dumps(worker(args.worker, Path(args.workdir), args.device, args.steps, args.warmup, args.dtype)))
        return 0

    with tempfile.TemporaryDirectory(prefix="hiar-bench-train-") as tmp:
        work = Path(tmp)
        prepare(work, args.preset)
        results = []
        for stage in args.stages:
            for dtype in args.dtypes:
                cmd = [sys.executable, __file__, "--worker", stage, "--workdir", str(work), "--device", args.device,
                       "--steps", str(args.steps), "--warmup", str(args.warmup), "--dtype", dtype] + (
                           ["--threads", str(args.threads)] if args.threads else [])
                proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
                line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
                if proc.returncode or line is None:
                    print(f"{stage} ({dtype}): failed\n{proc.stderr[-3000:]}", file=sys.stderr)
                    return 1
                results.append(json.loads(line[7:]))
                print(f"  {stage} ({dtype}): {results[-1]['sec_per_step']:.3f} s/step", file=sys.stderr, flush=True)

    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    name = torch.cuda.get_device_name() if device.startswith("cuda") else \
        f"CPU, {torch.get_num_threads()} thread{'s' if torch.get_num_threads() > 1 else ''} of {os.cpu_count()} cores"
    print(f"\nTraining step times, {args.preset} preset, shapes recipe configs ({name}; torch {torch.__version__})\n")
    cols = " | ".join(f"{d} s/step" for d in args.dtypes)
    print(f"| stage | batch/proc | {cols} | recipe dtype | recipe steps | recipe time | peak memory |")
    print("|---|---:|" + "---:|" * len(args.dtypes) + "---|---:|---:|---:|")
    by: dict[str, dict[str, dict]] = {}
    for r in results:
        by.setdefault(r["stage"], {})[r["dtype"]] = r
    recipe_s: dict[str, float] = {}
    for stage, runs in by.items():
        first = next(iter(runs.values()))
        cells = []
        for d in args.dtypes:
            r = runs.get(d)
            extra = ""
            if r and "generator_iteration_s" in r:
                extra = f" (gen. {r['generator_iteration_s']:.2f}, critic {r['critic_iteration_s']:.2f})"
            cells.append(f"{r['sec_per_step']:.3f}{extra}" if r else "-")
        own = runs.get(first["recipe_dtype"])
        if own is not None:
            recipe_s[stage] = own["sec_per_step"] * own["recipe_steps"]
        unit = " per trajectory" if stage == "trajectories" else ""
        mem = max(r["peak_memory_mb"] for r in runs.values())
        print(f"| {stage} | {first['batch_size']} | {' | '.join(cells)}{unit} | {first['recipe_dtype']} | {first['recipe_steps']} | "
              f"{fmt_time(recipe_s[stage]) if stage in recipe_s else '-'} | {mem:.0f} MiB" + (" RSS" if device == "cpu" else "") + " |")
    if all(s in recipe_s for s in RECIPE_ORDER):
        total = sum(recipe_s[s] for s in RECIPE_ORDER)
        print(f"\nRecipe total ({' -> '.join(RECIPE_ORDER)}, each stage in its config's dtype): {fmt_time(total)} "
              f"({total / 3600:.2f} h) on this machine")
    else:
        print(f"\n(recipe total needs every stage of {RECIPE_ORDER} timed in its config's dtype)")
    if args.json:
        Path(args.json).write_text(json.dumps({"device": name, "preset": args.preset, "results": results,
                                               "recipe_seconds": recipe_s}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
