"""Pending pushes draining, shown while a command waits on a daemon (``umount``, ``sync``); the
one-line summary of pending pushes (``pending_line``) is also ``status``'s (and ``--watch``'s).

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


def follow(snapshot: Callable[[], dict | None], done: Callable[[], bool], label: str, *,
           look_every: float = 0.5, check_every: float = 0.05, first_look: float = 0.5,
           stream=None) -> None:
    """Wait until ``done()`` (checked every ``check_every`` s), showing ``snapshot()["pending"]``
    every ``look_every`` s from ``first_look`` s on (a quick wait shows nothing). A None snapshot
    (the daemon cannot say: it is unmounting, say) is skipped."""
    progress = DrainProgress(label, stream)
    next_look = time.monotonic() + first_look
    try:
        while not done():
            now = time.monotonic()
            if now >= next_look:
                next_look = now + look_every
                answer = snapshot()
                if answer is not None:
                    progress.update(answer["pending"])
            time.sleep(check_every)
    finally:
        progress.close()


def pending_of(mountpoint: str) -> Callable[[], dict | None]:
    """A ``snapshot`` for ``follow``: the status of the daemon of ``mountpoint``, None if it does
    not answer within a second."""
    from arkerfs.mount.status import StatusUnavailable, query

    def snapshot() -> dict | None:
        try:
            return query(mountpoint, timeout=1.0)
        except StatusUnavailable:
            return None

    return snapshot
