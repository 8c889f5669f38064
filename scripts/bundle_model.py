"""Copy a trained stage's model into the package as a bundled asset (float16, with provenance).

    python scripts/bundle_model.py RUN_DIR NAME [--raw]
    e.g. python scripts/bundle_model.py runs/shapes/dmd_hiar shapes-hiar

Reads ``RUN_DIR/model.safetensors`` (the EMA weights the stage exported; with ``--raw``, the raw weights
``RUN_DIR/model_raw.safetensors``, for a run cut short before its EMA had averaged much; the metadata
says which) and ``RUN_DIR/config.yaml``,
and writes ``src/hiar/assets/NAME.safetensors`` in float16 (the toy model is 1.2 M parameters: 2.4 MB)
with metadata: the stage, its steps and seed, the recipe config it ran (as YAML) and the commit of
the code that trained it. :func:`hiar.checkpoint.load_model` reads it back in float32.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
ASSETS = ROOT / "src" / "hiar" / "assets"


def commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True)
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main(argv: list[str]) -> int:
    raw = "--raw" in argv
    argv = [a for a in argv if a != "--raw"]
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    from hiar.checkpoint import load_model, read_checkpoint, save_model

    run, name = Path(argv[0]), argv[1]
    src = run / ("model_raw.safetensors" if raw else "model.safetensors")
    if not src.is_file() or not (run / "config.yaml").is_file():
        print(f"bundle_model: {run} has no finished stage ({src.name} and config.yaml)", file=sys.stderr)
        return 1
    meta = read_checkpoint(src).metadata
    model = load_model(src).to(torch.float16)
    info = {
        "bundle_name": name,
        "stage": meta.get("stage", "?"),
        "steps": meta.get("step", "?"),
        "weights": meta.get("weights", "?"),
        "recipe_config": (run / "config.yaml").read_text(),
        "seed": meta.get("seed", "?"),
        "trained_on": meta.get("trained_on", "?"),
        # the run's own record (hiar train writes it); older runs: the commit this script runs at
        "trained_by_commit": meta.get("commit") or f"unrecorded (bundled at {commit()})",
        "dtype": "float16",
    }
    ASSETS.mkdir(parents=True, exist_ok=True)
    out = save_model(model, ASSETS / f"{name}.safetensors", metadata=info)
    print(f"bundled {src} -> {out} ({out.stat().st_size / 2**20:.1f} MiB; stage {info['stage']}, step {info['steps']})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
