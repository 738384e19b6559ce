"""Ctrl-C and SIGTERM: during training, finish the current step, save, exit 130 / 143 (a second signal
exits at once); while torch imports, held until the import is whole.
"""

from __future__ import annotations

import os
import signal
from contextlib import contextmanager
from typing import Iterator, Optional


@contextmanager
def _handled(signum: int, handler) -> Iterator[Optional[object]]:
    """Install `handler` for `signum` while the block runs; yields the handler it replaced (None outside the
    main thread, where signals are left alone)."""
    try:
        previous = signal.signal(signum, handler)
    except ValueError:  # not the main thread
        yield None
        return
    try:
        yield previous
    finally:
        signal.signal(signum, previous)


@contextmanager
def ctrl_c_held() -> Iterator[None]:
    """Hold a Ctrl-C until the block ends, then act on it as before the block. For importing torch: its C++
    start-up imports numpy and clears any error there, a KeyboardInterrupt included, which leaves a
    half-imported numpy behind (a traceback minutes later instead of exit 130)."""
    held = []
    with _handled(signal.SIGINT, lambda signum, _frame: held.append(signum)) as previous:
        yield
    if held and callable(previous):
        previous(signal.SIGINT, None)  # Python's default raises KeyboardInterrupt


class Terminated(KeyboardInterrupt):
    """SIGTERM before a command handles it itself (the training loop, the server): the command stops as
    on Ctrl-C (a run folder that never trained is removed) and exits 143."""


@contextmanager
def sigterm_stops() -> Iterator[None]:
    """Raise Terminated on SIGTERM while the block runs (decoding an image folder, evaluating)."""

    def stop(_signum, _frame):
        raise Terminated()

    with _handled(signal.SIGTERM, stop):
        yield


class StopRequest:
    """Set by SIGINT/SIGTERM while installed; the training loop checks `.signal` after each step."""

    def __init__(self) -> None:
        self.signal: Optional[int] = None
        self._previous = {}

    def _handle(self, signum, _frame) -> None:
        if self.signal is not None:  # asked twice: stop now
            os._exit(128 + signum)
        self.signal = signum

    def __enter__(self) -> "StopRequest":
        for signum in (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous[signum] = signal.signal(signum, self._handle)
            except ValueError:  # not the main thread: leave signals alone
                pass
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)


class Interrupted(Exception):
    """Training stopped on a signal after saving; the CLI exits 128 + signal."""

    def __init__(self, signum: int, message: str) -> None:
        super().__init__(message)
        self.signum = signum
