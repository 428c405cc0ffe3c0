"""The SDK's exceptions: ``ArkerError`` and one subclass per family of common codes.

Every failure the SDK reports — an error envelope from the server, a per-entry write error,
a transport failure, or a request refused locally before sending — is an ``ArkerError``,
so callers need exactly one ``except`` clause and can branch on ``.code``; or they catch a
subclass (``NotFoundError``, ``VmBusyError``, ...) for one family of codes.

``ArkerError(code, message, status)`` itself returns an instance of the subclass for
``code`` (a plain ``ArkerError`` for codes without one), so every place that raises by
code — here, in the transport, or in a caller — gets the right class without a lookup.
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

    From later servers (PROTOCOL.md §3.3), when present: ``request_id`` (quote it to
    support), ``details`` (a code-specific object, e.g. ``{"maximum_bytes": ...}``) and
    ``retry_after`` (seconds, from ``retry_after_seconds`` or a ``Retry-After`` header).
    """

    def __new__(cls, code: str = "internal", *args, **kwargs):
        if cls is ArkerError and isinstance(code, str):
            cls = _CLASS_FOR_CODE.get(code) or (UnsupportedError if code.startswith("unsupported_") else ArkerError)
        return super().__new__(cls)

    def __init__(self, code: str, message: str, status: int = 0, *, outcome_unknown: bool = False,
                 never_started: bool = False, request_id: str | None = None, details: dict | None = None,
                 retry_after: float | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.status = status
        self.outcome_unknown = outcome_unknown
        self.never_started = never_started
        self.request_id = request_id
        self.details = details
        self.retry_after = retry_after

    def __reduce__(self):
        # Exception pickling replays ``args`` into __init__, which has a different shape here.
        return (_rebuild, (type(self), self.code, self.message, self.status, self.outcome_unknown,
                           self.never_started, self.request_id, self.details, self.retry_after))

    def __repr__(self) -> str:
        extra = ", outcome_unknown=True" if self.outcome_unknown else ""
        if self.request_id:
            extra += f", request_id={self.request_id!r}"
        return f"{type(self).__name__}({self.code!r}, {self.message!r}, {self.status}{extra})"


class BadRequestError(ArkerError):
    """``bad_request`` (400), ``insufficient_resources``: the request itself is wrong."""


class UnauthorizedError(ArkerError):
    """``unauthorized`` (401): missing or wrong API key."""


class ForbiddenError(ArkerError):
    """``forbidden``, ``payment_required``, ``action_required``: the key may not do this."""


class NotFoundError(ArkerError):
    """``not_found`` (404): no such VM, file or upload."""


class ConflictError(ArkerError):
    """``conflict`` and the other 409s: the state does not allow this request."""


class VmBusyError(ConflictError):
    """``vm_busy`` / ``resource_busy`` (409): another call holds the VM or session; it never started."""


class PayloadTooLargeError(ArkerError):
    """``payload_too_large`` (413): over a size limit (``details`` may name it)."""


class RateLimitedError(ArkerError):
    """``rate_limited`` (429): slow down; ``retry_after`` says for how long when known."""


class UnavailableError(ArkerError):
    """``unavailable``, ``capacity_unavailable``, ``gateway_timeout``, and transport failures
    (status 0): see ``outcome_unknown`` before repeating a request that changes state."""


class UnsupportedError(ArkerError):
    """``not_implemented``, ``method_not_allowed`` and the ``unsupported_*`` family."""


_CLASS_FOR_CODE: dict[str, type[ArkerError]] = {
    "bad_request": BadRequestError,
    "insufficient_resources": BadRequestError,
    "unauthorized": UnauthorizedError,
    "forbidden": ForbiddenError,
    "payment_required": ForbiddenError,
    "action_required": ForbiddenError,
    "not_found": NotFoundError,
    "conflict": ConflictError,
    "already_exists": ConflictError,
    "invalid_state": ConflictError,
    "idempotency_conflict": ConflictError,
    "vm_busy": VmBusyError,
    "resource_busy": VmBusyError,
    "payload_too_large": PayloadTooLargeError,
    "rate_limited": RateLimitedError,
    "unavailable": UnavailableError,
    "capacity_unavailable": UnavailableError,
    "gateway_timeout": UnavailableError,
    "not_implemented": UnsupportedError,
    "method_not_allowed": UnsupportedError,
}


def _rebuild(cls: type[ArkerError], code: str, message: str, status: int, outcome_unknown: bool,
             never_started: bool, request_id: str | None, details: dict | None,
             retry_after: float | None) -> ArkerError:
    return cls(code, message, status, outcome_unknown=outcome_unknown, never_started=never_started,
               request_id=request_id, details=details, retry_after=retry_after)


def error_from_wire(obj: object, status: int) -> ArkerError:
    """Build an ArkerError from a wire error object (envelope ``error`` or per-entry ``error``).

    A missing or non-string code becomes ``internal`` and a missing message ``""`` (§3.2);
    ``request_id``, ``details`` and ``retry_after_seconds`` are kept when well-formed (§3.3).
    """
    fields = obj if isinstance(obj, dict) else {}
    code = fields.get("code")
    message = fields.get("message")
    request_id, details, hint = fields.get("request_id"), fields.get("details"), fields.get("retry_after_seconds")
    return ArkerError(
        code if isinstance(code, str) and code else "internal",
        message if isinstance(message, str) else ("" if message is None else str(message)),
        status,
        request_id=request_id if isinstance(request_id, str) and request_id else None,
        details=details if isinstance(details, dict) else None,
        retry_after=float(hint) if isinstance(hint, (int, float)) and not isinstance(hint, bool) else None,
    )
