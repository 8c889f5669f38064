"""``hiar eval drift VIDEOS...`` and ``hiar eval shapes VIDEOS... --prompts FILE``.

VIDEOS are mp4 files or folders; a folder is a method: its ``*.mp4`` files (sorted by name) are
scored one by one and summarised in a row of their own, and its curves are averaged in the plot.
Each command prints a table, writes JSON and a PNG of the per-segment curves (``--out`` folder,
or ``--json`` / ``--plot`` paths).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from hiar.errors import check_output_path

SLOT_SHORT = {"quality_musiq": "musiq", "quality_clipiqa": "clipiqa", "coherence_dinov2": "dino",
              "coherence_lpips": "lpips", "saturation": "sat", "sharpness": "sharp", "colour_shift": "colour"}


def register(sub) -> None:
    p = sub.add_parser("eval", help="score videos: drift over time, shapes-world scores",
                       description="Score videos: the drift metric suite, or the shapes world's scores.")
    evsub = p.add_subparsers(dest="eval_command", required=True)

    d = evsub.add_parser("drift", help="Drift Score of long videos (lower is better)",
                         description="Drift Score (paper Sec. 4.1): per-segment statistics, slopes, weighted sum. "
                                     "Learned metrics run when their local weights are given; weight-free stand-ins otherwise.")
    d.add_argument("videos", nargs="+", help="mp4 files, or folders of mp4 files (one folder = one method)")
    d.add_argument("--segments", type=int, default=5, help="number of segments (default 5)")
    d.add_argument("--musiq", metavar="FILE", help="MUSIQ weights: pyiqa's released .pth (or .safetensors), run by hiar's own network")
    d.add_argument("--clip-iqa", metavar="DIR", help="local CLIP model folder for CLIP-IQA (config, weights, tokenizer)")
    d.add_argument("--dinov2", metavar="DIR", help="local DINOv2 model folder (e.g. dinov2-small)")
    d.add_argument("--lpips", metavar="FILE", help="lpips v0.1 linear-layer weights (alex.pth / vgg.pth)")
    d.add_argument("--lpips-backbone", metavar="FILE", help="torchvision AlexNet / VGG16 state dict for LPIPS")
    d.add_argument("--lpips-net", choices=["alex", "vgg"], default="alex")
    d.add_argument("--device", default="cpu")
    _outputs(d, "drift")
    d.set_defaults(func=run_drift, stop_signals=True)

    s = evsub.add_parser("shapes", help="semantic / dynamic / quality scores of shapes-world videos",
                         description="Score shapes-world videos against their prompts by the world's own truth.")
    s.add_argument("videos", nargs="+", help="mp4 files, or folders of mp4 files (sorted by name)")
    s.add_argument("--prompts", required=True, metavar="FILE",
                   help="text file, one prompt per line, in the order of the videos (blank and '#' lines skipped)")
    s.add_argument("--reference-clips", type=int, default=8, help="real clips rendered per prompt for reference statistics")
    _outputs(s, "shapes")
    s.set_defaults(func=run_shapes, stop_signals=True)


def _outputs(p: argparse.ArgumentParser, name: str) -> None:
    p.add_argument("--out", default="outputs/eval", help="folder for the JSON and PNG (default outputs/eval)")
    p.add_argument("--json", metavar="FILE", help=f"JSON path (default OUT/{name}.json)")
    p.add_argument("--plot", metavar="FILE", help=f"PNG path (default OUT/{name}.png)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def collect_videos(items: list[str]) -> list[tuple[str | None, Path]]:
    """``(method, path)`` per video; method is the folder name for videos given as a folder."""
    out: list[tuple[str | None, Path]] = []
    for item in items:
        path = Path(item)
        if path.is_dir():
            files = sorted(path.glob("*.mp4"))
            files = [f for f in files if not f.name.endswith(".partial.mp4")]
            if not files:
                raise FileNotFoundError(f"no .mp4 files in folder {path}")
            out += [(path.name or str(path), f) for f in files]
        elif path.is_file():
            out.append((None, path))
        else:
            raise FileNotFoundError(f"video not found: {path}")
    return out


def read_prompts(path: str | Path, world) -> list[str]:
    """Prompts of a file, one per line; a line the world cannot parse is an error naming its number."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"prompts file not found: {path}")
    prompts = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        try:
            world.parse_prompt(text)
        except ValueError as err:
            raise ValueError(f"{path}, line {number}: {err}") from None
        prompts.append(text)
    return prompts


def _paths(args, name: str) -> tuple[Path, Path]:
    out = Path(args.out)
    json_path = Path(args.json) if args.json else out / f"{name}.json"
    plot_path = Path(args.plot) if args.plot else out / f"{name}.png"
    for p, what in ((json_path, "the JSON (--json, --out)"), (plot_path, "the plot (--plot, --out)")):
        check_output_path(p, what)  # before any video is scored
        p.parent.mkdir(parents=True, exist_ok=True)
    return json_path, plot_path


def _progress(items, disable: bool, desc: str):
    from tqdm import tqdm

    return tqdm(items, desc=desc, unit="video", disable=disable or not sys.stderr.isatty(), file=sys.stderr)


def _label(method: str | None, path: Path) -> str:
    return f"{method}/{path.name}" if method else path.name


def _table(header: list[str], rows: list[list[str]], text_columns: int = 1) -> str:
    """Fixed-width table: the first ``text_columns`` columns left-aligned, the rest right-aligned."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    line = lambda cells: "  ".join(c.ljust(w) if i < text_columns else c.rjust(w)
                                   for i, (c, w) in enumerate(zip(cells, widths))).rstrip()
    return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, rows)])


# ------------------------------------------------------------------------------------ drift
def run_drift(args) -> int:
    from hiar.eval.drift import DriftConfig, DriftSuite
    from hiar.eval.plots import plot_segment_curves
    from hiar.generate import check_device
    from hiar.video import read_video

    check_device(args.device)
    config = DriftConfig.from_dict({
        "segments": args.segments, "musiq": args.musiq, "clip_iqa": args.clip_iqa, "dinov2": args.dinov2,
        "lpips": args.lpips, "lpips_backbone": args.lpips_backbone, "lpips_net": args.lpips_net, "device": args.device,
    })
    videos = collect_videos(args.videos)
    json_path, plot_path = _paths(args, "drift")
    suite = DriftSuite.from_config(config)
    reports, by_method = [], {}
    for method, path in _progress(videos, args.no_progress, "drift"):
        frames = read_video(path, native=True)
        try:
            report = suite.evaluate(frames, name=str(path))
        except ValueError as err:
            raise ValueError(f"{path}: {err}") from None
        reports.append(report)
        if method is not None:
            by_method.setdefault(method, []).append(report)
    methods = {m: suite.aggregate(r, name=m) for m, r in by_method.items()}

    slots = list(suite.definitions)
    header = ["video", "frames", "drift"] + [SLOT_SHORT.get(s, s) for s in slots]
    row = lambda r, name: [name, str(r.num_frames), f"{r.score:.3f}"] + [f"{r.normalised[s]:+.2f}" for s in slots]
    rows = [row(r, _label(method, path)) for (method, path), r in zip(videos, reports)]
    rows += [row(r, f"[{m}] mean of {r.num_videos}") for m, r in methods.items()]
    print(_table(header, rows))
    print("columns after 'drift': normalised slope per segment (slope / scale); Drift Score = sum of weight * penalty")
    print("backends: " + ", ".join(f"{SLOT_SHORT[s]}={b}" for s, b in suite.backends.items()))

    payload = {
        "metric": "drift", "segments": config.segments, "backends": suite.backends,
        "weights": suite.weights,
        "definitions": {s: {"backend": d.backend, "learned": d.learned, "scale": d.scale, "penalise": d.penalise,
                            "log": d.log, "description": d.description} for s, d in suite.definitions.items()},
        "videos": [r.to_dict() for r in reports], "methods": {m: r.to_dict() for m, r in methods.items()},
    }
    json_path.write_text(json.dumps(payload, indent=2))
    curves = {m: r.segment_values for m, r in methods.items()}
    for (method, path), r in zip(videos, reports):
        if method is None:
            curves[path.name] = r.segment_values
    plot_segment_curves(curves, plot_path, title="Drift: per-segment statistics (lower Drift Score is better)",
                        metrics=slots, subtitles={s: b.split(" (")[0] for s, b in suite.backends.items()})
    print(f"wrote {json_path} and {plot_path}")
    return 0


# ------------------------------------------------------------------------------------ shapes
def run_shapes(args) -> int:
    import numpy as np

    from hiar.eval.plots import plot_segment_curves
    from hiar.eval.shapes_scores import ShapesScorer
    from hiar.video import read_video, resize_to
    from hiar.world.shapes import default_world

    world = default_world()
    prompts = read_prompts(args.prompts, world)
    videos = collect_videos(args.videos)
    if len(prompts) != len(videos):
        raise ValueError(f"{args.prompts} has {len(prompts)} prompts for {len(videos)} videos (one prompt per video, in order)")
    if args.reference_clips < 1:
        raise ValueError("--reference-clips must be >= 1")
    json_path, plot_path = _paths(args, "shapes")
    scorer = ShapesScorer(world, reference_clips=args.reference_clips)
    size = (world.config.height, world.config.width)
    results, by_method = [], {}
    for (method, path), prompt in _progress(list(zip(videos, prompts)), args.no_progress, "shapes"):
        frames = resize_to(read_video(path, native=True), size, path)
        try:
            scores = scorer.score(frames, prompt)
        except ValueError as err:
            raise ValueError(f"{path}: {err}") from None
        entry = {"video": str(path), "method": method, "prompt": prompt, "frames": int(frames.shape[0]), **scores.to_dict()}
        results.append(entry)
        if method is not None:
            by_method.setdefault(method, []).append(entry)
    keys = ("semantic", "dynamic", "quality", "total")
    methods = {}
    for m, entries in by_method.items():
        methods[m] = {k: float(np.mean([e[k] for e in entries])) for k in keys}
        seg = [e["segments"] for e in entries if e["segments"].get("total")]
        methods[m]["segments"] = {k: np.mean([s[k] for s in seg], axis=0).tolist() for k in keys} if seg else {}
        methods[m]["num_videos"] = len(entries)

    header = ["video", "prompt", *keys]
    trim = lambda t, n=48: t if len(t) <= n else t[: n - 3] + "..."
    rows = [[_label(e["method"], Path(e["video"])), trim(e["prompt"]), *(f"{e[k]:.3f}" for k in keys)] for e in results]
    rows += [[f"[{m}] mean of {v['num_videos']}", "", *(f"{v[k]:.3f}" for k in keys)] for m, v in methods.items()]
    print(_table(header, rows, text_columns=2))
    json_path.write_text(json.dumps({"metric": "shapes", "videos": results, "methods": methods}, indent=2))
    curves = {m: v["segments"] for m, v in methods.items() if v["segments"]}
    for e in results:
        if e["method"] is None and e["segments"].get("total"):
            curves[Path(e["video"]).name] = e["segments"]
    if curves:
        plot_segment_curves(curves, plot_path, title="Shapes scores per segment (higher is better)", metrics=list(keys))
        print(f"wrote {json_path} and {plot_path}")
    else:
        print(f"wrote {json_path} (videos too short for per-segment curves)")
    return 0
