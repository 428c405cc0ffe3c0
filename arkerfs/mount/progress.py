"""Pending pushes draining, shown while a command waits on a daemon (umount, status --watch).

On a terminal: a tqdm bar of files pushed out of the most seen pending. Otherwise: a plain line
whenever the pending count changes, at most every ``PLAIN_EVERY`` seconds, so logs stay short
and nothing long ever looks hung.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

from tqdm import tqdm

PLAIN_EVERY = 5.0


def human_bytes(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def pending_line(pending: dict) -> str:
    oldest = pending.get("oldest_age_s")
    age = "" if oldest is None else f", oldest {oldest:.1f} s"
    extra = "".join(f", {pending[k]} {k}" for k in ("pushing", "failed") if pending.get(k))
    return f"{pending['files']} file(s), {human_bytes(pending['bytes'])} pending{age}{extra}"


class DrainProgress:
    """Feed it status snapshots with ``update``; ``close`` when done."""

    def __init__(self, label: str, stream=None) -> None:
        self.stream = stream or sys.stderr
        self.label = label
        self._bar: tqdm | None = None
        self._most = 0
        self._last_plain = (None, 0.0)

    def update(self, pending: dict) -> None:
        files = pending["files"]
        self._most = max(self._most, files)
        if self.stream.isatty():
            if self._bar is None:
                self._bar = tqdm(total=self._most, desc=self.label, unit="file", file=self.stream, leave=True)
            self._bar.total = self._most
            self._bar.n = self._most - files
            self._bar.set_postfix_str(pending_line(pending), refresh=False)
            self._bar.refresh()
            return
        shown, when = self._last_plain
        now = time.monotonic()
        if files != shown and (shown is None or now - when >= PLAIN_EVERY or files == 0):
            print(f"{self.label}: {pending_line(pending)}", file=self.stream, flush=True)
            self._last_plain = (files, now)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def follow(snapshot: Callable[[], dict | None], done: Callable[[], bool], label: str,
           interval: float = 0.5, stream=None) -> None:
    """Show ``snapshot()["pending"]`` until ``done()``; a None snapshot (daemon gone) ends it."""
    progress = DrainProgress(label, stream)
    try:
        while not done():
            answer = snapshot()
            if answer is None:
                return
            progress.update(answer["pending"])
            time.sleep(interval)
    finally:
        progress.close()
