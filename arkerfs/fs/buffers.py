"""Local write buffers: the whole new content of a file being written, until it is uploaded.

The remote only replaces whole files, so every change (a write at any offset, an append, a
truncate) is applied here and the complete content is pushed as one upload. Small contents live
in memory; past ``MEMORY_LIMIT`` they move to a named file in the private spool directory, which
is also what a large upload streams from.

Concurrency contract: every method is synchronous. Callers hold the owning file's
``trio.Lock`` across a mutation and across the upload that reads ``source()``, so an upload
never sees a half-applied write.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import pathlib
import shutil
import tempfile
import time

from arkerfs.fs.errors import FsError

MEMORY_LIMIT = 4 * 1024 * 1024


class WriteBuffer:
    """A growable byte buffer with a dirty flag (set by changes, cleared by a good upload)."""

    def __init__(self, spool_dir: str, *, memory_limit: int | None = None, anonymous: bool = False) -> None:
        """``memory_limit``: bytes kept in memory before moving to a spool file (default
        ``MEMORY_LIMIT``). ``anonymous``: that file has no name (nothing left behind by a crash;
        ``source`` cannot name it)."""
        self._spool_dir = spool_dir
        self._memory_limit = MEMORY_LIMIT if memory_limit is None else memory_limit
        self._anonymous = anonymous
        self._mem: bytearray | None = bytearray()
        self._file = None  # NamedTemporaryFile once spilled
        self.size = 0
        self.dirty = False
        self.mtime_ns = time.time_ns()
        # errno of a spool write that failed (ENOSPC...): the content is incomplete, so it must
        # never be uploaded; every later change fails the same way until a truncate to 0.
        self.broken: int | None = None
        # errno of a write or truncate refused past the size cap (EFBIG): the content lacks what
        # its writer meant it to hold (a `cp` cut short), so it is never uploaded either. Unlike
        # ``broken`` the buffer keeps working; a truncate to 0 (nothing of it left) clears it.
        self.refused: int | None = None

    @property
    def spilled(self) -> bool:
        return self._file is not None

    def read(self, offset: int, length: int) -> bytes:
        length = min(length, max(self.size - offset, 0))
        if length <= 0:
            return b""
        if self._mem is not None:
            return bytes(self._mem[offset:offset + length])
        return os.pread(self._file.fileno(), length, offset)

    def write(self, offset: int, data: bytes) -> int:
        """Write at ``offset``; a gap past the end reads back as zeros (sparse extension)."""
        end = offset + len(data)
        self._check_broken()
        if self._mem is not None and end > self._memory_limit:
            self._spill()
        if self._mem is not None:
            if offset > len(self._mem):
                self._mem.extend(bytes(offset - len(self._mem)))
            self._mem[offset:end] = data
        else:
            view, at = memoryview(data), offset
            try:
                while view:  # a nearly full disk writes short before it fails
                    done = os.pwrite(self._file.fileno(), view, at)
                    view, at = view[done:], at + done
            except OSError as exc:
                raise self._break(exc) from None
        self.size = max(self.size, end)
        self._changed()
        return len(data)

    def truncate(self, size: int) -> None:
        if size == 0 and self.broken is not None:  # nothing of the failed content is left
            self.close()
            self._mem, self.broken = bytearray(), None
        if size == 0:
            self.refused = None
        self._check_broken()
        if self._mem is not None and size > self._memory_limit:
            self._spill()
        if self._mem is not None:
            if size < len(self._mem):
                del self._mem[size:]
            else:
                self._mem.extend(bytes(size - len(self._mem)))
        else:
            try:
                os.ftruncate(self._file.fileno(), size)
            except OSError as exc:
                raise self._break(exc) from None
        self.size = size
        self._changed()

    def source(self) -> bytes | pathlib.Path:
        """What to upload: the bytes, or the path of the spool file holding them."""
        if self._mem is not None:
            return bytes(self._mem)
        self._file.flush()
        return pathlib.Path(self._file.name)

    def rescue(self, rescue_dir: str, label: str) -> str:
        """Copy the content to a new file under ``rescue_dir`` (0600) and return its path."""
        os.makedirs(rescue_dir, mode=0o700, exist_ok=True)
        fd, path = tempfile.mkstemp(dir=rescue_dir, prefix=label + ".")
        with os.fdopen(fd, "wb") as out:
            if self._mem is not None:
                out.write(self._mem)
            else:
                self._file.flush()
                self._file.seek(0)
                shutil.copyfileobj(self._file, out)
            out.flush()
            os.fsync(out.fileno())
        return path

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        self._mem = None

    def _spill(self) -> None:
        try:
            if self._anonymous:
                spool = tempfile.TemporaryFile(dir=self._spool_dir, prefix="content-")
            else:
                spool = tempfile.NamedTemporaryFile(dir=self._spool_dir, prefix="write-", delete=True)
                # held until closed (or the daemon dies): a leftover scan leaves locked files alone
                fcntl.flock(spool.fileno(), fcntl.LOCK_SH)
        except OSError as exc:
            raise self._break(exc) from None
        try:
            spool.write(self._mem)
            spool.flush()
        except OSError as exc:
            with contextlib.suppress(OSError):  # its close flushes again, and fails again
                spool.close()  # frees what it took; the content stays in memory, readable
            raise self._break(exc) from None
        self._file = spool
        self._mem = None

    def _check_broken(self) -> None:
        if self.broken is not None:
            raise FsError(self.broken, "an earlier write of this file failed in the local spool")

    def _break(self, exc: OSError) -> FsError:
        """A spool write failed: refuse this content from now on (the caller raises the result)."""
        self.broken = exc.errno or 5
        self.dirty = True
        return FsError(self.broken, f"local spool {self._spool_dir}: {exc.strerror}")

    def _changed(self) -> None:
        self.dirty = True
        self.mtime_ns = time.time_ns()
