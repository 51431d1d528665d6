"""Log lines a peer can cause, at most one a minute for each kind.

A peer's misbehaviour (a refused connection, a handshake cut off, a chunk offered again
with another group record) is worth a line in the owner's log, but not one per request:
500 requests made 500 lines. `RateLimitedLog` writes the first line of a kind at once,
then at most one per `interval`, saying how many like it were left out since the last.
It is safe to call from several threads (the chunk store logs from worker threads).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Final

__all__ = ["LOG_INTERVAL", "RateLimitedLog"]

LOG_INTERVAL: Final = 60.0
"""Seconds between two lines of one kind."""


class RateLimitedLog:
    """Rate-limited warnings on `logger`, one budget per kind of line."""

    def __init__(
        self,
        logger: logging.Logger,
        interval: float = LOG_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._logger = logger
        self._interval = interval
        self._clock = clock
        self._lock = threading.Lock()
        # kind -> (time of the last line, lines left out since)
        self._kinds: dict[str, tuple[float, int]] = {}

    def warning(self, kind: str, message: str, *arguments: object) -> None:
        """Log `message % arguments` unless a line of `kind` was logged less than
        `interval` ago; then only count it."""
        now = self._clock()
        with self._lock:
            last = self._kinds.get(kind)
            if last is not None and now - last[0] < self._interval:
                self._kinds[kind] = (last[0], last[1] + 1)
                return
            left_out = last[1] if last is not None else 0
            self._kinds[kind] = (now, 0)
        if left_out:
            message += f" (and {left_out} more like it in the last {self._interval:.0f} s)"
        self._logger.warning(message, *arguments)
