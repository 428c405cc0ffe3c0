"""HMAC-signed tokens for presigned blob URLs (``/_blob/{token}``).

A token names exactly one object and one operation: VM id, VM path, ``GET`` or ``PUT``,
upload id (PUT only), declared size (PUT: the most the body may hold; GET: with inode and
mtime_ns, the version the URL serves, see snapshots.py) and an absolute expiry. It is
``base64url(json payload) "." base64url(HMAC-SHA256(secret, payload))``. The secret lives in
``<data-dir>/blob-secret`` (0600) so URLs stay valid across a restart of the same data dir.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

SECRET_FILE = "blob-secret"
MAX_TOKEN_CHARS = 16384


class TokenError(Exception):
    """The token is forged, tampered with, expired or for another operation (answered 403)."""


@dataclass(frozen=True)
class Grant:
    vm_id: str
    path: str
    op: str  # "GET" | "PUT"
    expires_at: float
    upload_id: str = ""
    size: int = 0
    ino: int = 0  # GET only, with size and mtime_ns: the version served
    mtime_ns: int = 0


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def load_secret(data_dir: Path) -> bytes:
    """The per-data-dir signing secret, created (0600) on first use."""
    path = data_dir / SECRET_FILE
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except FileExistsError:
        secret = path.read_bytes()
        if len(secret) < 32:
            raise ValueError(f"{path} is shorter than 32 bytes; delete it to make a new one") from None
        return secret
    secret = secrets.token_bytes(32)
    with os.fdopen(fd, "wb") as f:
        f.write(secret)
    return secret


class Signer:
    """Issues and checks grants with one secret."""

    def __init__(self, secret: bytes) -> None:
        self._secret = secret

    def _mac(self, payload: str) -> bytes:
        return hmac.new(self._secret, payload.encode("ascii"), hashlib.sha256).digest()

    def issue(self, grant: Grant) -> str:
        body = {"v": grant.vm_id, "p": grant.path, "o": grant.op, "e": round(grant.expires_at, 3)}
        if grant.op == "PUT":
            body |= {"u": grant.upload_id, "s": grant.size}
        else:
            body |= {"s": grant.size, "i": grant.ino, "m": grant.mtime_ns}
        payload = _b64(json.dumps(body, separators=(",", ":")).encode("utf-8"))
        return f"{payload}.{_b64(self._mac(payload))}"

    def verify(self, token: str, op: str, now: float | None = None) -> Grant:
        """The grant carried by ``token`` if it is authentic, unexpired and for ``op``."""
        if len(token) > MAX_TOKEN_CHARS or token.count(".") != 1:
            raise TokenError("malformed token")
        payload, _, mac = token.partition(".")
        try:
            # Compare the canonical encoding, not decoded bytes: base64 ignores the spare low bits
            # of its last character, so two spellings of one MAC must not both be accepted.
            expected = _b64(self._mac(payload))
            ok = hmac.compare_digest(mac.encode("ascii"), expected.encode("ascii"))
            body = json.loads(_unb64(payload)) if ok else None
        except (binascii.Error, ValueError, UnicodeEncodeError):
            raise TokenError("malformed token") from None
        if not ok:
            raise TokenError("bad signature")
        grant = Grant(
            vm_id=body["v"], path=body["p"], op=body["o"], expires_at=body["e"],
            upload_id=body.get("u", ""), size=body.get("s", 0), ino=body.get("i", 0), mtime_ns=body.get("m", 0),
        )
        if grant.op != op:
            raise TokenError(f"token is for {grant.op}, not {op}")
        if (time.time() if now is None else now) >= grant.expires_at:
            raise TokenError("URL expired")
        return grant
