"""A lock file held with ``fcntl.flock`` for the life of a job: one trainer per run folder, one
``hiar generate`` per output video.

The file holds the holder's PID, host, start time and command, so the one that is refused can say
who holds it. The kernel drops the lock when its process dies, so a file left by a killed process is
stale: the next job takes it over (and is told whose it was). On a file system without locks the job
goes on unprotected, with a note. The file is removed on release.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import sys
import time
from pathlib import Path


class LockHeld(RuntimeError):
    """Another live process holds the lock; ``holder`` is what it wrote in the file."""

    def __init__(self, path: Path, holder: dict):
        super().__init__(f"{path} is held by {describe_holder(holder)}")
        self.path, self.holder = path, holder


def describe_holder(holder: dict) -> str:
    """``PID 1234 on host, since 2025-01-01 12:00:00`` (what is known of it)."""
    who = f"PID {holder.get('pid', '?')}" + (f" on {holder['host']}" if holder.get("host") else "")
    return who + (f", since {holder['started']}" if holder.get("started") else "")


def _read_holder(fd: int) -> dict:
    try:
        raw = os.pread(fd, 4096, 0).decode("utf-8", "replace")
        return dict(json.loads(raw)) if raw.strip() else {}
    except (OSError, ValueError, TypeError):
        return {}


def _same_file(path: Path, fd: int) -> bool:
    try:
        st, fst = os.stat(path), os.fstat(fd)
    except FileNotFoundError:
        return False
    return (st.st_ino, st.st_dev) == (fst.st_ino, fst.st_dev)


class LockFile:
    """``path``, locked by :meth:`acquire` until :meth:`release`."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._fd: int | None = None
        self.stale: dict = {}  # what the file said when a stale lock was taken over
        self.unsupported: OSError | None = None  # why the file system refused to lock, if it did

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> None:
        """Take the lock, or raise :class:`LockHeld` at once (never waits)."""
        import fcntl

        if self._fd is not None:
            return
        for _ in range(20):
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            unsupported = None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as err:
                if err.errno not in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EACCES):
                    unsupported = err  # a file system without locks: go on, unprotected
                else:
                    holder = _read_holder(fd)
                    os.close(fd)
                    raise LockHeld(self.path, holder) from None
            if not _same_file(self.path, fd):  # the holder removed the file between our open and flock
                os.close(fd)
                continue
            self.stale = _read_holder(fd)
            mine = {"pid": os.getpid(), "host": socket.gethostname(),
                    "started": time.strftime("%Y-%m-%d %H:%M:%S"), "command": " ".join(sys.argv)[:500]}
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(mine).encode(), 0)
            os.fsync(fd)
            self._fd, self.unsupported = fd, unsupported
            return
        raise LockHeld(self.path, {"pid": "? (the lock file keeps being replaced by another process)"})

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            if _same_file(self.path, fd):
                os.unlink(self.path)
        except OSError:
            pass
        finally:
            os.close(fd)
