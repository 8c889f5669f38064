"""Errors a user can cause, and how the CLI says them: one line that names the input at fault.

:class:`UserError` is for a problem the user can fix (a busy output, a model that gives NaN, a full
disk); ``ValueError`` (bad values, :class:`hiar.config.ConfigError`) and ``OSError`` (files) are
treated the same way. ``HIAR_DEBUG=1`` shows the traceback instead.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path


class UserError(Exception):
    """A problem the user can fix; its message is one line that names the input at fault."""


def one_line(text: object) -> str:
    """The message on one line (tracebacks and multi-line library errors folded)."""
    return " ".join(str(text).split()) or "unknown error"


def describe(err: BaseException) -> str:
    """A one-line message for ``err``; an ``OSError`` names its file(s) and reason, without the errno."""
    if isinstance(err, OSError) and err.strerror and not isinstance(err, UserError):
        files = [os.fsdecode(f) for f in (err.filename, err.filename2) if f is not None]
        return one_line(f"{' -> '.join(files)}: {err.strerror}" if files else err.strerror)
    return one_line(err if str(err) else type(err).__name__)


def check_output_path(path: str | os.PathLike, what: str = "the output") -> Path:
    """Refuse, before any work, an output file path that names a folder or lies under a file."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(errno.EISDIR, f"is a folder, not a file for {what}", str(path))
    for parent in path.parents:  # the nearest existing folder must be a folder
        if parent.exists():
            if not parent.is_dir():
                raise NotADirectoryError(errno.ENOTDIR, f"is a file, so it cannot hold {what}", str(parent))
            break
    return path
