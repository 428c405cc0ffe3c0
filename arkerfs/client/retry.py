"""Retry policy (PROTOCOL.md §6.4): which failures are transient, how long to wait, and the
one retry loop (``retrying``) that the transport, the sync-write entries and RemoteFS share.

Whether a transient failure may actually be *replayed* depends on the request (§6.3) and is
decided by each caller's ``classify``; this module only classifies failures, computes delays
and runs the loop.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import anyio

T = TypeVar("T")
E = TypeVar("E", bound=Exception)

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

    ``log_level``: how loudly the client logs giving up on a request and an outage (WARNING; a
    caller that reports such failures itself, like the mount's change watcher, lowers it).
    """

    attempts: int = 4
    base_delay: float = 0.2
    max_delay: float = 2.0
    hint_cap: float = 10.0
    jitter: float = 0.05
    outage_deadline: float | None = None
    log_level: int = logging.WARNING

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


@dataclass(frozen=True)
class Retry:
    """``classify``'s answer for a failure worth another attempt.

    ``Retry(hint)`` uses up one of the policy's attempts and waits ``policy.delay(n, hint)``:
    the backoff, or the server's hint capped at ``hint_cap``. ``Retry.uncounted(seconds)``
    waits exactly that long and uses up no attempt (outage mode: the request never left).
    """

    hint: float | None = None
    wait: float | None = None  # set by ``uncounted`` only

    @classmethod
    def uncounted(cls, seconds: float) -> Retry:
        return cls(wait=seconds)


class AttemptFailed(Exception):
    """An attempt's failure handed to ``retrying``: ``error`` is what the caller raises in the
    end, ``hint`` the server's wait hint. The wrapper keeps such a failure apart from errors of
    the same type that must pass through unretried (a sync-write entry's error vs. the error
    of the request that carried it)."""

    def __init__(self, error: Exception, hint: float | None = None) -> None:
        super().__init__(error)
        self.error = error
        self.hint = hint


async def retrying(
    policy: RetryPolicy,
    attempt: Callable[[int], Awaitable[T]],
    *,
    classify: Callable[[E], Retry | None],
    catch: type[E] | tuple[type[E], ...] = Exception,
    on_retry: Callable[[E, float, int], None] | None = None,
    on_give_up: Callable[[E], None] | None = None,
) -> T:
    """``await attempt(tries)`` until it returns; ``tries`` counts the earlier calls (> 0: a retry).

    A failure of type ``catch`` goes to ``classify``: None re-raises it at once (not transient,
    or not safe to replay: the caller's rule, PROTOCOL.md §6.3), a ``Retry`` sleeps and calls
    ``attempt`` again. Once ``policy.attempts`` counted attempts have failed, ``on_give_up(exc)``
    is called and the last failure re-raised. ``on_retry(exc, delay, number)`` runs before each
    counted retry's sleep; ``number`` is the attempt about to be made (2 for the first retry).

    Everything else passes through untouched, cancellation included (it is not an
    ``Exception`` under asyncio or trio). Sleeps with anyio, so it runs on either event loop.
    """
    retries = 0  # failures counted against policy.attempts
    tries = 0
    while True:
        try:
            return await attempt(tries)
        except catch as exc:
            tries += 1
            decision = classify(exc)
            if decision is None:
                raise
            if decision.wait is not None:
                delay = decision.wait
            else:
                if retries + 1 >= policy.attempts:
                    if on_give_up is not None:
                        on_give_up(exc)
                    raise
                delay = policy.delay(retries, decision.hint)
                retries += 1
                if on_retry is not None:
                    on_retry(exc, delay, retries + 1)
        # Outside the except block: a cancelled sleep must not carry this failure as its context.
        await anyio.sleep(delay)
