"""Read-URL snapshots: a presigned GET serves the version of the file it was issued for.

An object store's presigned GET names one version of an object: a later write makes a new
version and leaves the URL's bytes alone (PROTOCOL.md 10.2: "the URL is a snapshot of the file
at the time of the request"). The local server gets the same effect from the file descriptor
the sync read opened, kept until the URL expires: renaming a new file over the path (every
upload, ``mv``, most editors) leaves that descriptor on the old inode, whose bytes stay readable.
Nothing is copied and nothing shows in the VM (no name, no extra link).

Every URL also carries its version's validator (inode, size, mtime_ns), checked on every GET.
A file changed in place (same inode: ``dd conv=notrunc``, ``>>``) no longer matches, and the GET
is refused (412) instead of serving bytes of two versions. Without a held descriptor (the server
restarted, or more than ``MAX_HELD`` versions are held) the path is opened again and served only
if it still matches.

One descriptor serves every URL of a version. It is closed once the last of those URLs has
expired (checked on each read request), when the VM is deleted, or when evicted past
``MAX_HELD``, so what the snapshots keep on disk is bounded by the URL lifetime.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from email.utils import formatdate

MAX_HELD = 256  # descriptors kept open at most (the process's fd limit is shared with sockets)


@dataclass(frozen=True)
class Version:
    """The validator of one version of a file."""

    ino: int
    size: int
    mtime_ns: int

    @classmethod
    def of(cls, fd: int) -> Version:
        st = os.fstat(fd)
        return cls(st.st_ino, st.st_size, st.st_mtime_ns)

    @property
    def etag(self) -> str:
        return f'"{self.ino:x}-{self.size:x}-{self.mtime_ns:x}"'

    @property
    def last_modified(self) -> str:
        return formatdate(self.mtime_ns / 1e9, usegmt=True)


class VersionChanged(Exception):
    """The file no longer holds the version a URL names (answered 412)."""


@dataclass
class _Held:
    fd: int
    expires_at: float


class Snapshots:
    """Descriptors of the versions that unexpired read URLs name."""

    def __init__(self, clock=time.time) -> None:
        self._clock = clock
        self._held: dict[tuple[str, Version], _Held] = {}

    def hold(self, vm_id: str, fd: int, expires_at: float) -> Version:
        """Keep ``fd`` (now owned here) until ``expires_at``; returns its version."""
        self.sweep()
        version = Version.of(fd)
        held = self._held.get((vm_id, version))
        if held is not None:  # another URL for a version already held: one descriptor is enough
            os.close(fd)
            held.expires_at = max(held.expires_at, expires_at)
            return version
        while len(self._held) >= MAX_HELD:  # its URLs fall back to the path check
            soonest = min(self._held, key=lambda k: self._held[k].expires_at)
            os.close(self._held.pop(soonest).fd)
        self._held[(vm_id, version)] = _Held(fd, expires_at)
        return version

    def take(self, vm_id: str, version: Version) -> int | None:
        """A new descriptor (the caller closes it) on the held ``version``, or None."""
        self.sweep()
        held = self._held.get((vm_id, version))
        return None if held is None else os.dup(held.fd)

    def forget_vm(self, vm_id: str) -> None:
        for key in [k for k in self._held if k[0] == vm_id]:
            os.close(self._held.pop(key).fd)

    def sweep(self) -> None:
        now = self._clock()
        for key in [k for k, held in self._held.items() if held.expires_at <= now]:
            os.close(self._held.pop(key).fd)


def check(fd: int, version: Version) -> None:
    """Raise VersionChanged unless ``fd`` still holds ``version``."""
    if Version.of(fd) != version:
        raise VersionChanged
