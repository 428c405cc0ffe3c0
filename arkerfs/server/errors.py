"""The server's error vocabulary: envelope errors and per-entry sync-write errors.

Handlers raise ``ApiError``; the app turns it into the core envelope
``{"ok": false, "error": {"code", "message"}}`` (PROTOCOL.md 3.2) with the status from
``STATUS_FOR_CODE`` (PROTOCOL_NOTES #18), so a code and its status can never disagree.
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

STATUS_FOR_CODE = {
    "bad_request": 400,
    "unauthorized": 401,
    "forbidden": 403,
    "not_found": 404,
    "method_not_allowed": 405,
    "vm_busy": 409,
    "conflict": 409,
    "expired": 410,
    "payload_too_large": 413,
    "range_not_satisfiable": 416,
    "rate_limited": 429,
    "internal": 500,
    "not_implemented": 501,
    "unavailable": 503,
    "gateway_timeout": 504,
}

# Injected faults pick their code from the status (PROTOCOL.md 5): anything unlisted is
# reported as `internal`, which clients treat as a plain server failure.
CODE_FOR_STATUS = {status: code for code, status in STATUS_FOR_CODE.items() if code not in ("vm_busy", "expired")}


class ApiError(Exception):
    """A request-level failure, answered as an envelope error."""

    def __init__(
        self, code: str, message: str, *, status: int | None = None, headers: dict[str, str] | None = None, **extra: Any
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status or STATUS_FOR_CODE[code]
        self.headers = headers or {}
        self.extra = extra  # further fields of the error object, e.g. recovery

    def body(self) -> dict:
        return {"ok": False, "error": {"code": self.code, "message": self.message, **self.extra}}


class EntryError(Exception):
    """A failure of one sync-write entry: reported in ``results[i].error``, HTTP stays 200."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    def body(self) -> dict:
        return {"code": self.code, "message": self.message}


def reason(status: int) -> str:
    """The standard reason phrase, e.g. ``Service Unavailable`` for 503."""
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return f"HTTP {status}"
