"""``hiar demo``: what ``make demo`` runs: a long shapes video with the bundled model."""

from __future__ import annotations

import argparse
import sys

from hiar.cli import generate as gen_cli
from hiar.generate import bundled_checkpoint

DEMO_PROMPT = "a fast red circle and a slow blue square on a dark background"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="generate a 20 s shapes video with the bundled model")
    p.add_argument("-o", "--output", default="outputs/demo.mp4")
    p.add_argument("--frames", type=int, default=320, help="video frames (default: %(default)s = 20 s at 16 fps)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if bundled_checkpoint("shapes-hiar") is None:
        print("demo: no trained shapes model is bundled yet (train one with the recipe in docs/training.md and copy it "
              "to src/hiar/assets/shapes-hiar.safetensors); running the real sampler with random weights, "
              "so expect noise, not shapes.", file=sys.stderr)
    gen_args = gen_cli_parser().parse_args(["generate", DEMO_PROMPT, "-o", args.output, "--frames", str(args.frames)])
    return gen_args.func(gen_args)


def gen_cli_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hiar")
    gen_cli.register(parser.add_subparsers(dest="command"))
    return parser
