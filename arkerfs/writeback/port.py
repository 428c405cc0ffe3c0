"""The write-back side of the change port: changes go to the journal, reads see the overlay.

``WriteBack`` has the shape of ``RemoteFS`` (the write-through side: every change applied at
once, one call each), so the VFS runs unchanged over either. Here

- a change (mkdir, create, write at close, rename, unlink, rmdir, symlink, link, chmod,
  utimens) is appended to the journal and applied to the overlay, and returns at once with
  the attrs it will have in the VM; ``write_file`` (a file's ``close()``) returns only once its
  content and every earlier record are on disk; the pusher ships them in batches;
- reads (lstat, list_dir, readlink, open_read) see the overlay first, then the VM;
- what a batch cannot carry goes through a *barrier*: everything pending is pushed first,
  then the change is applied directly (a directory rename or RENAME_EXCHANGE, chown,
  truncate of a closed file, mknod, xattr changes, an in-place rewrite of a hard-linked file).

Nothing here awaits between recording a change and updating the overlay, so the VFS's
concurrency contract holds (it patches its caches right after the call returns).
"""

from __future__ import annotations

import errno
import itertools
import logging
import os
import stat
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import trio

from arkerfs.fs.content import LocalContent
from arkerfs.fs.cache import parent_of
from arkerfs.fs.errors import FsError
from arkerfs.fs.remote import BatchAmbiguous
from arkerfs.fs.model import Attrs, Entry
from arkerfs.protocol import CLIENT_MAX_FILE_BYTES
from arkerfs.writeback import plan as P
from arkerfs.writeback.journal import Journal
from arkerfs.writeback.overlay import Overlay, Spooled
from arkerfs.writeback.pusher import Pusher

log = logging.getLogger(__name__)

RENAME_NOREPLACE, RENAME_EXCHANGE = 1, 2
SYNTHETIC_INO = 1 << 60  # remote inode numbers of nodes not yet in the VM start here
DEFAULT_MAX_BYTES = 2 * 1024**3  # --journal-max-bytes
FREE_SPACE_MARGIN = 64 * 1024**2  # the journal never takes the local disk's last bytes


class WriteBack:
    """See the module doc. ``peek(path)`` (set by the VFS) answers from the mount's caches
    without a call: (True, attrs) known, (True, None) known absent, (False, None) unknown."""

    def __init__(self, remote, journal: Journal, *, owner: tuple[int, int] = (1000, 1000),
                 max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.remote = remote
        self.journal = journal
        self.max_bytes = max_bytes
        self.overlay = Overlay()
        self.owner = owner
        self.peek = lambda path: (False, None)
        self.landed = lambda final, trimmed, shown: None  # set by the VFS: refresh its caches
        self.pusher = Pusher(journal, remote, self._landed)
        self._ino = itertools.count(SYNTHETIC_INO + time.time_ns() // 1000 % (1 << 40))
        self.replayed = self._replay()

    def __getattr__(self, name: str) -> Any:  # pool, live, statfs...: the remote's
        return getattr(self.remote, name)

    # == reads =================================================================================
    async def lstat(self, path: bytes) -> Attrs:
        decided, attrs = self.overlay.known(path)
        if not decided:
            return await self.remote.lstat(path)
        if attrs is None:
            raise FsError(errno.ENOENT, "removed here (not yet pushed)")
        return attrs

    async def list_dir(self, path: bytes) -> tuple[Attrs, list[Entry]]:
        decided, attrs = self.overlay.known(path)
        if decided and attrs is None:
            raise FsError(errno.ENOENT, "removed here (not yet pushed)")
        if path in self.overlay.fresh:
            return attrs, [Entry(n, a) for n, a in self.overlay.children(path) if a is not None]
        dir_attrs, entries = await self.remote.list_dir(path)
        return (attrs if decided else dir_attrs), self.overlay.merged(path, entries)

    async def list_tree(self, path: bytes) -> tuple[Attrs, dict[bytes, list[Entry]]]:
        """``remote.list_tree`` seen through the overlay: while anything below ``path`` is
        pending, only ``path`` itself (its merged listing), as ``list_dir`` gives it."""
        below = path + b"/"
        if path in self.overlay.fresh or any(p.startswith(below) for p in self.overlay.nodes):
            attrs, entries = await self.list_dir(path)
            return attrs, {b"": entries}
        decided, attrs = self.overlay.known(path)
        if decided and attrs is None:
            raise FsError(errno.ENOENT, "removed here (not yet pushed)")
        dir_attrs, tree = await self.remote.list_tree(path)
        tree[b""] = self.overlay.merged(path, tree.get(b"", []))
        return (attrs if decided else dir_attrs), tree

    def decided(self, path: bytes) -> tuple[bool, Attrs | None]:
        """What the overlay says of ``path``, without a call: (False, None) when the VM decides."""
        return self.overlay.known(path)

    async def readlink(self, path: bytes) -> bytes:
        decided, attrs = self.overlay.known(path)
        if not decided:
            return await self.remote.readlink(path)
        if attrs is None:
            raise FsError(errno.ENOENT, "removed here (not yet pushed)")
        if attrs.symlink_target is None:
            raise FsError(errno.EINVAL, "not a symbolic link")
        return attrs.symlink_target

    async def open_read(self, path: bytes):
        try:
            return await self._open_read(path)
        except FsError as exc:
            # a pending name reads its bytes from the VM name they have there, which the batch
            # in flight may be renaming right now (git renames a file twice in a row): once
            # that batch lands, the overlay says where they are
            if exc.errno != errno.ENOENT or path not in self.overlay:
                raise
        await self.pusher.batch_landed()
        return await self._open_read(path)

    async def _open_read(self, path: bytes):
        decided, attrs = self.overlay.known(path)
        if decided and attrs is None:
            raise FsError(errno.ENOENT, "removed here (not yet pushed)")
        spooled = self.overlay.content.get(path)
        if spooled is not None:
            try:
                return LocalContent(self.journal.spool / spooled.file if spooled.file else None, spooled.size)
            except FileNotFoundError:  # pushed meanwhile: the acknowledgement took its spool file
                pass
        return await self.remote.open_read(self.overlay.origin.get(path, path))

    async def getxattr(self, path: bytes, name: bytes) -> bytes:
        if self._only_here(path):
            raise FsError(errno.ENODATA, "no such attribute")
        return await self.remote.getxattr(self.overlay.origin.get(path, path), name)

    async def listxattr(self, path: bytes) -> list[bytes]:
        if self._only_here(path):
            return []
        return await self.remote.listxattr(self.overlay.origin.get(path, path))

    # == changes recorded in the journal ======================================================
    async def mkdir(self, path: bytes, mode: int) -> Attrs:
        self._may_change_entries(path)
        now = time.time_ns()
        attrs = Attrs(stat.S_IFDIR | (mode & 0o7777), 4096, 2, *self.owner, now, now, now, next(self._ino))
        self._record("mkdir", {"path": os.fsdecode(path), "mode": mode & 0o7777, "attrs": P.encode_attrs(attrs)})
        return attrs

    async def rmdir(self, path: bytes) -> None:
        self._may_change_entries(path)
        attrs = await self._attrs(path)
        if not attrs.is_dir:
            raise FsError(errno.ENOTDIR)
        if (await self.list_dir(path))[1]:
            raise FsError(errno.ENOTEMPTY)
        self._record("rmdir", {"path": os.fsdecode(path)})

    async def unlink(self, path: bytes) -> None:
        self._may_change_entries(path)
        attrs = await self._attrs(path)
        if attrs.is_dir:
            raise FsError(errno.EISDIR)
        if not self._names_all_here(attrs):  # its other names lose a link: see ``link``
            await self._barrier()
            return await self.remote.unlink(path)
        self._record("unlink", {"path": os.fsdecode(path)})

    async def rename(self, old: bytes, new: bytes, flags: int = 0) -> None:
        self._may_change_entries(old, new)
        moved = await self._attrs(old)
        known, replaced = self._view(new)
        if moved.is_dir or flags == RENAME_EXCHANGE or (replaced is not None and replaced.is_dir) or (
                not known and flags == RENAME_NOREPLACE):
            await self._barrier()
            return await self.remote.rename(old, new, flags)
        if replaced is not None and flags == RENAME_NOREPLACE:
            raise FsError(errno.EEXIST)
        if moved.nlink > 1 or (replaced is not None and replaced.nlink > 1):
            await self._barrier()  # see ``link``
            return await self.remote.rename(old, new, flags)
        attrs = replace(moved, ctime_ns=time.time_ns())
        self._record("rename", {"old": os.fsdecode(old), "new": os.fsdecode(new), "flags": flags,
                                "attrs": P.encode_attrs(attrs)})

    async def symlink(self, target: bytes, path: bytes) -> Attrs:
        self._may_change_entries(path)
        now = time.time_ns()
        attrs = Attrs(stat.S_IFLNK | 0o777, len(target), 1, *self.owner, now, now, now, next(self._ino),
                      symlink_target=target)
        self._record("symlink", {"path": os.fsdecode(path), "target": os.fsdecode(target),
                                 "attrs": P.encode_attrs(attrs)})
        return attrs

    async def link(self, existing: bytes, new: bytes) -> Attrs:
        """Journaled when the overlay holds every name the file will have (a file with one name,
        or one linked here: git publishes each object this way), so it can keep their link
        counts right; otherwise applied through a barrier. A later rename, chmod or rewrite of a
        file with several names goes through a barrier too: it changes every name at once."""
        self._may_change_entries(new)
        attrs = await self._attrs(existing)
        if attrs.is_dir:
            raise FsError(errno.EPERM, "hard link to a directory")
        if not await self._absent(new):
            raise FsError(errno.EEXIST)
        if not self._names_all_here(attrs):
            await self._barrier()
            return await self.remote.link(existing, new)
        linked = replace(attrs, nlink=attrs.nlink + 1, ctime_ns=time.time_ns())
        self._record("link", {"existing": os.fsdecode(existing), "new": os.fsdecode(new),
                              "attrs": P.encode_attrs(linked)})
        return linked

    async def create_empty(self, path: bytes, mode: int, *, exclusive: bool = True) -> Attrs:
        self._may_change_entries(path)
        if self._view(path)[1] is not None:
            if exclusive:
                raise FsError(errno.EEXIST)
            await self._barrier()
            return await self.remote.create_empty(path, mode, exclusive=False)
        now = time.time_ns()
        attrs = Attrs(stat.S_IFREG | (mode & 0o7777), 0, 1, *self.owner, now, now, now, next(self._ino))
        self._record("create", {"path": os.fsdecode(path), "attrs": P.encode_attrs(attrs), "base": None})
        return attrs

    async def setattr(self, path: bytes, *, mode: int | None = None, uid: int | None = None,
                      gid: int | None = None, size: int | None = None, atime_ns: int | None = None,
                      mtime_ns: int | None = None) -> Attrs:
        if uid is not None or gid is not None or size is not None:
            await self._barrier()
            return await self.remote.setattr(path, mode=mode, uid=uid, gid=gid, size=size,
                                             atime_ns=atime_ns, mtime_ns=mtime_ns)
        attrs = await self._attrs(path)
        if attrs.nlink > 1 and not attrs.is_dir:  # see ``link``
            await self._barrier()
            return await self.remote.setattr(path, mode=mode, atime_ns=atime_ns, mtime_ns=mtime_ns)
        if attrs.is_symlink:
            mode = None  # chmod never follows or changes a link
        now = time.time_ns()
        attrs = replace(attrs, mode=attrs.mode if mode is None else stat.S_IFMT(attrs.mode) | (mode & 0o7777),
                        atime_ns=attrs.atime_ns if atime_ns is None else atime_ns,
                        mtime_ns=attrs.mtime_ns if mtime_ns is None else mtime_ns, ctime_ns=now)
        self._record("setattr", {"path": os.fsdecode(path), "mode": None if mode is None else mode & 0o7777,
                                 "atime_ns": atime_ns, "mtime_ns": mtime_ns, "attrs": P.encode_attrs(attrs)})
        return attrs

    async def write_file(self, path: bytes, source, size: int, *, mode: int | None = None,
                         in_place: bool = False, base: Attrs | None = None,
                         mtime_ns: int | None = None) -> Attrs:
        """A file's new content (its ``close()``): durable in the journal when this returns."""
        if size > CLIENT_MAX_FILE_BYTES:
            raise FsError(errno.EFBIG)
        known, prior = self._view(path)
        if in_place or (prior is not None and prior.nlink > 1):  # see ``link``
            # every hard link must see the bytes: rewritten through its inode, now, still as a
            # compare-and-swap when the mount saw a version of the VM's file
            await self._barrier()
            vm_base = base if base is not None and base.remote_ino < SYNTHETIC_INO and base.is_reg else None
            return await self.remote.write_file(path, source, size, mode=mode, in_place=True, base=vm_base)
        await self._room_for(size)
        try:
            stored = await trio.to_thread.run_sync(self._store, source, size)
        except OSError as exc:  # the local disk itself is full (or failing)
            raise FsError(exc.errno or errno.EIO, f"cannot journal the content: {exc}") from None
        if path in self.overlay:
            recorded_base: Any = P.CHAIN
        elif base is not None and base.remote_ino < SYNTHETIC_INO and base.is_reg:
            recorded_base = [base.remote_ino, base.size, base.mtime_ns]
        else:
            recorded_base = None if base is None else P.CHAIN
        now = time.time_ns()
        when = now if mtime_ns is None else mtime_ns
        perm = mode if mode is not None else (stat.S_IMODE(prior.mode) if prior is not None else 0o644)
        # a new inode number: the install replaces the VM's file (and a later write must not take
        # these attrs for the VM's version it was based on)
        attrs = Attrs(stat.S_IFREG | perm, size, prior.nlink if prior is not None else 1, *self.owner,
                      when, when, now, next(self._ino))
        self._record("write", {"path": os.fsdecode(path), "attrs": P.encode_attrs(attrs), "base": recorded_base},
                     stored)
        self.journal.commit()
        return attrs

    async def _room_for(self, size: int) -> None:
        """Wait, pushing, until ``size`` more bytes fit in the journal: within ``max_bytes`` and
        within the local disk's free space (less a margin). A content larger than the bound
        still goes once the journal is empty; only a full local disk gives ENOSPC."""
        while True:
            held = self.journal.held_bytes()
            disk = os.statvfs(self.journal.spool)
            free = disk.f_bavail * disk.f_frsize - FREE_SPACE_MARGIN
            if held + size <= min(self.max_bytes, held + free) or not self.journal.has_pushable():
                if size > free + held and size > 0:
                    raise FsError(errno.ENOSPC, "the local disk has no room for the journal")
                return
            log.info("journal full (%d bytes held, bound %d): waiting for pushes", held, self.max_bytes)
            try:
                await self.pusher.push_batch()
            except (FsError, BatchAmbiguous) as exc:  # the writer waits out an outage
                log.warning("journal full and the push failed (%s); waiting", exc)
                await trio.sleep(1.0)

    # == barriers: applied now, after everything pending ======================================
    async def mknod(self, path: bytes, mode: int, rdev: int = 0) -> Attrs:
        await self._barrier()
        return await self.remote.mknod(path, mode, rdev)

    async def setxattr(self, path: bytes, name: bytes, value: bytes, flags: int = 0) -> None:
        await self._barrier()
        return await self.remote.setxattr(path, name, value, flags)

    async def removexattr(self, path: bytes, name: bytes) -> None:
        await self._barrier()
        return await self.remote.removexattr(path, name)

    async def drain(self, *, retry_failed: bool) -> list[tuple[str, str]]:
        """Push everything recorded so far (``retry_failed``: changes the VM refused get another
        try). Returns (VM path, why) of each change still refused; raises FsError when the VM
        cannot be reached."""
        refused = await self.pusher.drain(retry_failed=retry_failed)
        return [(os.fsdecode(P.paths_of(c)[-1]), f"{c.op}: {c.failed}") for c in refused]

    async def _barrier(self) -> None:
        """Everything recorded before is pushed (a change the VM refused stays kept and marked
        failed: it does not hold back unrelated changes)."""
        await self.pusher.drain(retry_failed=False)

    # == state =================================================================================
    def pending_paths(self) -> list[str]:
        return sorted({os.fsdecode(p) for c in self.journal.pending() for p in P.paths_of(c)[-1:]})

    def state_of(self, path: bytes) -> str | None:
        """Sync state of a path with pending changes (pending/pushing/failed); ``conflict`` for
        a file whose last push met a change made in the VM (the local version was saved beside
        it) until it is changed here again; else None."""
        seq = self.overlay.seq_of(path)
        if seq is None:
            return "conflict" if os.fsdecode(path) in self.pusher.conflicted else None
        if self.pusher.in_flight and seq in self.pusher.in_flight:
            return "pushing"
        return "failed" if self.journal.is_failed(seq) else "pending"

    # == internals =============================================================================
    def _store(self, source, size: int) -> tuple[str, int]:
        if isinstance(source, (bytes, bytearray, memoryview)):
            return self.journal.store_content(bytes(source))
        fd = os.open(source, os.O_RDONLY | os.O_CLOEXEC)
        try:
            return self.journal.store_content(fd, size)
        finally:
            os.close(fd)

    def _record(self, op: str, args: dict, content: tuple[str, int] | None = None) -> int:
        seq = self.journal.append(op, args, content)
        self._apply(seq, op, args, content[0] if content else None, content[1] if content else 0)
        self._touch_parents(seq, op, args)
        self.pusher.recorded()
        return seq

    def _apply(self, seq: int, op: str, args: dict, spool: str | None, size: int) -> None:
        """A recorded change's effect on the overlay (also how a replay rebuilds it)."""
        o = self.overlay
        attrs = P.decode_attrs(args["attrs"]) if "attrs" in args else None
        if op == "mkdir":
            o.put(os.fsencode(args["path"]), attrs, seq, fresh_dir=True)
        elif op == "create":
            o.write(os.fsencode(args["path"]), attrs, Spooled("", 0), seq)
        elif op == "write":
            o.write(os.fsencode(args["path"]), attrs, Spooled(spool or "", size), seq)
        elif op in ("unlink", "rmdir"):
            o.remove(os.fsencode(args["path"]), seq)
        elif op == "rename":
            o.move(os.fsencode(args["old"]), os.fsencode(args["new"]), attrs, seq)
        elif op == "symlink":
            o.put(os.fsencode(args["path"]), attrs, seq)
        elif op == "link":
            o.link(os.fsencode(args["existing"]), os.fsencode(args["new"]), attrs, seq)
        elif op == "setattr":
            o.retitle(os.fsencode(args["path"]), attrs, seq)
        else:
            raise ValueError(f"unknown journal operation {op!r}")

    def _touch_parents(self, seq: int, op: str, args: dict) -> None:
        """An entry was added or removed: its directory's mtime, ctime (and link count, for a
        subdirectory) move, as the VM will move them, shown until the change is pushed."""
        if op in ("mkdir", "rmdir", "create", "symlink", "unlink"):
            parents = {parent_of(os.fsencode(args["path"]))}
        elif op == "link":
            parents = {parent_of(os.fsencode(args["new"]))}
        elif op == "rename":
            parents = {parent_of(os.fsencode(args["old"])), parent_of(os.fsencode(args["new"]))}
        else:
            return
        delta = {"mkdir": 1, "rmdir": -1}.get(op, 0)
        now = time.time_ns()
        for parent in parents:
            known, attrs = self._view(parent)
            if known and attrs is not None and attrs.is_dir:
                self.overlay.retitle(parent, replace(attrs, mtime_ns=now, ctime_ns=now,
                                                     nlink=max(attrs.nlink + delta, 2)), seq)

    def _replay(self) -> int:
        """Rebuild the overlay from what an earlier daemon left in the journal."""
        changes = self.journal.pending()
        for change in changes:
            self._apply(change.seq, change.op, change.args, change.content, change.size)
        if changes:
            log.info("journal: %d change(s) left by an earlier mount will be pushed", len(changes))
        return len(changes)

    def _landed(self, final: dict[bytes, Attrs | None], floor: int, applied: list[Change]) -> None:
        # pending names find their bytes where the VM has them now
        self.overlay.sources_landed(
            [("write", os.fsencode(c.args["path"]), c.content) if c.op == "write" else
             ("rename", os.fsencode(c.args["old"]), os.fsencode(c.args["new"]))
             for c in applied if (c.op == "write" and c.content is not None) or c.op == "rename"])
        # the ctime the mount showed of each file it pushed (the VM's is the push's own time)
        shown = {path: node.ctime_ns for path, attrs in final.items()
                 if attrs is not None and not attrs.is_dir and (node := self.overlay.nodes.get(path)) is not None}
        trimmed = self.overlay.trim(floor)
        # a directory whose entries still change in the overlay shows the mount's view of its
        # mtime and link count, not what the VM had when the batch ran
        self.landed(final, [p for p in trimmed if not self.overlay.has_children(p)], shown)

    def _view(self, path: bytes) -> tuple[bool, Attrs | None]:
        decided, attrs = self.overlay.known(path)
        return (decided, attrs) if decided else self.peek(path)

    async def _attrs(self, path: bytes) -> Attrs:
        known, attrs = self._view(path)
        if not known:
            return await self.remote.lstat(path)
        if attrs is None:
            raise FsError(errno.ENOENT)
        return attrs

    async def _absent(self, path: bytes) -> bool:
        known, attrs = self._view(path)
        if known:
            return attrs is None
        try:
            await self.remote.lstat(path)
        except FsError as exc:
            if exc.errno == errno.ENOENT:
                return True
            raise
        return False

    def _names_all_here(self, attrs: Attrs) -> bool:
        """Whether every name of the file ``attrs`` is one the overlay holds (or it has one name),
        so a change of its names can be journaled with every link count kept right."""
        return attrs.is_dir or attrs.nlink <= 1 or self.overlay.links_here(attrs) == attrs.nlink

    def _may_change_entries(self, *paths: bytes) -> None:
        """EACCES at once, as the VM would answer at the push, when a directory the change adds
        a name to or removes one from is known to lock its owner (the VM's user) out."""
        for path in paths:
            known, attrs = self._view(parent_of(path))
            if known and attrs is not None and attrs.uid == self.owner[0] and (
                    attrs.mode & (stat.S_IWUSR | stat.S_IXUSR)) != stat.S_IWUSR | stat.S_IXUSR:
                raise FsError(errno.EACCES, "the directory is not writable by the VM's user")

    def _only_here(self, path: bytes) -> bool:
        """Whether ``path`` exists only in the overlay (created here, not yet pushed)."""
        attrs = self.overlay.nodes.get(path)
        return attrs is not None and attrs.remote_ino >= SYNTHETIC_INO
