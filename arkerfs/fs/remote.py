"""RemoteFS: every POSIX operation mapped onto the fewest Arker calls (CONTRACT STUB).

This file is the contract between the remote-operations work and the FUSE layer. Method
bodies are filled in by the remote-operations work; signatures and semantics below are fixed.

Rules for every method:
- paths are absolute VM paths as bytes (b"/home/user/x"); names may be any bytes but b"/" and NUL;
- one method = one round trip (one ``run`` or one ``sync`` call) unless its docstring says otherwise;
- failures raise ``arkerfs.fs.errors.FsError(errno)``: script failures from exit codes the script
  set on purpose, API failures through ``errno_for_api_error``; never a bare ArkerError;
- nothing here caches: caching lives above this layer.
"""

from __future__ import annotations

from arkerfs.fs.model import Attrs, Entry, StatFs


class RemoteFS:
    def __init__(self, vm, *, session_id: int = 7, run_timeout: float = 60.0) -> None:
        """``vm`` is an ``arkerfs.client.VM``. Runs use the dedicated ``session_id``, never 0."""
        raise NotImplementedError

    # -- metadata -------------------------------------------------------------------------
    async def list_dir(self, path: bytes) -> tuple[Attrs, list[Entry]]:
        """The directory's own attrs and every entry with its attrs (one run). ENOENT/ENOTDIR."""
        raise NotImplementedError

    async def lstat(self, path: bytes) -> Attrs:
        """Attributes of ``path`` without following a final symlink. ENOENT."""
        raise NotImplementedError

    async def statfs(self) -> StatFs:
        raise NotImplementedError

    async def readlink(self, path: bytes) -> bytes:
        raise NotImplementedError

    # -- namespace ------------------------------------------------------------------------
    async def mkdir(self, path: bytes, mode: int) -> Attrs:
        raise NotImplementedError

    async def rmdir(self, path: bytes) -> None:
        raise NotImplementedError

    async def unlink(self, path: bytes) -> None:
        raise NotImplementedError

    async def rename(self, old: bytes, new: bytes, flags: int = 0) -> None:
        """flags: 0, RENAME_NOREPLACE (1) or RENAME_EXCHANGE (2); unsupported -> EINVAL."""
        raise NotImplementedError

    async def symlink(self, target: bytes, path: bytes) -> Attrs:
        raise NotImplementedError

    async def link(self, existing: bytes, new: bytes) -> Attrs:
        """Hard link; returns the attrs of the new name (nlink already incremented)."""
        raise NotImplementedError

    async def mknod(self, path: bytes, mode: int, rdev: int = 0) -> Attrs:
        """Fifos and sockets (S_IFIFO / S_IFSOCK in mode); others -> EPERM."""
        raise NotImplementedError

    async def create_empty(self, path: bytes, mode: int, *, exclusive: bool = True) -> Attrs:
        """Create (or, if not exclusive, truncate) an empty regular file with ``mode``."""
        raise NotImplementedError

    # -- attributes -----------------------------------------------------------------------
    async def setattr(self, path: bytes, *, mode: int | None = None, uid: int | None = None,
                      gid: int | None = None, size: int | None = None,
                      atime_ns: int | None = None, mtime_ns: int | None = None) -> Attrs:
        """Apply any combination in ONE run (never following a final symlink for times/owner)
        and return the resulting attrs."""
        raise NotImplementedError

    # -- contents -------------------------------------------------------------------------
    async def open_read(self, path: bytes):
        """One sync read. Returns an ``arkerfs.client.RemoteFile`` (inline bytes, or a presigned
        URL readable by ranges). Names the sync API cannot carry fall back to a run-based read."""
        raise NotImplementedError

    async def write_file(self, path: bytes, source, size: int, *, mode: int | None = None) -> Attrs | None:
        """Replace the whole file with ``size`` bytes from ``source`` (bytes or a local file path).
        size 0 goes through a run. Returns fresh attrs when known without another call, else None.
        On failure the remote keeps its old content (uploads land atomically)."""
        raise NotImplementedError

    # -- extended attributes --------------------------------------------------------------
    async def getxattr(self, path: bytes, name: bytes) -> bytes:
        raise NotImplementedError

    async def setxattr(self, path: bytes, name: bytes, value: bytes, flags: int = 0) -> None:
        raise NotImplementedError

    async def listxattr(self, path: bytes) -> list[bytes]:
        raise NotImplementedError

    async def removexattr(self, path: bytes, name: bytes) -> None:
        raise NotImplementedError
