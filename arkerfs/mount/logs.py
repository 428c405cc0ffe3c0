"""Logging for the mount daemon: one handler, chosen by where the daemon runs.

- in the foreground: human-readable lines on stderr;
- under systemd (stderr is the journal: ``$JOURNAL_STREAM`` names it): each line starts with its
  syslog priority (``<3>`` error … ``<7>`` debug), which journald turns into the entry's
  priority, and no timestamp (the journal has one);
- detached: a file, by default ``$XDG_STATE_HOME/arkerfs/logs/<vm>-<mountpoint name>.log``
  (``~/.local/state/...``), private (0600); ``--log-file`` chooses another.

``--log-level`` (default info) or ``--debug``: at debug level every API call (method, path, status,
bytes, milliseconds) and every FUSE operation (arguments, result, milliseconds) is logged.
httpx/httpcore log every request URL at INFO; presigned URLs are bearer credentials for file
contents, so those loggers are kept at WARNING. The API key travels only in a header and is never
logged. ``faulthandler`` dumps all stacks on SIGUSR1, for a daemon that looks hung.
"""

from __future__ import annotations

import faulthandler
import logging
import os
import re
import signal
import sys
from pathlib import Path

FORMAT = "%(asctime)s.%(msecs)03d %(process)d %(levelname)s %(name)s: %(message)s"
DATE_FORMAT = "%Y-%m-%d %H:%M:%S"
QUIET = ("httpx", "httpcore", "hpack", "hypercorn.access")
LEVELS = ("debug", "info", "warning", "error")
# logging level -> syslog priority (sd-daemon(3) prefixes)
_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}


def default_log_file(vm: str, mountpoint: str) -> Path:
    """Where a detached daemon logs without ``--log-file``: a readable name per VM and mount point."""
    import platformdirs

    name = f"{_file_part(vm)}-{_file_part(os.path.basename(mountpoint.rstrip('/')) or 'root')}.log"
    return platformdirs.user_state_path("arkerfs") / "logs" / name


def _file_part(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip(".")[:80] or "_"


def under_journald(stream) -> bool:
    """True if ``stream`` is the journal's stream socket ($JOURNAL_STREAM is "device:inode")."""
    value = os.environ.get("JOURNAL_STREAM", "")
    try:
        device, inode = (int(part) for part in value.split(":"))
        st = os.fstat(stream.fileno())
    except (ValueError, OSError, AttributeError):
        return False
    return (st.st_dev, st.st_ino) == (device, inode)


class JournalFormatter(logging.Formatter):
    """``<priority>name: message``, the priority repeated on every line of a traceback."""

    def __init__(self) -> None:
        super().__init__("%(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        prefix = f"<{_PRIORITY.get(record.levelno, 6)}>"
        return "\n".join(prefix + line for line in super().format(record).splitlines())


def open_log_file(path: str):
    Path(path).parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
    return os.fdopen(fd, "a", buffering=1, encoding="utf-8")


def setup_logging(log_file: str | None, *, debug: bool = False, level: str | None = None) -> None:
    """Log to ``log_file``, else stderr (journal-style under systemd), at ``level`` (a name of
    LEVELS; ``debug=True`` means "debug")."""
    stream = open_log_file(log_file) if log_file else sys.stderr
    handler = logging.StreamHandler(stream)
    if not log_file and under_journald(stream):
        handler.setFormatter(JournalFormatter())
    else:
        handler.setFormatter(logging.Formatter(FORMAT, datefmt=DATE_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if debug else getattr(logging, (level or "info").upper()))
    for name in QUIET:
        logging.getLogger(name).setLevel(logging.WARNING)
    faulthandler.enable(file=stream)
    faulthandler.register(signal.SIGUSR1, file=stream, all_threads=True)
