"""Retry policy (PROTOCOL.md §6.4): which failures are transient, and how long to wait.

Whether a transient failure may actually be *replayed* depends on the request (§6.3) and is
decided by the transport; this module only classifies failures and computes delays.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

TRANSIENT_STATUSES = frozenset({429, 502, 503, 504})
# Union of the core and later-API transient codes, plus the busy codes (never started).
TRANSIENT_CODES = frozenset(
    {"unavailable", "capacity_unavailable", "rate_limited", "gateway_timeout", "vm_busy", "resource_busy"}
)
BUSY_CODES = frozenset({"vm_busy", "resource_busy"})
# Core clients retry `internal` only when the message passes through an object-store or AWS
# throttling phrase (§6.1). Case-sensitive on purpose, like the reference clients.
THROTTLE_HINTS = ("503", "Service Unavailable", "throttle", "SlowDown", "ThrottlingException")
NEVER_RETRY_CODES = frozenset({"quota_exceeded"})


def is_transient(status: int | None, code: str | None, message: str = "") -> bool:
    """True if the failure may go away by itself. ``status`` is None for per-entry errors."""
    if code in NEVER_RETRY_CODES:
        return False
    if status in TRANSIENT_STATUSES or code in TRANSIENT_CODES:
        return True
    return code == "internal" and any(hint in message for hint in THROTTLE_HINTS)


@dataclass(frozen=True)
class RetryPolicy:
    """How many attempts a request gets and how long to wait between them.

    ``attempts`` counts the first try. Without a server hint the wait before retry ``n``
    (0-based) is ``min(max_delay, base_delay * 2**n)`` plus 0–``jitter`` s of random jitter;
    a ``retry_after_seconds``/``Retry-After`` hint replaces it, capped at ``hint_cap``.
    ``RetryPolicy(attempts=1)`` disables retries.

    Outage mode (``outage_deadline`` seconds, default None = off): a failure to *connect*
    (refused, connect timeout, no pooled connection) proves the request never left, so it is
    safe to repeat for ANY request, run and fork included. With a deadline set, such failures
    do not use up ``attempts``: the request is retried with the same capped backoff until the
    server answers or ``outage_deadline`` seconds have passed since the first of a run of
    consecutive connect failures; then the last error is raised. Off, a connect failure is an
    ordinary transient failure and counts as one of the ``attempts``.
    """

    attempts: int = 4
    base_delay: float = 0.2
    max_delay: float = 2.0
    hint_cap: float = 10.0
    jitter: float = 0.05
    outage_deadline: float | None = None

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError("RetryPolicy.attempts must be at least 1")
        if self.outage_deadline is not None and self.outage_deadline < 0:
            raise ValueError("RetryPolicy.outage_deadline must not be negative")

    def delay(self, retry_index: int, hint: float | None = None) -> float:
        """Seconds to sleep before retry number ``retry_index`` (0 for the first retry)."""
        if hint is not None:
            return min(max(hint, 0.0), self.hint_cap)
        return min(self.max_delay, self.base_delay * 2**retry_index) + random.uniform(0, self.jitter)


def hint_seconds(error: object) -> float | None:
    """The ``retry_after_seconds`` scheduling hint of a wire error object, if it has one."""
    value = error.get("retry_after_seconds") if isinstance(error, dict) else None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return None
