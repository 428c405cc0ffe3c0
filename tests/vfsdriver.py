"""A path-based driver over ``VFS`` that does what the kernel would, with no kernel.

``VfsDriver`` offers os-like calls (``open``, ``read``, ``rename``, ``mkdir``, ...) on paths
relative to the VFS root (inode 1, /home/user) and raises ``OSError(errno)`` as the syscall
would. What it does on the kernel's behalf (each one is a kernel rule, not a VFS rule):

- path walk by ``lookup`` from the root, following symlinks in the middle of a path and at the
  end where the call follows (at most 40, else ELOOP); ENOTDIR through a non-directory. An
  absolute symlink target points at the host, not the mount: one missing on the host is ENOENT.
- the checks the kernel makes before it asks the filesystem: EEXIST for a name that exists
  (mkdir, symlink, link, O_CREAT|O_EXCL), EISDIR/ENOTDIR for unlink/rmdir of the wrong type,
  ``rename`` of one inode onto itself is a no-op, a directory into its own subtree is EINVAL
  and onto its ancestor ENOTEMPTY, a directory over a file ENOTDIR and a file over a directory
  EISDIR; EPERM for a hard link to a directory; the umask on create/mkdir; O_CREAT on a
  dangling symlink creates its target; EBADF/EISDIR/EINVAL for the wrong kind of descriptor.
- descriptors with a file position; ``close`` = FLUSH (its errno is close's) then RELEASE.
- lookup counting: every reply that counts a lookup (lookup, create, mkdir, symlink, link, each
  readdir entry) is counted here, and ``drop_caches`` sends FORGET for all of them except the
  inodes an open descriptor pins (its inode and the directories it was reached through), as
  the kernel may do at any time (memory pressure, ``echo 2 > /proc/sys/vm/drop_caches``).

O_TRUNC reaches ``VFS.open`` in the flags (libfuse3 negotiates atomic_o_trunc), not as a
separate setattr. Calls run one at a time: the concurrency of FUSE handlers is not modelled.

What it does NOT model: the kernel's own caches. Every call goes to VFS, as with entry and attr
timeouts of 0 (the mount uses up to 1 s), and there is no page cache: reads are exactly the
ranges asked for (the kernel reads whole pages, clipped at the size it has cached). Behaviour
that depends on a stale kernel cache is only covered through the mount.
"""

from __future__ import annotations

import collections
import errno as E
import os
import stat
from dataclasses import dataclass, field

from arkerfs.fs.errors import FsError
from arkerfs.fs.inodes import ROOT_INODE
from arkerfs.fs.model import Attrs
from arkerfs.fs.vfs import VFS

MAX_SYMLINKS = 40


def _err(code: int) -> OSError:
    return OSError(code, os.strerror(code))


@dataclass
class Found:
    """A resolved path: its parent directory (None for the root), final name, inode and
    attrs (None when the name does not exist), and the directories walked to reach it."""

    parent: int | None
    name: bytes
    ino: int | None
    attrs: Attrs | None
    chain: list[int]


@dataclass
class Stat:
    st_mode: int
    st_ino: int
    st_nlink: int
    st_uid: int
    st_gid: int
    st_size: int
    st_atime_ns: int
    st_mtime_ns: int
    st_ctime_ns: int


@dataclass
class Descriptor:
    ino: int
    fh: int
    flags: int
    is_dir: bool
    pins: list[int] = field(default_factory=list)
    pos: int = 0


class VfsDriver:
    def __init__(self, vfs: VFS, umask: int | None = None) -> None:
        self.vfs = vfs
        if umask is None:
            umask = os.umask(0)
            os.umask(umask)
        self.umask = umask
        self.lookups: collections.Counter[int] = collections.Counter()
        self._fds: dict[int, Descriptor] = {}
        self._next_fd = 1000

    # -- kernel bookkeeping ------------------------------------------------------------------
    def _counted(self, ino: int) -> int:
        self.lookups[ino] += 1
        return ino

    def drop_caches(self, keep=lambda ino: False) -> None:
        """FORGET every counted lookup of an inode no open descriptor pins (and not ``keep``)."""
        pinned = {ino for d in self._fds.values() for ino in (d.ino, *d.pins)}
        for ino in [i for i in self.lookups if i not in pinned and not keep(i)]:
            self.vfs.forget(ino, self.lookups.pop(ino))

    async def _lookup(self, parent: int, name: bytes) -> tuple[int, Attrs]:
        ino, attrs = await self.vfs.lookup(parent, name)
        return self._counted(ino), attrs

    async def walk(self, path: bytes, *, follow: bool) -> Found:
        """Resolve ``path`` (relative to the root)."""
        return await self._walk([ROOT_INODE], path, follow, [0])

    async def _walk(self, chain: list[int], path: bytes, follow: bool, hops: list[int]) -> Found:
        chain = list(chain)
        parts = [p for p in path.split(b"/") if p not in (b"", b".")]
        if not parts:
            ino = chain[-1]
            return Found(chain[-2] if len(chain) > 1 else None, b"", ino, await self.vfs.getattr(ino), chain[:-1])
        for i, name in enumerate(parts):
            last = i == len(parts) - 1
            if name == b"..":
                if len(chain) > 1:
                    chain.pop()
                if last:
                    return await self._walk(chain, b"", follow, hops)
                continue
            try:
                ino, attrs = await self._lookup(chain[-1], name)
            except FsError as exc:
                if exc.errno == E.ENOENT and last:
                    return Found(chain[-1], name, None, None, chain)
                raise
            if stat.S_ISLNK(attrs.mode) and (follow or not last):
                hops[0] += 1
                if hops[0] > MAX_SYMLINKS:
                    raise _err(E.ELOOP)
                target = await self.vfs.readlink(ino)
                rest = b"/".join(parts[i + 1:])
                if target.startswith(b"/"):
                    return self._host_target(target)
                return await self._walk(chain, target + (b"/" + rest if rest else b""), follow, hops)
            if last:
                return Found(chain[-1], name, ino, attrs, chain)
            if not stat.S_ISDIR(attrs.mode):
                raise _err(E.ENOTDIR)
            chain.append(ino)
        raise AssertionError("unreachable")

    @staticmethod
    def _host_target(target: bytes) -> Found:
        """An absolute symlink target resolves on the host, outside the mount."""
        if not os.path.lexists(os.path.dirname(target) or b"/"):
            raise _err(E.ENOENT)
        raise NotImplementedError(f"absolute symlink target {target!r} that may exist on the host")

    async def _existing(self, path: bytes, *, follow: bool) -> Found:
        found = await self.walk(path, follow=follow)
        if found.ino is None:
            raise _err(E.ENOENT)
        return found

    async def _free(self, path: bytes) -> Found:
        found = await self.walk(path, follow=False)
        if found.ino is not None:
            raise _err(E.EEXIST)
        return found

    def _fd(self, fd: int) -> Descriptor:
        try:
            return self._fds[fd]
        except KeyError:
            raise _err(E.EBADF) from None

    def _new_fd(self, desc: Descriptor) -> int:
        fd = self._next_fd
        self._next_fd += 1
        self._fds[fd] = desc
        return fd

    # -- descriptors -------------------------------------------------------------------------
    async def open(self, path: bytes, flags: int, mode: int = 0o777) -> int:
        creat, excl = flags & os.O_CREAT, flags & os.O_EXCL
        found = await self.walk(path, follow=not (creat and excl))
        if found.ino is None:
            if not creat:
                raise _err(E.ENOENT)
            fh, ino, _attrs = await self.vfs.create(found.parent, found.name,
                                                    stat.S_IFREG | (mode & 0o7777 & ~self.umask), flags)
            return self._new_fd(Descriptor(self._counted(ino), fh, flags, False, found.chain))
        if creat and excl:
            raise _err(E.EEXIST)
        if stat.S_ISDIR(found.attrs.mode):
            if flags & os.O_ACCMODE != os.O_RDONLY or creat or flags & os.O_TRUNC:
                raise _err(E.EISDIR)
            return self._new_fd(Descriptor(found.ino, self.vfs.opendir(found.ino), flags, True, found.chain))
        if stat.S_ISLNK(found.attrs.mode):
            raise _err(E.ELOOP)
        fh, _keep = await self.vfs.open(found.ino, flags & ~(os.O_CREAT | os.O_EXCL))
        return self._new_fd(Descriptor(found.ino, fh, flags, False, found.chain))

    async def close(self, fd: int) -> None:
        desc = self._fds.pop(fd, None)
        if desc is None:
            raise _err(E.EBADF)
        if desc.is_dir:
            self.vfs.releasedir(desc.fh)
            return
        try:
            await self.vfs.flush(desc.fh)
        finally:
            await self.vfs.release(desc.fh)

    async def read(self, fd: int, n: int) -> bytes:
        desc = self._fd(fd)
        data = await self.pread(fd, n, desc.pos)
        desc.pos += len(data)
        return data

    async def pread(self, fd: int, n: int, offset: int) -> bytes:
        desc = self._fd(fd)
        if desc.is_dir:
            raise _err(E.EISDIR)
        if desc.flags & os.O_ACCMODE == os.O_WRONLY:
            raise _err(E.EBADF)
        if n == 0:
            return b""
        return await self.vfs.read(desc.fh, offset, n)

    async def write(self, fd: int, data: bytes) -> int:
        desc = self._fd(fd)
        n = await self.pwrite(fd, data, desc.pos)
        if desc.flags & os.O_APPEND:
            desc.pos = (await self.vfs.getattr(desc.ino)).size if n else desc.pos
        else:
            desc.pos += n
        return n

    async def pwrite(self, fd: int, data: bytes, offset: int) -> int:
        """(Linux: on an O_APPEND descriptor pwrite appends too; VFS applies that.)"""
        desc = self._fd(fd)
        if desc.is_dir or desc.flags & os.O_ACCMODE == os.O_RDONLY:
            raise _err(E.EBADF)
        if not data:
            return 0
        return await self.vfs.write(desc.fh, offset, data)

    async def ftruncate(self, fd: int, size: int) -> None:
        desc = self._fd(fd)
        if desc.is_dir or desc.flags & os.O_ACCMODE == os.O_RDONLY or size < 0:
            raise _err(E.EINVAL)
        await self.vfs.setattr(desc.ino, desc.fh, size=size)

    async def fsync(self, fd: int) -> None:
        desc = self._fd(fd)
        if not desc.is_dir:
            await self.vfs.fsync(desc.fh)

    async def fstat(self, fd: int) -> Stat:
        desc = self._fd(fd)
        return _stat(desc.ino, await self.vfs.getattr(desc.ino))

    # -- paths -------------------------------------------------------------------------------
    async def stat(self, path: bytes, *, follow_symlinks: bool = True) -> Stat:
        found = await self._existing(path, follow=follow_symlinks)
        return _stat(found.ino, await self.vfs.getattr(found.ino))

    async def lstat(self, path: bytes) -> Stat:
        return await self.stat(path, follow_symlinks=False)

    async def readlink(self, path: bytes) -> bytes:
        found = await self._existing(path, follow=False)
        if not stat.S_ISLNK(found.attrs.mode):
            raise _err(E.EINVAL)
        return await self.vfs.readlink(found.ino)

    async def listdir(self, path: bytes) -> list[bytes]:
        found = await self._existing(path, follow=True)
        if not stat.S_ISDIR(found.attrs.mode):
            raise _err(E.ENOTDIR)
        fh = self.vfs.opendir(found.ino)
        try:
            parent, entries = await self.vfs.readdir(fh, 0)
            names = []
            for entry in entries:  # readdirplus: each entry the kernel takes counts a lookup
                ino, _attrs = self.vfs.learn_entry(parent, entry)
                self.vfs.entry_taken(ino, True)
                self._counted(ino)
                names.append(entry.name)
            return names
        finally:
            self.vfs.releasedir(fh)

    async def truncate(self, path: bytes, size: int) -> None:
        found = await self._existing(path, follow=True)
        if stat.S_ISDIR(found.attrs.mode):
            raise _err(E.EISDIR)
        if not stat.S_ISREG(found.attrs.mode) or size < 0:
            raise _err(E.EINVAL)
        await self.vfs.setattr(found.ino, None, size=size)

    async def mkdir(self, path: bytes, mode: int = 0o777) -> None:
        found = await self._free(path)
        ino, _ = await self.vfs.mkdir(found.parent, found.name, stat.S_IFDIR | (mode & 0o1777 & ~self.umask))
        self._counted(ino)

    async def rmdir(self, path: bytes) -> None:
        found = await self._existing(path, follow=False)
        if found.parent is None:
            raise _err(E.EBUSY)
        if not stat.S_ISDIR(found.attrs.mode):
            raise _err(E.ENOTDIR)
        await self.vfs.rmdir(found.parent, found.name)

    async def unlink(self, path: bytes) -> None:
        found = await self._existing(path, follow=False)
        if stat.S_ISDIR(found.attrs.mode):
            raise _err(E.EISDIR)
        await self.vfs.unlink(found.parent, found.name)

    async def symlink(self, target: bytes, path: bytes) -> None:
        if not target:
            raise _err(E.ENOENT)
        found = await self._free(path)
        ino, _ = await self.vfs.symlink(found.parent, found.name, target)
        self._counted(ino)

    async def link(self, src: bytes, dst: bytes, *, follow_symlinks: bool = True) -> None:
        source = await self._existing(src, follow=follow_symlinks)
        found = await self._free(dst)  # (EEXIST comes before EPERM for a directory)
        if stat.S_ISDIR(source.attrs.mode):
            raise _err(E.EPERM)
        ino, _ = await self.vfs.link(source.ino, found.parent, found.name)
        self._counted(ino)

    async def _parent_dir(self, path: bytes) -> None:
        """Walk ``path``'s directory (ENOENT/ENOTDIR), as rename(2) does for both paths first."""
        parent = path.rsplit(b"/", 1)[0] if b"/" in path else b""
        found = await self._existing(parent, follow=True)
        if not stat.S_ISDIR(found.attrs.mode):
            raise _err(E.ENOTDIR)

    async def rename(self, src: bytes, dst: bytes) -> None:
        await self._parent_dir(src)
        await self._parent_dir(dst)  # before either final name is looked up
        old = await self._existing(src, follow=False)
        new = await self.walk(dst, follow=False)
        if old.parent is None or (new.ino is not None and new.parent is None):
            raise _err(E.EBUSY)
        if new.ino == old.ino:
            return  # one inode under both names: rename(2) does nothing
        old_dir = stat.S_ISDIR(old.attrs.mode)
        if old_dir and old.ino in new.chain:
            raise _err(E.EINVAL)  # into its own subtree
        if new.ino is not None:
            new_dir = stat.S_ISDIR(new.attrs.mode)
            if new.ino in old.chain:
                raise _err(E.ENOTEMPTY)  # onto an ancestor of the source
            if old_dir and not new_dir:
                raise _err(E.ENOTDIR)
            if new_dir and not old_dir:
                raise _err(E.EISDIR)
        await self.vfs.rename(old.parent, old.name, new.parent, new.name, 0)

    async def chmod(self, path: bytes, mode: int, *, follow_symlinks: bool = True) -> None:
        found = await self._existing(path, follow=follow_symlinks)
        await self.vfs.setattr(found.ino, None, mode=stat.S_IFMT(found.attrs.mode) | (mode & 0o7777))

    async def utime(self, path: bytes, *, ns: tuple[int, int], follow_symlinks: bool = True) -> None:
        found = await self._existing(path, follow=follow_symlinks)
        await self.vfs.setattr(found.ino, None, atime_ns=ns[0], mtime_ns=ns[1])

    async def read_file(self, path: bytes) -> bytes:
        fd = await self.open(path, os.O_RDONLY)
        try:
            parts = []
            while chunk := await self.read(fd, 1 << 20):
                parts.append(chunk)
            return b"".join(parts)
        finally:
            await self.close(fd)


def _stat(ino: int, attrs: Attrs) -> Stat:
    return Stat(attrs.mode, ino, attrs.nlink, attrs.uid, attrs.gid, attrs.size, attrs.atime_ns,
                attrs.mtime_ns, attrs.ctime_ns)
