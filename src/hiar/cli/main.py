"""``hiar`` entry point. Each sub-command lives in its own module with ``register(subparsers)``.

Errors a user can cause (:class:`hiar.errors.UserError`, ``ValueError``, ``OSError``) are printed as
one line, ``hiar CMD: error: ...``, exit code 2; ``HIAR_DEBUG=1`` raises them with the traceback.
A command that sets ``stop_signals=True`` (generate, demo, eval) takes SIGTERM and SIGHUP as Ctrl-C,
so its files are closed properly; a stopped run exits with 128 + the signal's number.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import sys

from hiar.errors import UserError, describe
from hiar.signals import exit_code, stop_signals_raise

# What a user can cause and fix: one line each (ConfigError is a ValueError).
USER_ERRORS = (UserError, ValueError, OSError)

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
    signals = stop_signals_raise() if getattr(args, "stop_signals", False) else contextlib.nullcontext()
    try:
        with signals:
            return int(args.func(args) or 0)
    except USER_ERRORS as err:
        if os.environ.get("HIAR_DEBUG"):  # the full traceback, for bug reports
            raise
        print(f"hiar {args.command}: error: {describe(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as err:
        print(f"hiar {args.command}: interrupted", file=sys.stderr)
        return exit_code(err)


if __name__ == "__main__":
    sys.exit(main())
