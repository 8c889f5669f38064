"""Copy a trained stage's model into the package as a bundled asset (float16, with provenance).

    python scripts/bundle_model.py SOURCE NAME [--raw] [--meta KEY=VALUE ...]
    e.g. python scripts/bundle_model.py runs/shapes/dmd_hiar shapes-hiar
         python scripts/bundle_model.py runs/shapes/dmd_hiar/checkpoints/step-0000160 shapes-hiar --raw

SOURCE is a finished run folder: its ``model.safetensors`` (the EMA weights the stage exported; with
``--raw``, the raw weights ``model_raw.safetensors``, for a run cut short before its EMA had averaged
much; the metadata says which). Or one of its checkpoint folders (``RUN/checkpoints/step-N``), to ship
the step a comparison chose: the stage's model there (``generator`` for DMD, else ``model``), its EMA
or with ``--raw`` its raw weights; a folder without its completion marker is refused. The run's
``config.yaml`` goes with it. Writes ``src/hiar/assets/NAME.safetensors`` in float16 (the toy model is
1.2 M parameters: 2.4 MB) with metadata: the stage, its steps and seed, the recipe config it ran (as
YAML) and the commit of the code that trained it. :func:`hiar.checkpoint.load_model` reads it back in
float32.

``--meta KEY=VALUE`` (repeatable) states what a run made before its checkpoints carried their
provenance could not record (its seed, the commit that trained it, ``started_from``): the value
replaces the key's, and ``given_by_hand`` lists the keys so given.
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


def weights_and_config(source: Path, raw: bool) -> tuple[Path, str, Path, str | None]:
    """(the weights to read, the ``which`` to read them with, the run's config, what is wrong with
    ``source`` or None): a finished run folder, or a checkpoint step folder of one
    (``RUN/checkpoints/step-N``, complete by its marker), whose generator or model
    :func:`hiar.checkpoint.read_checkpoint` picks (EMA, or raw for ``which="generator"``)."""
    from hiar.training import runfolder

    has_marker, problem = runfolder.marker_problem(source)
    if not has_marker:  # a run folder
        src = source / ("model_raw.safetensors" if raw else "model.safetensors")
        config = source / "config.yaml"
        if not src.is_file() or not config.is_file():
            return src, "auto", config, f"has no finished stage ({src.name} and config.yaml)"
        return src, "auto", config, None
    config = source.parent.parent / "config.yaml"
    if problem:
        return source, "auto", config, f"is an incomplete checkpoint: {problem}"
    if not config.is_file():
        return source, "auto", config, f"is a checkpoint without its run's config.yaml ({config})"
    return source, "generator" if raw else "ema", config, None


def split_meta(argv: list[str]) -> tuple[list[str], dict[str, str], str | None]:
    """(the other arguments, the ``--meta KEY=VALUE`` pairs, what is wrong with them or None)."""
    rest, given = [], {}
    it = iter(argv)
    for arg in it:
        if arg != "--meta":
            rest.append(arg)
            continue
        pair = next(it, None)
        if pair is None or "=" not in pair or not pair.split("=", 1)[0]:
            return rest, given, f"--meta wants KEY=VALUE, got {pair!r}"
        key, value = pair.split("=", 1)
        given[key] = value
    return rest, given, None


def main(argv: list[str]) -> int:
    raw = "--raw" in argv
    argv, given, problem = split_meta([a for a in argv if a != "--raw"])
    if problem:
        print(f"bundle_model: {problem}", file=sys.stderr)
        return 2
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    from hiar.checkpoint import CheckpointError, load_model, read_checkpoint, save_model

    source, name = Path(argv[0]), argv[1]
    src, which, config, problem = weights_and_config(source, raw)
    if problem:
        print(f"bundle_model: {source} {problem}", file=sys.stderr)
        return 1
    try:
        meta = read_checkpoint(src, which=which).metadata
        model = load_model(src, which=which).to(torch.float16)
    except CheckpointError as err:
        print(f"bundle_model: {err}", file=sys.stderr)
        return 1
    info = {
        "bundle_name": name,
        "stage": meta.get("stage", "?"),
        "steps": meta.get("step", "?"),
        "weights": meta.get("weights", "?"),
        "recipe_config": config.read_text(),
        "seed": meta.get("seed", "?"),
        "trained_on": meta.get("trained_on", "?"),
        # the run's own record (hiar train writes it); older runs: the commit this script runs at
        "trained_by_commit": meta.get("commit") or f"unrecorded (bundled at {commit()})",
        "dtype": "float16",
    }
    if given:
        info.update(given)
        info["given_by_hand"] = ",".join(sorted(given))
    ASSETS.mkdir(parents=True, exist_ok=True)
    out = save_model(model, ASSETS / f"{name}.safetensors", metadata=info)
    print(f"bundled {src} -> {out} ({out.stat().st_size / 2**20:.1f} MiB; stage {info['stage']}, step {info['steps']})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
