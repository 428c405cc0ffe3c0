"""What a running mount measures about itself, for ``arkerfs status``.

- ``ApiCalls``: every HTTP request the mount sends (each retry attempt too, as the server counts
  them), by kind — the local server's route names (run, sync_read, sync_write, presigned_get,
  presigned_put, list, fork, delete) — with failures and latency percentiles over a window.
- ``LastProblem``: a logging handler that keeps the newest WARNING-or-worse record.

All of it is in memory, cheap to update on the hot path, and read only when asked.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import dataclass, field

LATENCY_WINDOW = 4096  # latencies kept per kind: percentiles describe the recent past


@dataclass
class _Kind:
    calls: int = 0
    failed: int = 0
    latencies: deque = field(default_factory=lambda: deque(maxlen=LATENCY_WINDOW))


class ApiCalls:
    def __init__(self) -> None:
        self._kinds: dict[str, _Kind] = {}

    def record(self, kind: str, seconds: float, ok: bool) -> None:
        entry = self._kinds.get(kind)
        if entry is None:
            entry = self._kinds[kind] = _Kind()
        entry.calls += 1
        entry.failed += not ok
        entry.latencies.append(seconds)

    def total(self) -> int:
        return sum(k.calls for k in self._kinds.values())

    def snapshot(self) -> dict:
        out = {}
        for kind, entry in sorted(self._kinds.items()):
            ordered = sorted(entry.latencies)
            out[kind] = {
                "calls": entry.calls,
                "failed": entry.failed,
                **{f"p{q}_ms": round(_percentile(ordered, q) * 1000, 1) for q in (50, 95, 99)},
            }
        return out


def _percentile(ordered: list[float], q: int) -> float:
    """Nearest-rank percentile of an already sorted list (0 for an empty one)."""
    if not ordered:
        return 0.0
    rank = max(1, -(-q * len(ordered) // 100))  # ceil(q/100 * n)
    return ordered[rank - 1]


class LastProblem(logging.Handler):
    """Keeps the newest WARNING/ERROR record's time, level and message (logs never hold the key)."""

    def __init__(self) -> None:
        super().__init__(level=logging.WARNING)
        self.last: dict | None = None

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
        except Exception:  # a bad format string must not break logging
            message = str(record.msg)
        self.last = {"time": record.created, "level": record.levelname, "message": message[:500]}


def uptime_since(started_monotonic: float) -> float:
    return round(time.monotonic() - started_monotonic, 1)
