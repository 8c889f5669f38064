"""How long a training step waits for its shapes batch, with and without ``data.workers``.

    python benchmarks/data.py                      # batch 128 of 3-frame clips, 100 ms of work a step
    python benchmarks/data.py --batch 32 --work-ms 50 --workers 0 1 2 --json out.json

The consumer stands in for a GPU training step: it takes a batch (``source.batch`` at the trainer's
indices), then keeps its own CPU core busy for ``--work-ms`` (launching kernels holds a core; a
sleep would flatter the workers). Reported per worker count: the mean wait for a batch and the mean
step (wait + work), over ``--steps`` steps after ``--warmup`` (worker start-up excluded).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def measure(workers: int, batch: int, frames: int, work_s: float, steps: int, warmup: int) -> dict:
    from hiar.training.configs import DataSection
    from hiar.training.data import make_source, rank_indices

    source = make_source(DataSection(num_frames=frames, workers=workers), text_dim=64, text_len=16)
    waits, total = [], []
    for step in range(warmup + steps):
        t0 = time.perf_counter()
        source.batch(rank_indices(step, batch))
        t1 = time.perf_counter()
        while time.perf_counter() - t1 < work_s:  # a busy core, like a process launching GPU work
            pass
        if step >= warmup:
            waits.append(t1 - t0)
            total.append(time.perf_counter() - t0)
    return {"workers": workers, "wait_ms": 1000 * sum(waits) / steps, "step_ms": 1000 * sum(total) / steps}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--frames", type=int, default=3)
    p.add_argument("--work-ms", type=float, default=100.0)
    p.add_argument("--workers", type=int, nargs="*", default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--json")
    args = p.parse_args()
    rows = [measure(w, args.batch, args.frames, args.work_ms / 1000, args.steps, args.warmup) for w in args.workers]
    print(f"\nShapes batches of {args.batch} x {args.frames}-frame clips, {args.work_ms:g} ms of work a step "
          f"({os.cpu_count()} cores)\n")
    print("| data.workers | wait for the batch (ms) | step (ms) |")
    print("|---:|---:|---:|")
    for r in rows:
        print(f"| {r['workers']} | {r['wait_ms']:.1f} | {r['step_ms']:.1f} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"settings": vars(args), "results": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
