"""A run folder's bookkeeping, shared by every stage (used by :class:`~hiar.training.trainer.Trainer`).

* **the lock** ``run.lock``: one trainer per ``output_dir``. The file holds the holder's PID, host and
  start time; it is locked with ``fcntl.flock`` (the kernel drops the lock when the process dies, so a
  lock left by a killed run is stale and is taken over, with a note). Removed on exit.
* **the completion marker** ``complete.json``: written last inside a checkpoint's temporary folder,
  before the rename; it lists the folder's files and sizes. A step folder without it (written by
  hiar before the marker existed) counts as complete only if its files load.
* **leftovers** of a failed write (a temporary ``.tmp-step-*`` folder, an atomic write's
  ``.<name>.XXXXXXXX.tmp`` file) are removed on the next start.
* **the config check**: a resumed run compares its resolved config with the saved ``config.yaml``;
  :data:`FREE_KEYS` may change freely.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

CHECKPOINTS = "checkpoints"
LATEST = "latest"
MARKER = "complete.json"
LOCK = "run.lock"
CONFIG = "config.yaml"
LOG = "log.jsonl"

STEP_RE = re.compile(r"^step-(\d{7})$")
TMP_STEP_RE = re.compile(r"^\.tmp-step-(\d{7})-(\d+)$")  # Trainer.save_checkpoint's temporary folder
ATOMIC_TMP_RE = re.compile(r"^\..+\.[a-z0-9_]{8}\.tmp$")  # hiar.checkpoint._atomic_write's temporary file

# Config keys that may differ on resume without --accept-config-changes: they change how the run is
# watched or where it is kept, not what it computes (``steps``: extending a run is a normal thing).
FREE_KEYS = ("steps", "progress", "tensorboard", "log_every", "checkpoint_every", "keep_checkpoints", "output_dir",
             "device", "max_seconds")


class RunFolderError(RuntimeError):
    """A run folder cannot be used as asked; the message is one line saying why and what to do."""


class RunLockedError(RunFolderError):
    """Another trainer holds the run folder's lock."""


class ConfigChangedError(RunFolderError):
    """A resumed run's config differs from the saved ``config.yaml``."""


class ResumeError(RunFolderError):
    """There are checkpoints, but none can be resumed from."""


def one_line(err: BaseException | str) -> str:
    text = str(err).strip() or type(err).__name__
    return " ".join(text.split())


def step_of(path: Path) -> int:
    m = STEP_RE.match(path.name)
    if not m:
        raise ValueError(f"not a step folder name: {path.name}")
    return int(m.group(1))


def step_folders(root: Path) -> list[Path]:
    """``root``'s ``step-NNNNNNN`` folders, oldest first."""
    if not root.is_dir():
        return []
    return sorted((p for p in root.iterdir() if STEP_RE.match(p.name) and p.is_dir()), key=step_of)


def read_latest(root: Path) -> tuple[str | None, str | None]:
    """(the step folder name in ``root/latest``, or None; a problem with the pointer itself, or None)."""
    pointer = root / LATEST
    if not pointer.exists():
        return None, None
    try:
        name = pointer.read_text().strip()
    except (OSError, UnicodeDecodeError) as err:
        return None, f"{LATEST} is unreadable ({one_line(err)})"
    if not STEP_RE.match(name):
        return None, f"{LATEST} does not name a step folder ({name[:40]!r})"
    return name, None


def has_checkpoints(root: Path) -> bool:
    return (root / LATEST).exists() or bool(step_folders(root))


def marker_problem(path: Path) -> tuple[bool, str | None]:
    """(whether ``path`` has a completion marker, what is wrong with the folder by it - or None)."""
    if not path.is_dir():
        return False, "missing"
    marker = path / MARKER
    if not marker.exists():
        return False, None
    try:
        data = json.loads(marker.read_text())
        files = dict(data["files"])
    except (OSError, ValueError, KeyError, TypeError) as err:
        return True, f"{MARKER} is unreadable ({one_line(err)})"
    if data.get("step") != step_of(path):
        return True, f"{MARKER} is for step {data.get('step')}"
    for name, size in sorted(files.items()):
        f = path / name
        if not f.is_file():
            return True, f"{name} is missing"
        if f.stat().st_size != size:
            return True, f"{name} is {f.stat().st_size} bytes, {MARKER} says {size}"
    return True, None


def write_marker(folder: Path, step: int, **info) -> None:
    """Write ``complete.json`` (the folder's files and sizes) last, atomically and synced."""
    from hiar.checkpoint import _atomic_write

    files = {p.name: p.stat().st_size for p in sorted(folder.iterdir()) if p.is_file()}
    data = json.dumps({"step": step, **info, "files": files}, indent=1)
    _atomic_write(folder / MARKER, lambda tmp: Path(tmp).write_text(data))
    fsync_dir(folder)


def fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# ------------------------------------------------------------------------------------------------
# The lock


class RunLock:
    """``<folder>/run.lock``, held with ``fcntl.flock`` for the life of a run (:class:`hiar.lockfile.LockFile`)."""

    def __init__(self, folder: Path):
        from hiar.lockfile import LockFile

        self.folder = Path(folder)
        self.path = self.folder / LOCK
        self._lock = LockFile(self.path)

    @property
    def held(self) -> bool:
        return self._lock.held

    def acquire(self) -> str | None:
        """Take the lock; returns a note when a stale lock (of a process that is gone) was taken over.

        Raises :class:`RunLockedError` naming the holder's PID when another process holds it.
        """
        from hiar.lockfile import LockHeld, describe_holder

        if self._lock.held:
            return None
        self.folder.mkdir(parents=True, exist_ok=True)
        try:
            self._lock.acquire()
        except LockHeld as err:
            raise RunLockedError(
                f"{self.folder} is in use by another hiar train ({describe_holder(err.holder)}): wait for it to "
                f"finish or stop it; one run folder takes one trainer at a time (lock: {self.path})") from None
        if self._lock.unsupported is not None:
            return (f"cannot lock {self.path} ({one_line(self._lock.unsupported)}): nothing stops a second trainer "
                    f"from using this folder")
        if self._lock.stale:
            who = describe_holder({k: v for k, v in self._lock.stale.items() if k != "started"})
            return f"took over the stale lock {self.path} of {who} (that process no longer holds it)"
        return None

    def release(self) -> None:
        self._lock.release()


# ------------------------------------------------------------------------------------------------
# Leftovers and starting over


def clean_leftovers(folder: Path) -> list[str]:
    """Remove what failed writes left behind (only the trainer's own temporary names); returns notes.

    ``checkpoints/.tmp-step-NNNNNNN-PID/`` folders (unless that PID is still running: an older hiar
    without the lock may be writing it), and ``.<name>.XXXXXXXX.tmp`` files of interrupted atomic writes
    in the run folder and in ``checkpoints/``. Call it while holding the lock.
    """
    removed, kept = [], []
    root = folder / CHECKPOINTS
    for where in (folder, root):
        if not where.is_dir():
            continue
        for p in sorted(where.iterdir()):
            m = TMP_STEP_RE.match(p.name)
            if m and where == root and p.is_dir() and not p.is_symlink():
                pid = int(m.group(2))
                if pid != os.getpid() and pid_alive(pid):
                    kept.append(f"{p.name} (PID {pid} is running)")
                    continue
                shutil.rmtree(p, ignore_errors=True)
                removed.append(p.relative_to(folder).as_posix())
            elif ATOMIC_TMP_RE.match(p.name) and p.is_file():
                p.unlink(missing_ok=True)
                removed.append(p.relative_to(folder).as_posix())
    notes = []
    if removed:
        notes.append(f"removed what an interrupted write left in {folder}: {', '.join(removed)}")
    if kept:
        notes.append(f"left alone in {root}: {', '.join(kept)}")
    return notes


def clear_run(folder: Path) -> list[str]:
    """``--overwrite``: delete an earlier run's checkpoints, log, TensorBoard scalars and configs."""
    gone = []
    for name in (CHECKPOINTS, "tb"):
        p = folder / name
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
            gone.append(name + "/")
        elif p.exists() or p.is_symlink():
            p.unlink()
            gone.append(name)
    for p in [folder / LOG, folder / CONFIG, *sorted(folder.glob("config.previous-*.yaml"))]:
        if p.is_file():
            p.unlink()
            gone.append(p.name)
    return gone


# ------------------------------------------------------------------------------------------------
# The config check


def _plain(obj: Any) -> Any:
    import yaml

    from hiar.config import to_dict

    return yaml.safe_load(yaml.safe_dump(to_dict(obj), sort_keys=False))


def _known_part(cls, data: Any) -> tuple[Any, dict[str, Any]]:
    """``data`` without the keys that dataclass ``cls`` (and its nested sections) does not know, and
    those keys (dotted) with their values."""
    import dataclasses
    import typing

    if not (dataclasses.is_dataclass(cls) and isinstance(data, dict)):
        return data, {}
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    kept, dropped = {}, {}
    for key, value in data.items():
        if key not in names:
            dropped[key] = value
            continue
        tp = hints.get(key)
        inner = [a for a in typing.get_args(tp) if dataclasses.is_dataclass(a)] or [tp]
        sub, lost = _known_part(inner[0], value)
        kept[key] = sub
        dropped.update({f"{key}.{k}": v for k, v in lost.items()})
    return kept, dropped


def _flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(obj, dict) and obj:
        out = {}
        for k, v in obj.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix.rstrip("."): obj}


_ABSENT = object()


def _show(v: Any) -> str:
    if v is _ABSENT:
        return "(absent)"
    if isinstance(v, str):
        return v
    return json.dumps(v, ensure_ascii=False, default=str)


def config_changes(saved: dict, cfg) -> list[tuple[str, str, str]]:
    """Dotted keys whose value in ``cfg`` differs from the ``saved`` config (the parsed ``config.yaml``),
    as (key, old, new) strings; keys in :data:`FREE_KEYS` are left out.

    The saved dict is read back through ``cfg``'s config class first, so keys added to the class since
    (at their defaults) and spelling differences (``1.0e-3`` vs ``0.001``, a tuple vs a list) are not
    changes; keys the class no longer knows are changes to "(absent)".
    """
    from hiar.config import from_dict

    new = _plain(cfg)
    known, dropped = _known_part(type(cfg), saved)
    try:  # keys the class no longer knows are compared as written (they become "(absent)")
        old = _plain(from_dict(type(cfg), known))
        old.update(_plain(dropped))
    except Exception:  # a value the class now refuses: compare the file as written
        old = _plain(saved)
    a, b = _flatten(old), _flatten(new)
    out = []
    for key in list(a) + [k for k in b if k not in a]:
        if key.split(".")[0] in FREE_KEYS:
            continue
        va, vb = a.get(key, _ABSENT), b.get(key, _ABSENT)
        if va != vb:
            out.append((key, _show(va), _show(vb)))
    return out


def describe_changes(changes: list[tuple[str, str, str]], limit: int = 12) -> str:
    shown = [f"{k}: {a} -> {b}" for k, a, b in changes[:limit]]
    if len(changes) > limit:
        shown.append(f"... ({len(changes) - limit} more)")
    return "; ".join(shown)


def keep_previous_config(folder: Path) -> Path:
    """Copy ``config.yaml`` to the first free ``config.previous-N.yaml`` (N = 1, 2, ...)."""
    n = 1
    while (folder / f"config.previous-{n}.yaml").exists():
        n += 1
    dest = folder / f"config.previous-{n}.yaml"
    shutil.copyfile(folder / CONFIG, dest)
    return dest


__all__ = [
    "RunFolderError", "RunLockedError", "ConfigChangedError", "ResumeError", "RunLock", "FREE_KEYS", "MARKER",
    "LOCK", "clean_leftovers", "clear_run", "config_changes", "describe_changes", "keep_previous_config",
    "marker_problem", "write_marker", "read_latest", "step_folders", "has_checkpoints",
]
