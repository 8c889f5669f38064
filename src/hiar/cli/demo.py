"""``hiar demo``: what ``make demo`` runs: a 20 s shapes video with the bundled HiAR student, its
contact sheet beside it, and its shapes scores."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

DEMO_PROMPT = "a fast red circle and a slow blue square on a dark background"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="generate a 20 s shapes video with the bundled HiAR model",
                       description="Generate a 20 s shapes video with the bundled HiAR student; write the mp4 and a "
                                   "contact-sheet PNG beside it and print the video's shapes scores.")
    p.add_argument("prompt", nargs="?", default=DEMO_PROMPT, help="shapes prompt (default: %(default)r)")
    p.add_argument("-o", "--output", default="outputs/demo.mp4")
    p.add_argument("--frames", type=int, default=320, help="video frames (default: %(default)s = 20 s at 16 fps)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run, stop_signals=True)


class _KeepingWriter:
    """Writes to the mp4 and keeps the pixels (a 32x32 video is small) for the sheet and the scores."""

    def __init__(self, writer):
        self.writer, self.blocks = writer, []

    def write(self, pixels: torch.Tensor) -> None:
        self.writer.write(pixels)
        self.blocks.append(pixels)


def run(args: argparse.Namespace) -> int:
    from hiar.eval.shapes_scores import score_video
    from hiar.generate import generate, load_shapes_model, method_config, shapes_world
    from hiar.signals import exit_code
    from hiar.video import VideoWriter, check_video_path, contact_sheet

    if args.frames < 3:
        raise ValueError(f"--frames must be at least 3 (one block), got {args.frames}")
    if args.seed < 0:
        raise ValueError(f"--seed must be 0 or more, got {args.seed}")
    out = check_video_path(args.output)  # before any work
    model, source = load_shapes_model(None, "hiar")
    world = shapes_world(model)
    world.text_encoder.encode([args.prompt])  # refuse an unknown word before anything is written
    out.parent.mkdir(parents=True, exist_ok=True)
    print(f"model: {source}\nprompt: {args.prompt!r}, {args.frames} frames ({args.frames / world.fps:.0f} s)", file=sys.stderr)
    with VideoWriter(out, fps=world.fps) as video:
        keeping = _KeepingWriter(video)
        try:
            _, report = generate(model, world, args.prompt, num_frames=args.frames, config=method_config("hiar", window=21),
                                 seed=args.seed, writer=keeping, progress=not args.quiet)
        except KeyboardInterrupt as err:  # Ctrl-C, SIGTERM, SIGHUP
            video.close()
            print(f"interrupted: {video.frames_written} frames saved to {out}", file=sys.stderr)
            return exit_code(err)
    pixels = torch.cat(keeping.blocks, dim=1)  # [3, F, H, W] in [-1, 1]
    sheet = contact_sheet({"HiAR": pixels}, out.with_suffix(".png"), columns=10, title=args.prompt)
    scores = score_video(pixels, args.prompt, world=None)
    print(f"video: {out}\ncontact sheet: {sheet}\n{report.frames_per_s:.0f} frames/s; shapes scores: "
          + ", ".join(f"{k} {getattr(scores, k):.3f}" for k in ("semantic", "dynamic", "quality", "total")))
    return 0
