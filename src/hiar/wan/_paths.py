"""Finding a component folder: the folder itself, or its subfolder in a diffusers pipeline folder."""

from __future__ import annotations

import os
from pathlib import Path


def component_dir(path: str | os.PathLike, subfolder: str, what: str) -> Path:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{what} directory not found: {path}")
    if not path.is_dir():
        raise FileNotFoundError(f"{what} must be a directory (diffusers/transformers layout), got the file {path}")
    if not (path / "config.json").is_file() and (path / subfolder).is_dir():
        return path / subfolder
    return path
