"""Stop signals handled like Ctrl-C, so that a stopped run still closes its files properly.

``timeout``, job schedulers and ``torchrun`` stop a process with SIGTERM, a closed terminal sends
SIGHUP; by default either kills Python on the spot and an mp4 being written loses its index.
Inside :func:`stop_signals_raise` SIGINT, SIGTERM and SIGHUP all raise :class:`Interrupted` (a
``KeyboardInterrupt``), so every ``with`` block and ``finally`` runs; the CLI then exits with
128 + the signal number, as a shell expects. Inside :func:`signals_deferred` (closing a video) a
stop signal waits until the block is done, so a second Ctrl-C cannot cut the close short.
"""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class Interrupted(KeyboardInterrupt):
    """A stop signal (SIGINT, SIGTERM or SIGHUP) received while :func:`stop_signals_raise` was active."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = int(signum)


def exit_code(err: BaseException) -> int:
    """128 + the signal that stopped the run (SIGINT for a plain ``KeyboardInterrupt``)."""
    return 128 + int(getattr(err, "signum", signal.SIGINT))


_deferring = 0
_pending: int | None = None


def _raise(signum, frame) -> None:
    global _pending
    if _deferring:
        _pending = _pending or signum
        return
    raise Interrupted(signum)


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


@contextmanager
def stop_signals_raise():
    """Within: SIGINT, SIGTERM and SIGHUP raise :class:`Interrupted` in the main thread."""
    if not _in_main_thread():  # signal handlers can only be set from the main thread
        yield
        return
    previous = {s: signal.signal(s, _raise) for s in STOP_SIGNALS}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


@contextmanager
def signals_deferred():
    """Within: a stop signal is held back and raised (as :class:`Interrupted`) when the block ends.

    Holds back the signals of :func:`stop_signals_raise` and, when Python's default Ctrl-C handler is
    in place, SIGINT; other handlers (a library user's own) are left alone. If the block raises, that
    error wins and a held-back signal is dropped: the run is stopping anyway.
    """
    global _deferring, _pending
    swapped = _in_main_thread() and signal.getsignal(signal.SIGINT) is signal.default_int_handler
    if swapped:
        signal.signal(signal.SIGINT, _raise)
    _deferring += 1
    try:
        yield
    finally:
        _deferring -= 1
        if swapped:
            signal.signal(signal.SIGINT, signal.default_int_handler)
        pending = _pending if not _deferring else None
        if not _deferring:
            _pending = None
    if pending is not None:
        raise Interrupted(pending)
