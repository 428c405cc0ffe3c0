"""Facts of the Arker wire protocol shared by the client and the local server.

Both sides import these so they can never disagree (PROTOCOL.md sections 2 and 8).
"""

from __future__ import annotations

import os
import re
import time

API_PREFIX = "/api/v1"
DEFAULT_BASE_URL = "https://aws-us-west-2.burst.arker.ai"
DEFAULT_LIST_BASE_URL = "https://arker.ai"

# Template aliases are resolved client-side, and only when forking (PROTOCOL.md 2.2).
ARKUNTU_ID = "01KQBYKEV5WJ7YB010603T1DCT_d8c0"
SOURCE_ALIASES = {"arkuntu": ARKUNTU_ID}

HOME = "/home/user"
CHUNK_SIZE = 4 * 1024 * 1024  # <= goes inline, > goes through a presigned PUT
CLIENT_MAX_FILE_BYTES = 100_000_000  # arkerfs refuses above this (EFBIG)
SERVER_MAX_FILE_BYTES = 104_857_600  # the local server refuses above this
SERVER_MAX_SYNC_BODY = 8 * 1024 * 1024
SERVER_MAX_RUN_BODY = 4 * 1024 * 1024
PRESIGN_EXPIRES_IN = 900

ULID_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_SUFFIX = re.compile(r"^[A-Za-z0-9]+$")


def looks_like_vm_id(value: str) -> bool:
    """True for a 26-char Crockford ULID, optionally followed by ``_`` and an ASCII suffix."""
    head, sep, tail = value.partition("_")
    if sep and not _SUFFIX.match(tail):
        return False
    return len(head) == 26 and all(c in ULID_ALPHABET for c in head.upper())


def new_ulid(now: float | None = None) -> str:
    """48 bits of millisecond time followed by 80 random bits, in Crockford base32."""
    millis = int((time.time() if now is None else now) * 1000) & ((1 << 48) - 1)
    raw = (millis << 80) | int.from_bytes(os.urandom(10), "big")
    chars = []
    for _ in range(26):
        chars.append(ULID_ALPHABET[raw & 31])
        raw >>= 5
    return "".join(reversed(chars))


class PathRuleError(ValueError):
    """A sync path breaks the core path rules (PROTOCOL.md 8.2)."""


def check_sync_path(path: str) -> str:
    """Return ``path`` if it is a valid sync target, else raise PathRuleError saying why."""
    if not isinstance(path, str):
        raise PathRuleError("path must be a string")
    if "\x00" in path:
        raise PathRuleError(f"path contains NUL: {path!r}")
    if not path.startswith(HOME + "/"):
        raise PathRuleError(f"path must be under {HOME}/: {path}")
    rest = path[len(HOME) + 1 :]
    if not rest:
        raise PathRuleError(f"path must name a file under {HOME}/: {path}")
    for segment in rest.split("/"):
        if segment in ("", ".", ".."):
            raise PathRuleError(f"path has an empty, '.' or '..' segment: {path}")
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        raise PathRuleError(f"path is not valid Unicode: {path!r}") from None
    return path
