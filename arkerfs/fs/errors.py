"""The one error vocabulary of the filesystem layers and the one table that maps to errno.

Everything below the FUSE adapter raises ``FsError(errno)``; the adapter turns it into
``pyfuse3.FUSEError``. API failures (``ArkerError``) are translated here and nowhere else.
"""

from __future__ import annotations

import errno as E
import logging
import time

log = logging.getLogger(__name__)
KEY_REFUSED_LOG_INTERVAL = 60.0  # seconds between two "key refused" lines
_key_refused_logged: float | None = None


class FsError(Exception):
    """A filesystem operation failed with ``errno``; ``detail`` is for the log only."""

    def __init__(self, errno: int, detail: str = "") -> None:
        super().__init__(errno, detail or E.errorcode.get(errno, str(errno)))
        self.errno = errno
        self.detail = detail

    def __str__(self) -> str:
        name = E.errorcode.get(self.errno, str(self.errno))
        return f"{name}: {self.detail}" if self.detail else name


# API error code -> errno (PROTOCOL.md section 5). Anything not listed is EIO.
API_CODE_ERRNO = {
    "bad_request": E.EINVAL,
    "unauthorized": E.EACCES,
    "payment_required": E.EACCES,
    "forbidden": E.EACCES,
    "action_required": E.EACCES,
    "not_found": E.ENOENT,
    "conflict": E.EBUSY,
    "already_exists": E.EEXIST,
    "payload_too_large": E.EFBIG,
    "not_implemented": E.ENOSYS,
    "method_not_allowed": E.ENOSYS,
    "unsupported_operation": E.ENOTSUP,
    "vm_busy": E.EBUSY,
    "resource_busy": E.EBUSY,
    "rate_limited": E.EAGAIN,
    "capacity_unavailable": E.EAGAIN,
    "quota_exceeded": E.EDQUOT,
    "insufficient_resources": E.EINVAL,
    "timeout": E.ETIMEDOUT,
}


def errno_for_api_error(exc: Exception) -> int:
    """Map an ``ArkerError`` (anything with a ``code`` attribute) to an errno."""
    code = getattr(exc, "code", "internal") or "internal"
    if code == "unauthorized":
        _log_key_refused(exc)
    if code.startswith("unsupported_"):
        return E.ENOTSUP
    return API_CODE_ERRNO.get(code, E.EIO)


def _log_key_refused(exc: Exception) -> None:
    """A revoked or expired key fails every operation with EACCES: say why, once a minute."""
    global _key_refused_logged
    now = time.monotonic()
    if _key_refused_logged is None or now - _key_refused_logged >= KEY_REFUSED_LOG_INTERVAL:
        _key_refused_logged = now
        log.error("the API key was refused (%s); operations fail with EACCES until the server accepts it",
                  getattr(exc, "message", "") or exc)
