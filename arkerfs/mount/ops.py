"""pyfuse3 adapter: translates kernel requests to ``arkerfs.fs.vfs.VFS`` calls and back.

Handlers only translate. Every one passes through ``_boundary`` once, which puts the work under a
deadline (a stuck remote must never hang the caller forever), turns ``FsError`` into
``FUSEError(errno)``, and turns anything unexpected into a logged traceback plus EIO: pyfuse3
3.5 lets any other exception escape ``pyfuse3.main`` and kill the mount.

Kernel-facing choices: no ``.``/``..`` (``supports_dot_lookup = False``), no kernel writeback
cache (we buffer writes ourselves and the kernel would otherwise own size and mtime), entry and
attr timeouts of at most ``kernel_timeout`` seconds, and negative lookups answered with
``st_ino = 0`` so the kernel caches them briefly. One inode invalidation: when content refused
past the size cap is discarded at release, the kernel must not keep that content's size.
"""

from __future__ import annotations

import errno
import functools
import logging
import stat
import time

import pyfuse3
import trio

from arkerfs.fs.errors import FsError
from arkerfs.fs.model import Attrs
from arkerfs.fs.vfs import VFS

log = logging.getLogger(__name__)

# errnos that signal trouble with the remote rather than an ordinary answer
_NOTEWORTHY = {errno.EIO, errno.ETIMEDOUT, errno.EAGAIN}
# a full local disk (spool files, rescue copies) is the caller's errno, not a bug
_LOCAL_DISK_FULL = {errno.ENOSPC, errno.EDQUOT}


def _boundary(*, long: bool = False):
    """Wrap a handler: deadline, FsError -> FUSEError, unexpected -> logged EIO."""

    def decorate(fn):
        @functools.wraps(fn)
        async def handler(self: Operations, *args):
            deadline = self.upload_deadline if long else self.deadline
            log.debug("%s%r", fn.__name__, _brief(args))
            started = time.monotonic()
            try:
                with trio.fail_after(deadline):
                    return await fn(self, *args)
            except pyfuse3.FUSEError:
                raise
            except FsError as exc:
                level = logging.WARNING if exc.errno in _NOTEWORTHY else logging.DEBUG
                log.log(level, "%s%r failed: %s", fn.__name__, _brief(args), exc)
                raise pyfuse3.FUSEError(exc.errno) from None
            except trio.TooSlowError:
                log.warning("%s%r gave up after %.0f s", fn.__name__, _brief(args), deadline)
                raise pyfuse3.FUSEError(errno.ETIMEDOUT) from None
            except OSError as exc:
                if exc.errno not in _LOCAL_DISK_FULL:
                    log.exception("unexpected error in %s%r", fn.__name__, _brief(args))
                    raise pyfuse3.FUSEError(errno.EIO) from None
                log.warning("%s%r failed: local spool: %s", fn.__name__, _brief(args), exc)
                raise pyfuse3.FUSEError(exc.errno) from None
            except Exception:
                log.exception("unexpected error in %s%r", fn.__name__, _brief(args))
                raise pyfuse3.FUSEError(errno.EIO) from None
            finally:  # --debug: each operation's latency
                log.debug("%s%r done in %.1f ms", fn.__name__, _brief(args), (time.monotonic() - started) * 1000)

        return handler

    return decorate


def _brief(args: tuple) -> tuple:
    """Handler arguments for a log line, without payloads or request contexts."""
    return tuple(a if isinstance(a, (int, bytes)) and not (isinstance(a, bytes) and len(a) > 64) else "…"
                 for a in args if not isinstance(a, (pyfuse3.RequestContext, pyfuse3.ReaddirToken)))


class Operations(pyfuse3.Operations):
    """The mounted filesystem. ``vfs`` holds all state; this class holds only kernel policy:

    - ``kernel_timeout``: entry/attr timeout handed to the kernel (≤ the cache TTL);
    - ``negative_timeout``: how long the kernel may cache "no such name";
    - ``deadline`` / ``upload_deadline``: seconds a handler may spend before failing ETIMEDOUT.
    """

    supports_dot_lookup = False
    enable_writeback_cache = False
    enable_acl = False

    def __init__(self, vfs: VFS, *, kernel_timeout: float = 1.0, negative_timeout: float = 1.0,
                 deadline: float = 120.0, upload_deadline: float = 900.0) -> None:
        super().__init__()
        self.vfs = vfs
        self.kernel_timeout = kernel_timeout
        self.negative_timeout = negative_timeout
        self.deadline = deadline
        self.upload_deadline = upload_deadline

    def entry(self, ino: int, attrs: Attrs) -> pyfuse3.EntryAttributes:
        e = pyfuse3.EntryAttributes()
        e.st_ino = ino
        e.generation = 0
        e.entry_timeout = self.kernel_timeout
        e.attr_timeout = self.kernel_timeout
        e.st_mode = attrs.mode
        e.st_nlink = attrs.nlink
        e.st_uid = attrs.uid
        e.st_gid = attrs.gid
        e.st_rdev = attrs.rdev
        e.st_size = attrs.size
        e.st_blksize = 4096
        e.st_blocks = (attrs.size + 511) // 512
        e.st_atime_ns = attrs.atime_ns
        e.st_mtime_ns = attrs.mtime_ns
        e.st_ctime_ns = attrs.ctime_ns
        return e

    # -- attributes -----------------------------------------------------------------------
    @_boundary()
    async def lookup(self, parent_inode, name, ctx):
        try:
            ino, attrs = await self.vfs.lookup(parent_inode, name)
        except FsError as exc:
            if exc.errno != errno.ENOENT:
                raise
            negative = pyfuse3.EntryAttributes()
            negative.st_ino = 0
            negative.entry_timeout = self.negative_timeout
            return negative
        return self.entry(ino, attrs)

    async def forget(self, inode_list):
        for ino, n in inode_list:
            try:
                self.vfs.forget(ino, n)
            except Exception:  # FORGET has no reply: log, never raise
                log.exception("forget(%d, %d) failed", ino, n)

    @_boundary()
    async def getattr(self, inode, ctx):
        return self.entry(inode, await self.vfs.getattr(inode))

    @_boundary(long=True)
    async def setattr(self, inode, attr, fields, fh, ctx):
        changes = dict(
            mode=attr.st_mode if fields.update_mode else None,
            uid=attr.st_uid if fields.update_uid else None,
            gid=attr.st_gid if fields.update_gid else None,
            size=attr.st_size if fields.update_size else None,
            atime_ns=attr.st_atime_ns if fields.update_atime else None,
            mtime_ns=attr.st_mtime_ns if fields.update_mtime else None,
        )
        log.debug("setattr(%d) fh=%s %s", inode, fh, {k: v for k, v in changes.items() if v is not None})
        attrs = await self.vfs.setattr(inode, fh, **changes)
        return self.entry(inode, attrs)

    @_boundary()
    async def readlink(self, inode, ctx):
        return await self.vfs.readlink(inode)

    @_boundary()
    async def statfs(self, ctx):
        value = await self.vfs.statfs()
        s = pyfuse3.StatvfsData()
        s.f_bsize = value.block_size
        s.f_frsize = value.fragment_size
        s.f_blocks = value.blocks
        s.f_bfree = value.blocks_free
        s.f_bavail = value.blocks_available
        s.f_files = value.files
        s.f_ffree = value.files_free
        s.f_favail = value.files_free
        s.f_namemax = value.name_max
        return s

    # -- directories ----------------------------------------------------------------------
    @_boundary()
    async def opendir(self, inode, ctx):
        return self.vfs.opendir(inode)

    @_boundary()
    async def readdir(self, fh, start_id, token):
        parent, entries = await self.vfs.readdir(fh, start_id)
        # No await from here on: each entry is learned, replied and counted atomically.
        for index in range(start_id, len(entries)):
            ino, attrs = self.vfs.learn_entry(parent, entries[index])
            taken = pyfuse3.readdir_reply(token, entries[index].name, self.entry(ino, attrs), index + 1)
            self.vfs.entry_taken(ino, taken)
            if not taken:
                break

    @_boundary()
    async def releasedir(self, fh):
        self.vfs.releasedir(fh)

    @_boundary()
    async def fsyncdir(self, fh, datasync):
        await self.vfs.fsyncdir(fh)

    @_boundary()
    async def mkdir(self, parent_inode, name, mode, ctx):
        return self.entry(*await self.vfs.mkdir(parent_inode, name, mode))

    @_boundary()
    async def rmdir(self, parent_inode, name, ctx):
        await self.vfs.rmdir(parent_inode, name)

    # -- namespace ------------------------------------------------------------------------
    @_boundary()
    async def mknod(self, parent_inode, name, mode, rdev, ctx):
        if not (stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode) or stat.S_ISREG(mode)):
            raise FsError(errno.EPERM, "only fifos, sockets and regular files can be made")
        return self.entry(*await self.vfs.mknod(parent_inode, name, mode, rdev))

    @_boundary()
    async def symlink(self, parent_inode, name, target, ctx):
        return self.entry(*await self.vfs.symlink(parent_inode, name, target))

    @_boundary()
    async def link(self, inode, new_parent_inode, new_name, ctx):
        return self.entry(*await self.vfs.link(inode, new_parent_inode, new_name))

    @_boundary()
    async def unlink(self, parent_inode, name, ctx):
        await self.vfs.unlink(parent_inode, name)

    @_boundary(long=True)
    async def rename(self, parent_inode_old, name_old, parent_inode_new, name_new, flags, ctx):
        await self.vfs.rename(parent_inode_old, name_old, parent_inode_new, name_new, flags)

    # -- files ----------------------------------------------------------------------------
    @_boundary()
    async def create(self, parent_inode, name, mode, flags, ctx):
        fh, ino, attrs = await self.vfs.create(parent_inode, name, mode, flags)
        return pyfuse3.FileInfo(fh=fh, keep_cache=False), self.entry(ino, attrs)

    @_boundary()
    async def open(self, inode, flags, ctx):
        fh, keep = await self.vfs.open(inode, flags)
        return pyfuse3.FileInfo(fh=fh, keep_cache=keep)

    @_boundary(long=True)
    async def read(self, fh, off, size):
        return await self.vfs.read(fh, off, size)

    @_boundary(long=True)
    async def write(self, fh, off, buf):
        return await self.vfs.write(fh, off, buf)

    @_boundary(long=True)
    async def flush(self, fh):
        await self.vfs.flush(fh)

    @_boundary(long=True)
    async def fsync(self, fh, datasync):
        await self.vfs.fsync(fh)

    @_boundary(long=True)
    async def release(self, fh):
        stale = await self.vfs.release(fh)
        if stale is not None:  # the kernel must forget the discarded content's size and pages
            try:  # in a thread: it waits for reads in flight, which this loop must keep serving
                await trio.to_thread.run_sync(pyfuse3.invalidate_inode, stale)
            except OSError as exc:  # ENOENT: the kernel has forgotten the inode already
                log.debug("invalidate_inode(%d): %s", stale, exc)

    # -- extended attributes --------------------------------------------------------------
    @_boundary()
    async def getxattr(self, inode, name, ctx):
        return await self.vfs.getxattr(inode, name)

    @_boundary()
    async def listxattr(self, inode, ctx):
        return await self.vfs.listxattr(inode)

    @_boundary()
    async def setxattr(self, inode, name, value, ctx):
        await self.vfs.setxattr(inode, name, value, 0)

    @_boundary()
    async def removexattr(self, inode, name, ctx):
        await self.vfs.removexattr(inode, name)
