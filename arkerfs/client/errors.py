"""The SDK's single exception type.

Every failure the SDK reports — an error envelope from the server, a per-entry write error,
a transport failure, or a request refused locally before sending — is an ``ArkerError``,
so callers need exactly one ``except`` clause and can branch on ``.code``.
"""

from __future__ import annotations


class ArkerError(Exception):
    """An Arker API failure.

    ``code`` is the wire error code (``not_found``, ``vm_busy``, ``unavailable``, ...),
    ``message`` the server's text without the code prefix, and ``status`` the HTTP status
    that carried the error, or 0 when nothing was received (transport failure, or a request
    the SDK refused before sending). ``outcome_unknown`` is True when the request may have
    reached the server and acted (e.g. a read timeout after the body was sent): reconcile
    before repeating it. ``never_started`` is True when the request provably did not execute:
    the connection was never made, or the server said so (``recovery.work == "not_started"``,
    429, ``vm_busy``); such a failure needs no reconciliation.
    """

    def __init__(self, code: str, message: str, status: int = 0, *, outcome_unknown: bool = False,
                 never_started: bool = False) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.status = status
        self.outcome_unknown = outcome_unknown
        self.never_started = never_started

    def __reduce__(self):
        # Exception pickling replays ``args`` into __init__, which has a different shape here.
        return (_rebuild, (self.code, self.message, self.status, self.outcome_unknown, self.never_started))

    def __repr__(self) -> str:
        extra = ", outcome_unknown=True" if self.outcome_unknown else ""
        return f"ArkerError({self.code!r}, {self.message!r}, {self.status}{extra})"


def _rebuild(code: str, message: str, status: int, outcome_unknown: bool, never_started: bool = False) -> ArkerError:
    return ArkerError(code, message, status, outcome_unknown=outcome_unknown, never_started=never_started)


def error_from_wire(obj: object, status: int) -> ArkerError:
    """Build an ArkerError from a wire error object (envelope ``error`` or per-entry ``error``).

    A missing or non-string code becomes ``internal`` and a missing message ``""`` (§3.2).
    """
    fields = obj if isinstance(obj, dict) else {}
    code = fields.get("code")
    message = fields.get("message")
    return ArkerError(
        code if isinstance(code, str) and code else "internal",
        message if isinstance(message, str) else ("" if message is None else str(message)),
        status,
    )
