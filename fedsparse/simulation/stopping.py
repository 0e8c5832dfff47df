"""Stopping a simulation cleanly on Ctrl-C (SIGINT) or SIGTERM.

Flower runs the ServerApp in a thread while its Simulation Runtime blocks the main thread, so a
KeyboardInterrupt in the main thread leaves the round loop running. Instead, the first signal
only sets an event: the round loop abandons the round in progress (nothing of it is recorded or
checkpointed), the ServerApp returns, Flower stops its runtime and Ray shuts down; the runner
then reports the interruption (exit 130 / 143) and how to resume. A second signal stops at once.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

from fedsparse.errors import FedsparseError

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(FedsparseError):
    """The run was stopped by a signal; finished rounds are kept and resumable."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.exit_code = 128 + signum


class StopRequest:
    """Set by the first SIGINT or SIGTERM; polled by the round loop."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.signum: int | None = None

    def is_set(self) -> bool:
        return self.event.is_set()

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if self.event.is_set():  # asked twice: stop now
            raise KeyboardInterrupt
        self.signum = signum
        self.event.set()

    @contextmanager
    def handling_signals(self) -> Iterator[None]:
        """Within the block, SIGINT and SIGTERM request a stop (main thread only)."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {s: signal.signal(s, self._on_signal) for s in SIGNALS}
        try:
            yield
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
