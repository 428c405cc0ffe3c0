"""Open files: handles, the per-inode state they share, and the load/push of write buffers.

All handles of one inode share one ``OpenFile``: one ``WriteBuffer`` (created by the first
writable open), one ``trio.Lock`` and the set of handles. Readers of an inode that has a buffer
read the buffer, so they see unflushed writes like on a local disk; other readers read a
``FileContent`` version pinned at their first read.

Writes only touch the buffer. ``push`` uploads the whole buffer as ONE ``write_file`` when it is
dirty (flush on every close(), fsync, unmount), naming the VM's version it was based on
(``base``): if the VM changed the file since, its version stays and ours goes beside it as a
conflict copy (see ``RemoteFS.write_file``). A chmod or utimens that arrives while data is
pending (tar's ``futimens``+``fchmod`` before close) is recorded on the ``OpenFile``
(``pending_mode``/``pending_times``), shown at once through ``overlay``, and applied by the
upload's single follow-up run. A write or truncate past the size cap (EFBIG) refuses the
unsent content: every later close/fsync fails with EFBIG and uploads nothing, and the content is
discarded with the last handle (the VM keeps its old file). A failed push leaves the buffer dirty so a later
close/fsync retries; when the last handle goes with unsent data the content is saved to a rescue
file and its path logged at ERROR. An existing file opened for writing without O_TRUNC is
fetched lazily, at the first read/write that needs its old bytes (a truncate to 0 first never
fetches).

Concurrency contract: handlers interleave at every await. Buffer mutations, loads and uploads of
one inode happen under its ``lock``; bookkeeping (handle tables, counts) is synchronous.
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass, field, replace

import trio

from arkerfs.fs.buffers import WriteBuffer
from arkerfs.fs.content import CHUNK, FileContent
from arkerfs.fs.errors import FsError
from arkerfs.fs.model import Attrs
from arkerfs.protocol import CLIENT_MAX_FILE_BYTES


@dataclass(eq=False)
class OpenFile:
    """What all open handles of one inode share."""

    ino: int
    lock: trio.Lock = field(default_factory=trio.Lock)
    buffer: WriteBuffer | None = None
    needs_load: bool = False  # buffer must first receive the remote's current bytes
    # the VM's version the buffer's content was based on (loaded, opened or created by the
    # mount, or last pushed): a push installs only over that version (compare-and-swap)
    base: Attrs | None = None
    handles: int = 0
    # (atime_ns, mtime_ns) set while data was pending (tar's futimens before close): the upload
    # would stamp "now", so they are applied right after it.
    pending_times: tuple[int | None, int | None] | None = None
    # permission bits set while data was pending: applied with the upload's follow-up run
    pending_mode: int | None = None
    # for `arkerfs status` and user.arkerfs.state: since when (monotonic) something is pending,
    # whether an upload is in flight, whether the last one failed
    dirty_since: float | None = None
    pushing: bool = False
    push_failed: bool = False

    def note_dirty(self, now: float) -> None:
        if self.dirty_since is None:
            self.dirty_since = now

    @property
    def sync_state(self) -> str:
        """clean, pending, pushing or failed (see ``VFS.sync_state``)."""
        if self.pushing:
            return "pushing"
        if not self.dirty:
            return "clean"
        return "failed" if self.push_failed else "pending"

    @property
    def dirty(self) -> bool:
        """Something still has to reach the remote (refused content never will: a chmod or
        utimens then goes to the VM at once instead of waiting for an upload)."""
        return self.buffer is not None and self.buffer.refused is None and (
            self.buffer.dirty or self.pending_times is not None or self.pending_mode is not None)

    def overlay(self, attrs: Attrs) -> Attrs:
        """``attrs`` as a reader should see them with this file's pending writes."""
        if self.buffer is None or self.needs_load:
            return attrs
        if self.buffer.dirty:  # a write or truncate changes ctime with mtime, as on a local disk
            attrs = replace(attrs, size=self.buffer.size, mtime_ns=self.buffer.mtime_ns,
                            ctime_ns=max(attrs.ctime_ns, self.buffer.mtime_ns))
        else:
            attrs = replace(attrs, size=self.buffer.size)
        if self.pending_mode is not None:
            attrs = replace(attrs, mode=stat.S_IFMT(attrs.mode) | self.pending_mode)
        if self.pending_times is not None:
            atime_ns, mtime_ns = self.pending_times
            attrs = replace(attrs, atime_ns=attrs.atime_ns if atime_ns is None else atime_ns,
                            mtime_ns=attrs.mtime_ns if mtime_ns is None else mtime_ns)
        return attrs


@dataclass(eq=False)
class Handle:
    fh: int
    ino: int
    file: OpenFile
    writable: bool
    append: bool
    content: FileContent | None = None  # pinned version for buffer-less reads
    content_key: tuple | None = None


def check_size(size: int, file: OpenFile | None = None) -> None:
    """EFBIG past the cap. With ``file``, its unsent content is refused as well: no close
    publishes it, so the VM keeps its old file (see ``WriteBuffer.refused``)."""
    if size > CLIENT_MAX_FILE_BYTES:
        if file is not None and file.buffer is not None:
            file.buffer.refused = errno.EFBIG
        raise FsError(errno.EFBIG, f"{size} bytes is over the {CLIENT_MAX_FILE_BYTES}-byte limit")


async def load(file: OpenFile, content: FileContent) -> None:
    """Fill ``file.buffer`` with ``content`` (caller holds ``file.lock``)."""
    buffer = file.buffer
    for offset in range(0, content.size, CHUNK):
        buffer.write(offset, await content.read(offset, CHUNK))
    buffer.dirty = False
    file.needs_load = False


def rescue(file: OpenFile, rescue_dir: str, path: bytes) -> str:
    """Save unsent data; returns the rescue file's path (logged at ERROR by the caller)."""
    label = os.path.basename(path).decode("utf-8", "replace").replace("/", "_")[:80] or "file"
    return file.buffer.rescue(rescue_dir, label)
