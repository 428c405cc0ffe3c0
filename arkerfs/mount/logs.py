"""Logging for the mount daemon: one handler (a file, or stderr in the foreground).

httpx/httpcore log every request URL at INFO; presigned URLs are bearer credentials for file
contents, so those loggers are kept at WARNING. The API key travels only in a header and is never
logged. ``faulthandler`` dumps all stacks on SIGUSR1, for a daemon that looks hung.
"""

from __future__ import annotations

import faulthandler
import logging
import signal
import sys

FORMAT = "%(asctime)s.%(msecs)03d %(process)d %(levelname)s %(name)s: %(message)s"
QUIET = ("httpx", "httpcore", "hpack", "hypercorn.access")


def setup_logging(log_file: str | None, *, debug: bool = False) -> None:
    if log_file:
        stream = open(log_file, "a", buffering=1, encoding="utf-8")
    else:
        stream = sys.stderr
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter(FORMAT, datefmt="%Y-%m-%d %H:%M:%S"))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if debug else logging.INFO)
    for name in QUIET:
        logging.getLogger(name).setLevel(logging.WARNING)
    faulthandler.enable(file=stream)
    faulthandler.register(signal.SIGUSR1, file=stream, all_threads=True)
