"""``hiar train CONFIG.yaml [--set key=value ...] [--resume/--no-resume] [--overwrite]
[--accept-config-changes]``: run one training stage.

The config's ``stage`` key picks the stage (teacher, trajectories, ode_init, diffusion_forcing, dmd).
``--set`` overrides any key with a dotted path (``--set optimizer.lr=1e-5 --set steps=3``); values are
read as YAML (numbers, booleans, lists). Several processes: ``torchrun --nproc-per-node N -m
hiar.cli.main train CONFIG.yaml`` (or the ``hiar`` script under torchrun).

Running the same command again resumes from the output folder's checkpoints. A resume whose config
differs from the saved config.yaml (other than steps, progress, tensorboard, log_every,
checkpoint_every, keep_checkpoints, output_dir, device) is refused unless --accept-config-changes;
--no-resume is refused on a folder that holds checkpoints unless --overwrite (which deletes them).
"""

from __future__ import annotations

import argparse
import os
import sys

import yaml

from hiar.config import ConfigError, yaml_load


def parse_overrides(items: list[str]) -> dict:
    out = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--set expects key=value, got {item!r}")
        key, value = item.split("=", 1)
        if not key.strip():
            raise ConfigError(f"--set expects key=value, got {item!r}")
        try:
            out[key.strip()] = yaml_load(value) if value != "" else ""
        except yaml.YAMLError:
            out[key.strip()] = value
    return out


def run(args: argparse.Namespace) -> int:
    from hiar.training import NonFiniteError, RunFolderError, load_stage_config, run_stage

    if args.overwrite and args.resume:
        raise ConfigError("--overwrite starts the run over: it cannot be combined with --resume")
    cfg = load_stage_config(args.config, parse_overrides(args.set or []))
    try:
        summary = run_stage(cfg, resume=args.resume is not False and not args.overwrite,
                            accept_config_changes=args.accept_config_changes, overwrite=args.overwrite)
    except NonFiniteError as err:
        print(f"hiar train: stopped: {err}", file=sys.stderr)
        return 3
    except RunFolderError as err:  # a user error about the run folder: one line (HIAR_DEBUG=1: the traceback)
        if os.environ.get("HIAR_DEBUG"):
            raise
        if int(os.environ.get("RANK", "0")) == 0:
            print(f"hiar train: error: {err}", file=sys.stderr)
        return 2
    if int(os.environ.get("RANK", "0")) != 0:
        return 0
    last = summary.get("last") or {}
    losses = ", ".join(f"{k}={v:.4g}" for k, v in last.items() if k not in ("step", "time") and isinstance(v, float))
    how = "stopped by max_seconds" if "stopped" in summary else "finished"
    print(f"hiar train: {summary['stage']} {how} at step {summary['end_step']}/{summary['steps']}"
          f" -> {cfg.output_dir}" + (f" ({losses})" if losses else ""))
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("train", help="run one training stage from a YAML config",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", help="stage config (YAML), e.g. configs/shapes/teacher.yaml")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key (dotted path); repeatable")
    p.add_argument("--resume", action=argparse.BooleanOptionalAction, default=None,
                   help="continue from the output folder's latest checkpoint (default: yes); --no-resume "
                        "refuses a folder that holds checkpoints unless --overwrite")
    p.add_argument("--overwrite", action="store_true",
                   help="start over: delete the output folder's checkpoints, log.jsonl, tb/ and config files "
                        "first (implies --no-resume)")
    p.add_argument("--accept-config-changes", action="store_true",
                   help="resume although the config differs from the saved config.yaml: use and record the "
                        "new values (the old config is kept as config.previous-N.yaml)")
    p.set_defaults(func=run)
