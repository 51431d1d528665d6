"""Where a node's log goes: standard error, or a file that rotates.

`freehold node` logs to standard error (systemd's journal, a terminal) unless
`log_file` is set: then to that file (relative to the data directory), rotated when
it reaches `log_max_size`, keeping `log_backups` old files (`node.log.1`, ...), so a
volunteer's disk never fills with log. The format is one line per record, with the
time, level and the module that logged it.

What INFO says (one line per put, get, repair and refused peer) never holds a
capability, a key or file contents: the lines name sizes, counts, times and peers.
"""

from __future__ import annotations

import logging
import logging.handlers
import sys
from pathlib import Path

__all__ = ["LOG_FORMAT", "configure_logging"]

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def configure_logging(
    level: str, log_file: Path | None, *, max_bytes: int, backups: int
) -> logging.Handler:
    """Send the root logger's records at `level` and above to `log_file` (rotating)
    or, if None, to standard error. Returns the handler installed."""
    handler: logging.Handler
    if log_file is None:
        handler = logging.StreamHandler(sys.stderr)
    else:
        log_file.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        handler = logging.handlers.RotatingFileHandler(
            log_file, maxBytes=max_bytes, backupCount=backups, encoding="utf-8"
        )
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    return handler
