"""Test hooks: injected latency/failures and per-route call statistics (``/_local/``).

Faults are checked at the top of each API and blob handler, before anything with a side
effect, so an injected failure guarantees the request did not execute (its envelope says
``"recovery": {"work": "not_started"}``). Draws come from ``random.Random(seed)`` so a test
that sets a seed sees the same sequence every time.

Two opt-in modes model failures the default cannot (both off unless set in the POST body):

- ``after_effect: true``: a request drawn to fail by ``fail_rate`` is executed in full FIRST,
  and only its response is replaced by the ``fail_status`` envelope, with
  ``"recovery": {"work": "unknown"}`` ("acted, then the gateway timed out"). This is what a
  client must reconcile rather than replay. ``busy_rate`` is unaffected (busy never starts).
- ``run_stall_ms``: every run sleeps this long inside its sandbox before the command, so the
  stall counts against the run's own ``timeout`` (a command that hangs; ``timed_out`` result).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import trio

from arkerfs.server.errors import CODE_FOR_STATUS, ApiError, reason

ROUTES = ("run", "sync_read", "sync_write", "presigned_get", "presigned_put", "fork", "delete", "list")
FAULT_FIELDS = ("latency_ms", "fail_rate", "fail_status", "busy_rate", "seed", "after_effect", "run_stall_ms")
MAX_LATENCY_MS = 60_000


@dataclass
class Stats:
    calls: dict[str, int] = field(default_factory=lambda: dict.fromkeys(ROUTES, 0))
    bytes_in: int = 0
    bytes_out: int = 0

    def body(self) -> dict:
        return {"ok": True, "calls": dict(self.calls), "bytes_in": self.bytes_in, "bytes_out": self.bytes_out}


def _number(spec: dict, key: str, lo: float, hi: float, default: float) -> float:
    value = spec.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not lo <= value <= hi:
        raise ApiError("bad_request", f"{key} must be a number from {lo:g} to {hi:g}")
    return value


@dataclass
class Faults:
    """The active fault settings; each POST /_local/faults replaces all of them."""

    latency_ms: float = 0.0
    fail_rate: float = 0.0
    fail_status: int = 503
    busy_rate: float = 0.0
    seed: int | None = None
    after_effect: bool = False
    run_stall_ms: float = 0.0
    rng: random.Random = field(default_factory=random.Random, repr=False)

    @classmethod
    def from_request(cls, spec: object) -> "Faults":
        """Validate a POST body; missing fields take their defaults, so ``{}`` clears everything."""
        if not isinstance(spec, dict):
            raise ApiError("bad_request", "faults must be a JSON object")
        unknown = set(spec) - set(FAULT_FIELDS)
        if unknown:
            raise ApiError("bad_request", f"unknown fault fields: {', '.join(sorted(unknown))}")
        status = spec.get("fail_status", 503)
        if isinstance(status, bool) or not isinstance(status, int) or not 400 <= status <= 599:
            raise ApiError("bad_request", "fail_status must be an integer HTTP status from 400 to 599")
        seed = spec.get("seed")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise ApiError("bad_request", "seed must be an integer or null")
        after_effect = spec.get("after_effect", False)
        if not isinstance(after_effect, bool):
            raise ApiError("bad_request", "after_effect must be true or false")
        return cls(
            latency_ms=_number(spec, "latency_ms", 0, MAX_LATENCY_MS, 0),
            fail_rate=_number(spec, "fail_rate", 0, 1, 0),
            fail_status=status,
            busy_rate=_number(spec, "busy_rate", 0, 1, 0),
            seed=seed,
            after_effect=after_effect,
            run_stall_ms=_number(spec, "run_stall_ms", 0, MAX_LATENCY_MS, 0),
            rng=random.Random(seed),
        )

    def body(self) -> dict:
        return {
            "latency_ms": self.latency_ms, "fail_rate": self.fail_rate, "fail_status": self.fail_status,
            "busy_rate": self.busy_rate, "seed": self.seed,
            "after_effect": self.after_effect, "run_stall_ms": self.run_stall_ms,
        }

    async def apply(self, route: str) -> ApiError | None:
        """Delay, then maybe fail this request; called before the handler does anything.

        Returns the error to answer *instead of* the handler's response, after the handler
        has run (``after_effect``), else None."""
        if self.latency_ms:
            await trio.sleep(self.latency_ms / 1000)
        if self.fail_rate and self.rng.random() < self.fail_rate:
            status = self.fail_status
            if self.after_effect:
                return ApiError(
                    CODE_FOR_STATUS.get(status, "internal"),
                    f"{reason(status)} (injected fault, after the request took effect)",
                    status=status, recovery={"work": "unknown"},
                )
            raise ApiError(
                CODE_FOR_STATUS.get(status, "internal"),
                f"{reason(status)} (injected fault)",
                status=status, recovery={"work": "not_started"},
            )
        if route == "run" and self.busy_rate and self.rng.random() < self.busy_rate:
            raise ApiError("vm_busy", "VM is busy (injected fault)", recovery={"work": "not_started"})
        return None
