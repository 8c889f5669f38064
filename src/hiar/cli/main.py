"""``hiar`` entry point. Each sub-command lives in its own module with ``register(subparsers)``."""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from hiar.config import ConfigError

# Sub-command modules; each defines register(subparsers) and sets a ``func`` default.
COMMANDS = ["hiar.cli.generate", "hiar.cli.eval", "hiar.cli.train", "hiar.cli.demo"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hiar", description="Autoregressive long-video generation with hierarchical denoising.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMANDS:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as err:
            if err.name == name:  # command not built yet
                continue
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ConfigError, FileNotFoundError, ValueError) as err:
        if os.environ.get("HIAR_DEBUG"):  # the full traceback, for bug reports
            raise
        print(f"hiar {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"hiar {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
