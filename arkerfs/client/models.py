"""Result records returned by the SDK, built from wire JSON (PROTOCOL.md §4.1, §4.4)."""

from __future__ import annotations

import base64
from dataclasses import dataclass

from arkerfs.client.errors import ArkerError


def decode_output(text: object, encoding: object) -> bytes:
    """Run output to bytes: base64 only for the exact label ``"base64"``, else UTF-8 text.

    Like the core clients, a label of ``"base64"`` on text that does not decode falls back to
    the text's UTF-8 bytes rather than failing the whole run.
    """
    value = text if isinstance(text, str) else ""
    if encoding == "base64":
        try:
            return base64.b64decode(value, validate=True)
        except ValueError:  # binascii.Error: fall through to the documented text fallback
            pass
    return value.encode("utf-8")


@dataclass(frozen=True, slots=True)
class RunResult:
    """One finished ``run``. ``exit_code`` is None when the run ended without a status."""

    stdout: bytes
    stderr: bytes
    exit_code: int | None
    duration_ms: float
    session_id: str
    cwd: str
    timed_out: bool = False

    @property
    def ok(self) -> bool:
        return self.exit_code == 0

    @property
    def completed(self) -> bool:
        """False for a timeout kill, a lost run (negative code) or a missing status (§7.5)."""
        return self.exit_code is not None and self.exit_code >= 0 and not self.timed_out

    @classmethod
    def from_wire(cls, r: dict) -> RunResult:
        try:
            exit_code = r.get("exit_code")
            return cls(
                stdout=decode_output(r.get("stdout"), r.get("stdout_encoding")),
                stderr=decode_output(r.get("stderr"), r.get("stderr_encoding")),
                exit_code=None if exit_code is None else int(exit_code),
                duration_ms=float(r.get("duration_ms") or 0),
                session_id=str(r.get("session_id", "")),
                cwd=str(r.get("cwd", "")),
                timed_out=bool(r.get("timed_out", False)),
            )
        except (TypeError, ValueError) as exc:
            raise ArkerError("internal", f"malformed run response: {exc}", 200) from exc


@dataclass(frozen=True, slots=True)
class VmSummary:
    """One VM as listed. ``created_at`` is the server's ISO-8601 UTC string."""

    vm_id: str
    name: str | None
    base_image: str
    region: str
    created_at: str

    @classmethod
    def from_wire(cls, item: object) -> VmSummary:
        if not isinstance(item, dict):
            raise ArkerError("internal", f"malformed list item: {item!r}", 200)
        missing = [k for k in ("vm_id", "base_image", "region", "created_at") if k not in item]
        if missing:
            raise ArkerError("internal", f"list item lacks {', '.join(missing)}", 200)
        return cls(
            vm_id=str(item["vm_id"]),
            name=item.get("name"),
            base_image=str(item["base_image"]),
            region=str(item["region"]),
            created_at=str(item["created_at"]),
        )


@dataclass(frozen=True, slots=True)
class VmList:
    """One page of ``list``; ``total`` counts every match, ignoring limit and offset."""

    items: list[VmSummary]
    total: int
