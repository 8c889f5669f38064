"""Time one block forward of the Wan DiT with a KV cache holding a window of context.

Rows (k frames per block, the cache already full: a window of W frames minus the block itself):

* ``denoise``   - a block of k new frames reading the cache (one student step of one block);
* ``write``     - a block of k context frames written into the cache (the context re-run);
* ``separate``  - the two above, one after the other;
* ``fused``     - both in one call over 2k frames (write the first k, denoise the second k);
* ``bidir clip``- one bidirectional forward over a whole clip (the teacher's call).

    python benchmarks/model_forward.py                          # toy preset, CPU, float32
    python benchmarks/model_forward.py --device cuda --dtype bfloat16 --preset wan2.1-t2v-1.3b

The 1.3B preset defaults to 480x832 video (latent 60x104, 1560 tokens per frame). Without the
asked-for device the model is built on the meta device and only its parameter count is reported.
Results print as a table and, with ``--json PATH``, are written as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from hiar.attention import BIDIRECTIONAL, block_causal  # noqa: E402
from hiar.model import PRESETS, WanModel, count_parameters  # noqa: E402

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# Latent frame size per preset: the shapes world is 32x32 pixels = latents; Wan2.1 at 480x832.
DEFAULT_SIZE = {"toy": (32, 32), "tiny": (8, 8), "wan2.1-t2v-1.3b": (60, 104)}


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="toy", choices=sorted(PRESETS))
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=sorted(DTYPES))
    p.add_argument("--height", type=int, help="latent height (default per preset)")
    p.add_argument("--width", type=int, help="latent width (default per preset)")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--block-frames", type=int, default=3)
    p.add_argument("--window", type=int, default=21,
                   help="attention window in frames, the block included (default 21: Self-Forcing's 21-frame KV cache)")
    p.add_argument("--sink", type=int, default=0)
    p.add_argument("--clip-frames", type=int, default=21, help="frames of the bidirectional row (0 to skip)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--json", type=Path, help="write the results here")
    p.add_argument("--allow-slow-cpu", action="store_true", help="time a full-size preset on the CPU anyway (hours)")
    return p.parse_args(argv)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device, warmup: int, repeats: int) -> list[float]:
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return times


def device_available(device: torch.device) -> bool:
    if device.type == "cuda":
        return torch.cuda.is_available()
    if device.type == "mps":
        return torch.backends.mps.is_available()
    return device.type == "cpu"


def main(argv=None) -> dict:
    args = parse(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = PRESETS[args.preset]
    device = torch.device(args.device)
    dtype = DTYPES[args.dtype]
    H, W = args.height or DEFAULT_SIZE.get(args.preset, (32, 32))[0], args.width or DEFAULT_SIZE.get(args.preset, (32, 32))[1]
    pt, ph, pw = cfg.patch_size
    tokens_per_frame = (H // ph) * (W // pw)
    k = args.block_frames
    spec = block_causal(k, args.window, args.sink)
    report = {
        "preset": args.preset, "device": str(device), "dtype": args.dtype, "latent_size": [H, W], "batch": args.batch,
        "block_frames": k, "window": args.window, "sink": args.sink, "tokens_per_frame": tokens_per_frame,
        "torch": torch.__version__, "host": platform.node(), "cpu_threads": torch.get_num_threads(), "results": [],
    }
    if device.type == "cuda" and torch.cuda.is_available():
        report["gpu"] = torch.cuda.get_device_name(device)

    # The 1.3B model on a CPU would take hours per call: build it, count it, time nothing.
    too_slow = device.type == "cpu" and cfg.dim >= 1024 and not args.allow_slow_cpu
    if not device_available(device) or too_slow:
        with torch.device("meta"):
            model = WanModel(cfg)
        report["params"] = count_parameters(model)
        why = "not available" if not device_available(device) else "too slow for this size (--allow-slow-cpu to time anyway)"
        report["note"] = f"device {device} {why}: built on the meta device only, nothing timed"
        print(f"{args.preset}: {report['params'] / 1e9:.3f} B parameters ({report['params']:,}); {report['note']}")
        write(args, report)
        return report

    torch.manual_seed(0)
    model = WanModel(cfg).to(device=device, dtype=dtype).eval()
    report["params"] = count_parameters(model)
    B = args.batch
    g = torch.Generator(device="cpu").manual_seed(0)

    def block(frames=k):
        return torch.randn(B, cfg.in_dim, frames, H, W, generator=g).to(device, dtype)

    ctx = model.encode_text(torch.randn(B, cfg.text_len, cfg.text_dim, generator=g).to(device, dtype))
    t_new = torch.full((B,), 750.0, device=device)
    t_ctx = torch.full((B,), 250.0, device=device)
    t_fused = torch.tensor([250.0] * k + [750.0] * k, device=device).expand(B, -1)

    with torch.inference_mode():
        cache = model.new_cache(spec)
        while cache.num_frames < (spec.cache_frames or 0):  # fill the window
            model(block(), t_ctx, ctx, attention=spec, cache=cache, write_frames=k)
        report["cache_frames"] = cache.num_frames
        report["cache_bytes"] = cache.nbytes()
        new, ctx_block, pair = block(), block(), block(2 * k)

        def denoise():
            model(new, t_new, ctx, attention=spec, cache=cache)

        def write_():
            model(ctx_block, t_ctx, ctx, attention=spec, cache=cache, write_frames=k)

        def separate():
            write_()
            denoise()

        def fused():
            model(pair, t_fused, ctx, attention=spec, cache=cache, write_frames=k)

        rows = [("denoise", k, denoise), ("write", k, write_), ("separate (write + denoise)", 2 * k, separate),
                ("fused (write + denoise)", 2 * k, fused)]
        if args.clip_frames:
            clip = block(args.clip_frames)
            rows.append(("bidir clip", args.clip_frames, lambda: model(clip, t_new, ctx, attention=BIDIRECTIONAL)))
        for name, frames, fn in rows:
            times = timed(fn, device, args.warmup, args.repeats)
            report["results"].append({
                "name": name, "frames": frames, "tokens": frames * tokens_per_frame * B,
                "median_ms": 1e3 * statistics.median(times), "min_ms": 1e3 * min(times),
                "mean_ms": 1e3 * statistics.fmean(times), "repeats": len(times),
            })
        assert cache.nbytes() == report["cache_bytes"], "the cache grew past its window"
    if device.type == "cuda":
        report["max_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30

    by_name = {r["name"]: r for r in report["results"]}
    report["fused_speedup"] = by_name["separate (write + denoise)"]["median_ms"] / by_name["fused (write + denoise)"]["median_ms"]
    print_table(report)
    write(args, report)
    return report


def print_table(report: dict) -> None:
    print(f"preset {report['preset']} ({report['params'] / 1e6:.2f} M params) on {report.get('gpu', report['device'])}, "
          f"{report['dtype']}, latent {report['latent_size'][0]}x{report['latent_size'][1]} "
          f"({report['tokens_per_frame']} tokens/frame), batch {report['batch']}, k={report['block_frames']}, "
          f"window {report['window']} (cache {report['cache_frames']} frames, {report['cache_bytes'] / 2**20:.1f} MiB)")
    print(f"{'call':<28}{'frames':>7}{'tokens':>9}{'median ms':>12}{'min ms':>10}")
    for r in report["results"]:
        print(f"{r['name']:<28}{r['frames']:>7}{r['tokens']:>9}{r['median_ms']:>12.2f}{r['min_ms']:>10.2f}")
    print(f"fused / separate speed-up: {report['fused_speedup']:.2f}x")


def write(args, report: dict) -> None:
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.json.with_name(args.json.name + ".tmp")
        tmp.write_text(json.dumps(report, indent=2))
        os.replace(tmp, args.json)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
