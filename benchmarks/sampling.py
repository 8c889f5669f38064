"""Sampling throughput and latency: block-first vs hierarchical (unfused, fused, batched, pipelined).

    python benchmarks/sampling.py                       # toy preset, CPU, random weights
    python benchmarks/sampling.py --preset wan2.1-t2v-1.3b --device cuda --dtype bfloat16 --blocks 7

Prints a table and writes JSON (--json). Also measures the per-call times of the three kinds of
model call (denoise one block, fused write+denoise, write only) at a full cache, and feeds them to
a schedule simulator that predicts the pipelined makespan on D devices, so the multi-GPU speed-up
can be predicted where only one device exists.

Arithmetic (issue 3): per block, block-first does S + 1 block-sized units of work, HiAR 2S; on one
compute-bound device HiAR costs about 2S / (S + 1) of block-first, and with one device per stage
its throughput can reach (S + 1) / 2 of block-first.
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import sys
import time
from dataclasses import dataclass

import torch

from hiar.attention import block_causal
from hiar.model import build_model, get_config
from hiar.pipeline import PipelineJob, spawn_pipeline_timed
from hiar.sampling import ContextRule, GridSampler, Order, SamplerConfig

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def make_model(preset: str, seed: int, device: str = "cpu", dtype: str = "float32"):
    torch.manual_seed(seed)
    return build_model(preset, device=device, dtype=DTYPES[dtype]).eval()


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def run_sampler(model, text, cfg: SamplerConfig, latent, blocks: int, device: str) -> dict:
    sampler = GridSampler(model, cfg, text, seeds=[0], latent_shape=latent)
    done = []
    sync(device)
    t0 = time.perf_counter()
    for _n, _block in sampler.stream(blocks):
        sync(device)
        done.append(time.perf_counter() - t0)
    wall = time.perf_counter() - t0
    return summarize(done, wall, cfg, sampler.report.model_calls)


def summarize(done: list[float], wall: float, cfg: SamplerConfig, calls: int | None) -> dict:
    S = cfg.num_steps
    gaps = [b - a for a, b in zip(done, done[1:])]
    steady = gaps[S:] or gaps  # after the pipeline has filled
    k = cfg.block_frames
    return {
        "frames_per_s": len(done) * k / wall,
        "steady_frames_per_s": k / statistics.median(steady) if steady else float("nan"),
        "first_block_latency_s": done[0],
        "steady_block_latency_s": statistics.median(steady) if steady else float("nan"),
        "model_calls": calls,
        "wall_s": wall,
    }


def call_times(model, text, latent, k: int, window: int, device: str, repeats: int) -> dict:
    """Seconds per model call at a full cache: denoise one block, fused (2 blocks), write only."""
    C, H, W = latent
    spec = block_causal(k, window)
    ctx = model.encode_text(text)
    cache = model.new_cache(spec)
    x = torch.randn(1, C, k, H, W, device=device, dtype=model.dtype)
    t = torch.full((1,), 500.0, device=device)
    with torch.no_grad():
        for _ in range(window // k + 1):  # fill the window
            model(x, t, ctx, attention=spec, cache=cache, write_frames=k)

        def timed(fn):
            fn()
            sync(device)
            samples = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                fn()
                sync(device)
                samples.append(time.perf_counter() - t0)
            return min(samples)  # the least-disturbed run: per-call times feed the simulator

        start = cache.next_frame
        frames1 = torch.arange(start, start + k)
        frames2 = torch.arange(start, start + 2 * k)
        x2 = torch.cat([x, x], dim=2)
        # Reads only (no write) so the cache stays the same between repeats.
        denoise = timed(lambda: model(x, t, ctx, attention=spec, cache=cache, frames=frames1))
        fused = timed(lambda: model(x2, t, ctx, attention=spec, cache=cache, frames=frames2))
    return {"denoise": denoise, "fused": fused, "write": denoise}


@dataclass
class Costs:
    denoise: float  # one block, no write
    fused: float  # context write + next block's denoise
    write: float  # a trailing write alone
    comm: float = 0.0  # hand-off between stages on different devices


def simulate_pipeline(costs: Costs, S: int, N: int, devices: int) -> float:
    """Makespan of hierarchical sampling, stage j on device floor(j * D / S), diagonal order.

    Cell (n, j) starts when (n, j-1) has arrived (plus ``comm`` across devices) and (n-1, j) is
    done; each device runs its cells one at a time in anti-diagonal order. Cell cost: ``denoise``
    for block 0, ``fused`` after; each stage ends with a trailing ``write``.
    """
    device_of = [j * devices // S for j in range(S)]
    free = [0.0] * devices
    end: dict[tuple[int, int], float] = {}
    for d in range(N + S - 1):
        for j in range(S):
            n = d - j
            if not 0 <= n < N:
                continue
            dev = device_of[j]
            ready = free[dev]
            if j > 0:
                ready = max(ready, end[n, j - 1] + (costs.comm if device_of[j - 1] != dev else 0.0))
            if n > 0:
                ready = max(ready, end[n - 1, j])
            end[n, j] = ready + (costs.fused if n > 0 else costs.denoise)
            free[dev] = end[n, j]
    for j in range(S):
        free[device_of[j]] = max(free[device_of[j]], end[N - 1, j]) + costs.write
    return max(free)


def simulate_block_first(costs: Costs, S: int, N: int) -> float:
    """Block-first on one device: per block one fused call (previous clean write + first step), S - 1 denoises."""
    return costs.denoise + (S - 1) * costs.denoise + (N - 1) * (costs.fused + (S - 1) * costs.denoise) + costs.write


def table(rows: list[dict], cols: list[str]) -> str:
    widths = [max(len(c), *(len(fmt(r.get(c))) for r in rows)) for c in cols]
    line = "  ".join(c.ljust(w) for c, w in zip(cols, widths))
    out = [line, "  ".join("-" * w for w in widths)]
    out += ["  ".join(fmt(r.get(c)).ljust(w) for c, w in zip(cols, widths)) for r in rows]
    return "\n".join(out)


def fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "-" if v is None else str(v)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="toy")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32", choices=list(DTYPES))
    ap.add_argument("--height", type=int, default=None, help="latent height (default: 32 toy, 60 Wan)")
    ap.add_argument("--width", type=int, default=None, help="latent width (default: 32 toy, 104 Wan)")
    ap.add_argument("--blocks", type=int, default=28, help="blocks per run (28 x 3 frames = the paper's 20 s at 84 frames)")
    ap.add_argument("--window", type=int, default=21, help="KV window in latent frames")
    ap.add_argument("--threads", type=int, default=2, help="torch threads for single-process runs")
    ap.add_argument("--pipeline-steps", type=int, default=2, help="steps of the measured pipelined run (one process each)")
    ap.add_argument("--no-pipeline", action="store_true", help="skip the multi-process measurement")
    ap.add_argument("--repeats", type=int, default=30, help="timed repeats per call kind (the minimum is kept)")
    ap.add_argument("--trials", type=int, default=3, help="runs of the pipelined comparison (best is kept)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    cfg_model = get_config(args.preset)
    wan = cfg_model.in_dim == 16
    H = args.height or (60 if wan else 32)
    W = args.width or (104 if wan else 32)
    latent = (cfg_model.in_dim, H, W)
    model = make_model(args.preset, 0, args.device, args.dtype)
    text = torch.randn(1, min(cfg_model.text_len, 16), cfg_model.text_dim, device=args.device)
    k, S = 3, 4
    base = dict(window=args.window, block_frames=k)
    runs = {
        "block-first (Self-Forcing)": SamplerConfig(context=ContextRule.CLEAN, order=Order.BLOCK_FIRST, **base),
        "hierarchical unfused": SamplerConfig(context=ContextRule.OUTPUT, order=Order.DIAGONAL, fused=False, **base),
        "hierarchical fused": SamplerConfig(context=ContextRule.OUTPUT, order=Order.DIAGONAL, **base),
        "hierarchical diagonal batched": SamplerConfig(context=ContextRule.OUTPUT, order=Order.DIAGONAL, batched=True, **base),
    }
    rows = []
    run_sampler(model, text, runs["hierarchical fused"], latent, 2, args.device)  # warm-up
    for name, cfg in runs.items():
        r = run_sampler(model, text, cfg, latent, args.blocks, args.device)
        rows.append({"method": name, "steps": S, "procs": 1, "threads": args.threads, **r})
        print(f"  measured {name}", file=sys.stderr)

    # Pipelined, measured for real: S' steps on S' processes of one thread each, against
    # block-first in one process of one thread (the like-for-like comparison).
    if not args.no_pipeline and args.device == "cpu":
        P = args.pipeline_steps
        levels = tuple(torch.linspace(1, 0, P + 1).tolist())
        hcfg = SamplerConfig(levels=levels, context=ContextRule.OUTPUT, **base)
        bcfg = SamplerConfig(levels=levels, context=ContextRule.CLEAN, order=Order.BLOCK_FIRST, **base)
        torch.set_num_threads(1)
        # Best of `--trials` for both sides, interleaved so both see the same (noisy, shared) machine.
        job = PipelineJob(functools.partial(make_model, args.preset, 0), hcfg, text.cpu(), [0], latent, args.blocks, threads_per_rank=1)
        refs, pipes = [], []
        for _ in range(args.trials):
            refs.append(run_sampler(model, text, bcfg, latent, args.blocks, args.device))
            pipes.append(spawn_pipeline_timed(job))
        ref = max(refs, key=lambda r: r["frames_per_s"])
        res = min(pipes, key=lambda r: r.wall_s)
        rows.append({"method": "block-first (Self-Forcing)", "steps": P, "procs": 1, "threads": 1, **ref})
        pr = summarize(res.block_done_s, res.wall_s, hcfg, None)
        pr["model_calls"] = P * (args.blocks + 1)
        rows.append({"method": "hierarchical pipelined", "steps": P, "procs": P, "threads": 1, **pr})
        rows[-1]["speedup_vs_block_first"] = pr["frames_per_s"] / ref["frames_per_s"]
        torch.set_num_threads(args.threads)
        print("  measured pipelined", file=sys.stderr)

    bf = rows[0]["frames_per_s"]
    for r in rows[:4]:
        r["speedup_vs_block_first"] = r["frames_per_s"] / bf
    cols = ["method", "steps", "procs", "threads", "frames_per_s", "steady_frames_per_s", "first_block_latency_s",
            "steady_block_latency_s", "model_calls", "speedup_vs_block_first"]
    print(f"\nSampling, preset {args.preset} on {args.device} ({args.dtype}), latent {latent}, {args.blocks} blocks of {k} frames, window {args.window}")
    print(table(rows, cols))

    # Per-call costs and the schedule simulator.
    ct = call_times(model, text, latent, k, args.window, args.device, args.repeats)
    costs = Costs(ct["denoise"], ct["fused"], ct["write"])
    hier_ratio = rows[2]["wall_s"] / rows[0]["wall_s"]
    arithmetic = 2 * S / (S + 1)
    sims = []
    bf_time = simulate_block_first(costs, S, args.blocks)
    for D in (1, 2, 4):
        span = simulate_pipeline(costs, S, args.blocks, D)
        sims.append({"devices": D, "makespan_s": span, "frames_per_s": args.blocks * k / span, "speedup_vs_block_first": bf_time / span})
    print(f"\nPer-call seconds at a full cache (min of {args.repeats}): denoise {costs.denoise:.4g}, fused {costs.fused:.4g}, write {costs.write:.4g}")
    print(f"One process: hierarchical fused / block-first time = {hier_ratio:.3f} (arithmetic 2S/(S+1) = {arithmetic:.3f}; target <= {1.1 * arithmetic:.3f})")
    print(f"\nSimulated pipelined schedule, S = {S}, N = {args.blocks} (block-first on 1 device: {bf_time:.4g} s)")
    print(table(sims, ["devices", "makespan_s", "frames_per_s", "speedup_vs_block_first"]))

    result = {
        "preset": args.preset, "device": args.device, "dtype": args.dtype, "latent": latent, "blocks": args.blocks,
        "window": args.window, "runs": rows, "call_seconds": ct, "hierarchical_over_block_first_time": hier_ratio,
        "arithmetic_ratio": arithmetic, "simulated": sims,
    }
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
