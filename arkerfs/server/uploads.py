"""The upload ledger: chunked and presigned writes staged outside the VM home until complete.

One ``Upload`` per (VM, upload id). Chunks are written into a sparse staging file at their
offsets and their ranges merged, so a replayed chunk is harmless (PROTOCOL.md 4.5.4); the
file is installed into the VM only when every byte has arrived. Presigned uploads stage the
PUT body and install on commit (4.5.5). A finished upload stays in the ledger, so replaying
its last chunk or its commit answers success again instead of writing twice.

The ledger is in memory: staging is wiped at start. A presigned PUT re-creates its entry
from the signed token, so an upload URL still works after a restart.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import trio

from arkerfs.server import confine, vmfiles
from arkerfs.server.errors import EntryError

PUT_CHUNK = 1 << 20


@dataclass
class Upload:
    vm_id: str
    upload_id: str
    path: str
    size: int
    presigned: bool
    staging: Path
    last_activity: float
    ranges: list[list[int]] = field(default_factory=list)
    put_bytes: int | None = None  # presigned: length of the last complete PUT body
    written: bool = False
    lock: trio.Lock = field(default_factory=trio.Lock)

    @property
    def received(self) -> int:
        return sum(end - start for start, end in self.ranges)

    @property
    def complete(self) -> bool:
        return self.written or self.ranges == [[0, self.size]]


def merge(ranges: list[list[int]], start: int, end: int) -> list[list[int]]:
    """``ranges`` plus [start, end), sorted, with overlapping and adjacent ranges joined."""
    merged: list[list[int]] = []
    for lo, hi in sorted([*ranges, [start, end]]):
        if hi == lo:
            continue
        if merged and lo <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], hi)
        else:
            merged.append([lo, hi])
    return merged


def _pwrite_at(path: Path, size: int, offset: int, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        if os.fstat(fd).st_size != size:
            os.ftruncate(fd, size)
        os.pwrite(fd, data, offset)
    finally:
        os.close(fd)


def _install(home: str, upload: Upload, data: bytes | None) -> None:
    """Install into the VM; confinement problems become per-entry errors."""
    try:
        vmfiles.install(home, upload.path, data=data, staged=None if data is not None else str(upload.staging))
    except confine.ConfineError as exc:
        raise EntryError(exc.code, exc.message) from None
    except OSError as exc:
        raise EntryError("internal", f"storage failure writing {upload.path}: {exc.strerror}") from None


class Uploads:
    """All uploads of one server; ``ttl`` is the idle time after which an upload expires."""

    def __init__(self, staging_dir: Path, ttl: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._dir = staging_dir
        self._ttl = ttl
        self._clock = clock
        self._uploads: dict[tuple[str, str], Upload] = {}

    def _new(self, vm_id: str, upload_id: str, path: str, size: int, presigned: bool) -> Upload:
        digest = hashlib.sha256(f"{vm_id}\0{upload_id}".encode()).hexdigest()
        up = Upload(vm_id, upload_id, path, size, presigned, self._dir / f"{digest}.data", self._clock())
        self._uploads[(vm_id, upload_id)] = up
        return up

    def _check(self, up: Upload, path: str, size: int) -> None:
        if up.path != path or up.size != size:
            raise EntryError("conflict", f"upload_id {up.upload_id} was started for {up.path} ({up.size} bytes)")
        if self._clock() - up.last_activity > self._ttl:
            raise EntryError("expired", f"upload {up.upload_id} expired; start a new upload")

    def presign(self, vm_id: str, path: str, size: int, upload_id: str) -> Upload:
        return self._new(vm_id, upload_id, path, size, presigned=True)

    async def chunk(self, home: str, vm_id: str, upload_id: str, path: str, size: int, start: int, data: bytes) -> Upload:
        """Apply one chunk; installs the file when the upload becomes complete."""
        up = self._uploads.get((vm_id, upload_id))
        if up is None:
            up = self._new(vm_id, upload_id, path, size, presigned=False)
        self._check(up, path, size)
        if up.presigned:
            raise EntryError("conflict", f"upload_id {upload_id} is a presigned upload; commit it instead")
        async with up.lock:
            up.last_activity = self._clock()
            if up.written:
                return up  # replay of a finished upload
            end = start + len(data)
            if not up.ranges and start == 0 and end == size:
                # The whole file in one chunk: install straight from memory, no staging copy.
                await trio.to_thread.run_sync(_install, home, up, data)
            else:
                await trio.to_thread.run_sync(_pwrite_at, up.staging, size, start, data)
                up.ranges = merge(up.ranges, start, end)
                if up.ranges != [[0, size]]:
                    return up
                await trio.to_thread.run_sync(_install, home, up, None)
                up.staging.unlink(missing_ok=True)
            up.ranges = [[0, size]] if size else []
            up.written = True
            return up

    async def receive_put(self, vm_id: str, upload_id: str, path: str, size: int, body: AsyncIterator[bytes], limit: int) -> int:
        """Stage a presigned PUT body (at most ``limit`` bytes); returns its length.

        The body goes to a side file renamed over the staging file only once complete, so an
        interrupted PUT leaves the previous state alone.
        """
        up = self._uploads.get((vm_id, upload_id)) or self._new(vm_id, upload_id, path, size, presigned=True)
        partial = up.staging.with_suffix(f".put-{secrets.token_hex(6)}")
        total = 0
        try:
            async with await trio.open_file(partial, "wb") as out:
                async for chunk in body:
                    total += len(chunk)
                    if total > limit:  # stop here: the rest is neither read nor stored
                        raise EntryError("payload_too_large", f"upload body exceeds {limit} bytes")
                    await out.write(chunk)
            async with up.lock:
                await trio.to_thread.run_sync(os.replace, partial, up.staging)
                up.put_bytes = total
                up.written = False
                up.last_activity = self._clock()
        finally:
            await trio.to_thread.run_sync(lambda: partial.unlink(missing_ok=True))
        return total

    async def commit(self, home: str, vm_id: str, upload_id: str, path: str, size: int) -> Upload:
        """Install a presigned upload's staged body; idempotent once written."""
        up = self._uploads.get((vm_id, upload_id))
        if up is None:
            raise EntryError("not_found", f"unknown upload_id: {upload_id}")
        self._check(up, path, size)
        async with up.lock:
            up.last_activity = self._clock()
            if up.written:
                return up
            if not up.presigned:
                raise EntryError("bad_request", f"upload {upload_id} is incomplete: {up.received} of {size} bytes received")
            if up.put_bytes is None:
                raise EntryError("not_found", f"no data was uploaded for upload_id {upload_id}")
            if up.put_bytes != size:
                raise EntryError("bad_request", f"uploaded {up.put_bytes} bytes but size is {size}")
            await trio.to_thread.run_sync(_install, home, up, None)
            up.written = True
            up.staging.unlink(missing_ok=True)
            return up

    def forget_vm(self, vm_id: str) -> None:
        """Drop a deleted VM's uploads and their staging files."""
        for key in [k for k in self._uploads if k[0] == vm_id]:
            self._uploads.pop(key).staging.unlink(missing_ok=True)

    def sweep(self) -> list[Path]:
        """Forget uploads idle well past expiry; returns their staging files for the caller to delete.

        Until an upload is swept, a late commit is told ``expired`` rather than ``not_found``.
        """
        cutoff = self._clock() - self._ttl - max(self._ttl, 60.0)
        stale = [k for k, up in self._uploads.items() if up.last_activity < cutoff and not up.lock.locked()]
        return [self._uploads.pop(key).staging for key in stale]
