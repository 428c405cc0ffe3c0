"""The filesystem model: POSIX-shaped operations on inode numbers over ``RemoteFS`` and caches.

This is the layer the FUSE adapter (``arkerfs.mount.ops``) translates to; it never imports
pyfuse3. It owns the inode table, the metadata and content caches and the open files, and it
decides how many round trips each operation costs:

- ``lookup``/``getattr``: 0 calls when cached (own entry, parent's listing, negative entry).
  Once expired: one ``list_dir`` of the directory itself if it is one we listed before, else
  of the parent if the parent was listed before (shared by every sibling and absent name: N
  siblings cost one call per TTL period, not N), else one ``lstat``. A miss in a directory
  never listed lists it too (one call for all its names) unless its size says it is large.
- ``readdir``: one ``list_dir`` per opendir (re-taken on rewind), which fills the attribute
  cache so the entries' stats cost nothing afterwards.
- reads: one sync read on first use of a version (``content``; a large one then costs a few
  ranged GETs that grow while reading sequentially). The first read of a small file (<= 64 KiB)
  not cached is one run that also brings the other small files of its directory and of its
  parent's subtree (``readahead``): a walk of a tree costs about one call per 700 KB of small
  files for contents; writes: one install run at close, which
  carries a small content itself (a large one is uploaded first) and applies the mode and any
  chmod/utimens that came while data was pending (those are recorded on the open file and shown
  at once). The install is a compare-and-swap on the version the buffer was based on: a change
  made in the VM meanwhile stays, ours goes beside it (``_conflict``).
- every namespace/metadata change: one call, applied to the caches immediately. A setattr that
  changes nothing we show (chmod to the shown mode, chown to the shown owner, truncate to the
  size of an unbuffered file, judged on the cached attrs) costs nothing.

Consistency (what a reader sees when): the mount's own changes are visible at once to every
reader of the mount. A change made inside the VM is visible as soon as the change watcher
reports it (``mount.watcher``; applied by ``fs.vmchanges``, which also tells the kernel), else
once our cached entry expires (``cache_ttl``, long while the watcher is live) plus the kernel's
own entry/attr timeout. An open handle reads one version of a
file (pinned at its first read, or fetched whole when the mount removes the file's last name)
unless the file has a local write buffer, which all handles see.

Concurrency contract: FUSE handlers run concurrently and interleave at every await. Each
operation does its remote await first and then updates the inode table and caches with no
await in between, so a ``forget`` can never purge a record half way through a reply. Uploads
and buffer changes of one inode are serialized by that inode's lock (see ``files``); a rename
takes the moved file's lock so an upload never lands under a name the file no longer has.
"""

from __future__ import annotations

import errno
import itertools
import logging
import os
import stat
import time
from dataclasses import dataclass, replace

from arkerfs.fs import files
from arkerfs.fs.batch import Installed
from arkerfs.fs.buffers import WriteBuffer
from arkerfs.fs.cache import MetaCache, SingleFlight, name_of, parent_of
from arkerfs.fs.content import ContentCache, RangedContent, WholeContent
from arkerfs.fs.readahead import ReadAhead
from arkerfs.fs.errors import FsError
from arkerfs.fs.files import Handle, OpenFile, check_size
from arkerfs.fs.inodes import InodeTable
from arkerfs.fs.model import Attrs, Entry, StatFs
from arkerfs.fs.symlinks import transform

log = logging.getLogger(__name__)

RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2
NAME_MAX = 255
# An expired entry is refreshed by re-listing its directory only up to this many entries; a
# larger directory is not re-listed to answer for one name (one lstat instead).
REFRESH_LISTING_MAX = 4096
# A lookup in a directory never listed lists it when its st_size is at most this (ext4: about
# 4,000 entries of short names); a larger one answers with an lstat per name.
FIRST_LISTING_MAX_BYTES = 128 * 1024
# The sync state of a file (see ``sync_state``): answered by the mount, never stored in the VM,
# not listed (so cp -a/rsync -X never copy it), and refused by setxattr/removexattr.
STATE_XATTR = b"user.arkerfs.state"
# a refresh listing failing with these says the directory changed, not that the remote is down
_NOT_LISTABLE = frozenset({errno.ENOENT, errno.ENOTDIR, errno.EACCES, errno.EPERM})


@dataclass(frozen=True)
class Options:
    cache_ttl: float = 3.0
    read_only: bool = False
    owner: tuple[int, int] | None = None  # (uid, gid) to show instead of the remote owner
    content_cache_bytes: int = 256 * 1024 * 1024
    # a link's absolute target inside the home reads as a path relative to the link (symlinks.py)
    transform_symlinks: bool = False


@dataclass(frozen=True)
class Conflict:
    """A push that met a change made in the VM: the VM's version stayed at ``path``, the
    mount's went to ``kept`` (``NAME.conflict-<stamp>``, or the recovery directory)."""

    path: str
    kept: str
    when: float


@dataclass(eq=False)
class DirHandle:
    ino: int
    entries: list[Entry] | None = None


class VFS:
    """See the module docstring. ``remote`` is a ``RemoteFS``; ``spool_dir`` a private (0700)
    directory for content and write spool files and for rescue files (``<spool>/rescue``)."""

    def __init__(self, remote, root_path: bytes, spool_dir: str, options: Options = Options(), *,
                 timer=time.monotonic) -> None:
        self.remote = remote
        self.options = options
        self.spool_dir = spool_dir
        self.rescue_dir = os.path.join(spool_dir, "rescue")
        self.inodes = InodeTable(root_path)
        self.cache = MetaCache(options.cache_ttl, timer=timer)
        self.content = ContentCache(remote.open_read, spool_dir, options.content_cache_bytes)
        self.readahead = ReadAhead(remote, self.content)
        self._subtrees = hasattr(remote, "list_tree")  # off for good where the VM has no python3
        self.rescued: list[str] = []  # rescue files written during this mount
        self._flights = SingleFlight()
        self._files: dict[int, OpenFile] = {}
        self._handles: dict[int, Handle] = {}
        self._dirs: dict[int, DirHandle] = {}
        self._fh = itertools.count(1)
        self._timer = timer
        self.meta_hits = self.meta_misses = 0  # attribute lookups answered by / past the cache
        self.conflicts: list[Conflict] = []  # pushes of open files that met a change in the VM
        self.conflicted: set[str] = set()  # VM paths whose last push was a conflict
        # write-back: the port (``writeback.port.WriteBack``) asks the caches before the VM and
        # tells them what its pushes left in the VM
        self.write_back = getattr(remote, "pusher", None) is not None
        if self.write_back:
            remote.peek = self._peek
            remote.landed = self._landed

    # == attributes ============================================================================
    async def lookup(self, parent: int, name: bytes) -> tuple[int, Attrs]:
        """Resolve ``parent/name`` and count one kernel lookup on the result. ENOENT."""
        if len(name) > NAME_MAX:  # the kernel lets FUSE names up to 1024 bytes through
            raise FsError(errno.ENAMETOOLONG, "name longer than 255 bytes")
        path = self.inodes.child_path(parent, name)
        attrs = await self._path_attrs(path)
        ino = self.inodes.learn(parent, name, attrs)
        self.inodes.ref(ino)
        return ino, self._present(ino, attrs)

    async def getattr(self, ino: int) -> Attrs:
        node = self.inodes.get(ino)
        if node.unlinked:
            return self._present(ino, replace(node.last_attrs, nlink=0))
        attrs = await self._path_attrs(self.inodes.path(ino))
        self.inodes.set_attrs(ino, attrs)
        return self._present(ino, attrs)

    async def setattr(self, ino: int, fh: int | None = None, *, mode: int | None = None,
                      uid: int | None = None, gid: int | None = None, size: int | None = None,
                      atime_ns: int | None = None, mtime_ns: int | None = None) -> Attrs:
        self._writable()
        uid, gid = self._chown_allowed(uid, gid)
        file = self._files.get(ino)
        if size is not None:
            check_size(size, file)
            if file is not None and file.buffer is not None:
                await self._truncate_buffer(ino, file, size, push=fh is None)
                size = None
        mode, uid, gid, size = self._without_noops(ino, mode, uid, gid, size)
        if file is not None and file.dirty:  # data still to upload: its follow-up run applies these
            file.note_dirty(self._timer())
            if atime_ns is not None or mtime_ns is not None:
                before = file.pending_times or (None, None)
                file.pending_times = (before[0] if atime_ns is None else atime_ns,
                                      before[1] if mtime_ns is None else mtime_ns)
                atime_ns = mtime_ns = None
            if mode is not None:
                file.pending_mode = stat.S_IMODE(mode)
                mode = None
        if all(v is None for v in (mode, uid, gid, size, atime_ns, mtime_ns)):
            return await self.getattr(ino)
        path = self.inodes.path(ino)
        attrs = await self.remote.setattr(path, mode=None if mode is None else stat.S_IMODE(mode), uid=uid,
                                          gid=gid, size=size, atime_ns=atime_ns, mtime_ns=mtime_ns)
        if file is not None and file.base is not None and (attrs.remote_ino, attrs.size) == (
                file.base.remote_ino, file.base.size):
            file.base = attrs  # our own utimens moved the version the buffer is based on
        self._cache_all_names(ino, path, attrs)
        if size is not None:
            self.content.forget(path)
        self.inodes.set_attrs(ino, attrs)
        return self._present(ino, attrs)

    async def readlink(self, ino: int) -> bytes:
        path = self.inodes.path(ino)
        attrs = self.cache.attrs(path)
        if attrs is not None and attrs.symlink_target is not None:
            return self._shown_target(path, attrs.symlink_target)
        return self._shown_target(path, await self.remote.readlink(path))

    def _shown_target(self, path: bytes, target: bytes) -> bytes:
        if not self.options.transform_symlinks:
            return target
        return transform(target, path, self.inodes.root_path)

    async def statfs(self) -> StatFs:
        hit = self.cache.statfs()
        if hit is not None:
            return hit

        async def fill() -> StatFs:
            value = await self.remote.statfs()
            self.cache.store_statfs(value)
            return value

        return await self._flights.do("statfs", fill)

    # == directories ===========================================================================
    def opendir(self, ino: int) -> int:
        self.inodes.opened(ino)
        fh = next(self._fh)
        self._dirs[fh] = DirHandle(ino)
        return fh

    async def readdir(self, fh: int, start_id: int) -> tuple[int, list[Entry]]:
        """(directory inode, the handle's listing snapshot). The snapshot is taken at start_id
        0; entries are indexed from 0 and the caller reports ``index + 1`` as the next offset."""
        handle = self._dirs[fh]
        if start_id == 0 or handle.entries is None:
            handle.entries = await self._listing(self.inodes.path(handle.ino))
        return handle.ino, handle.entries

    def learn_entry(self, parent: int, entry: Entry) -> tuple[int, Attrs]:
        """Inode for a readdir entry, not yet counted: call ``entry_taken`` with whether the
        kernel accepted it, with no await in between."""
        ino = self.inodes.learn(parent, entry.name, entry.attrs)
        return ino, self._present(ino, entry.attrs)

    def entry_taken(self, ino: int, taken: bool) -> None:
        if taken:
            self.inodes.ref(ino)
        else:
            self.inodes.release_if_unused(ino)

    def releasedir(self, fh: int) -> None:
        handle = self._dirs.pop(fh)
        self.inodes.closed(handle.ino)

    async def mkdir(self, parent: int, name: bytes, mode: int) -> tuple[int, Attrs]:
        self._writable()
        path = self.inodes.child_path(parent, name)
        attrs = await self.remote.mkdir(path, stat.S_IMODE(mode))
        self.cache.added(path, attrs)
        self.cache.dir_changed(self.inodes.path(parent), +1, attrs.ctime_ns)
        self.cache.store_listing(path, attrs, [], self.cache.generation)  # known empty
        return self._new_entry(parent, name, attrs)

    async def rmdir(self, parent: int, name: bytes) -> None:
        self._writable()
        path = self.inodes.child_path(parent, name)
        await self.remote.rmdir(path)
        self.cache.removed(path)
        self.cache.dir_changed(self.inodes.path(parent), -1)
        self.inodes.unlink(parent, name)

    # == namespace =============================================================================
    async def mknod(self, parent: int, name: bytes, mode: int, rdev: int) -> tuple[int, Attrs]:
        self._writable()
        path = self.inodes.child_path(parent, name)
        attrs = await self.remote.mknod(path, mode, rdev)
        self.cache.added(path, attrs)
        self.cache.dir_changed(self.inodes.path(parent), when_ns=attrs.ctime_ns)
        return self._new_entry(parent, name, attrs)

    async def symlink(self, parent: int, name: bytes, target: bytes) -> tuple[int, Attrs]:
        self._writable()
        path = self.inodes.child_path(parent, name)
        attrs = await self.remote.symlink(target, path)
        self.cache.added(path, attrs)
        self.cache.dir_changed(self.inodes.path(parent), when_ns=attrs.ctime_ns)
        return self._new_entry(parent, name, attrs)

    async def link(self, ino: int, new_parent: int, new_name: bytes) -> tuple[int, Attrs]:
        self._writable()
        old = self.inodes.path(ino)
        new = self.inodes.child_path(new_parent, new_name)
        attrs = await self.remote.link(old, new)
        self._cache_all_names(ino, old, attrs)  # every earlier name's nlink moved too
        self.cache.added(new, attrs)
        self.cache.dir_changed(self.inodes.path(new_parent), when_ns=attrs.ctime_ns)
        self.inodes.set_attrs(ino, attrs)  # nlink > 1 now: registers the remote inode
        return self._new_entry(new_parent, new_name, attrs)

    async def unlink(self, parent: int, name: bytes) -> None:
        self._writable()
        path = self.inodes.child_path(parent, name)
        await self._keep_open_versions(self.inodes.child(parent, name))
        before = self.cache.attrs(path)
        await self.remote.unlink(path)
        if before is not None and before.nlink > 1:  # names the kernel forgot are cached too
            self._other_names_lost_a_link(before.remote_ino)
        self.cache.removed(path, is_dir=False)
        self.cache.dir_changed(self.inodes.path(parent))
        self.content.forget(path)
        ino = self.inodes.unlink(parent, name)
        if ino is not None:
            self._lost_a_link(ino)

    async def rename(self, old_parent: int, old_name: bytes, new_parent: int, new_name: bytes,
                     flags: int) -> None:
        self._writable()
        if flags not in (0, RENAME_NOREPLACE, RENAME_EXCHANGE):
            raise FsError(errno.EINVAL, f"rename flags {flags:#x}")
        old = self.inodes.child_path(old_parent, old_name)
        new = self.inodes.child_path(new_parent, new_name)
        moved = self.inodes.child(old_parent, old_name)
        file = self._files.get(moved) if moved is not None else None
        if flags != RENAME_EXCHANGE:
            await self._keep_open_versions(self.inodes.child(new_parent, new_name))
        if file is not None:
            async with file.lock:  # an upload in flight must land before the name moves
                await self.remote.rename(old, new, flags)
        else:
            await self.remote.rename(old, new, flags)
        replaced_ino = self.inodes.child(new_parent, new_name)
        if moved is not None and moved == replaced_ino:
            return  # two names of one file: rename(2) does nothing and both names stay
        self.content.forget(old)
        self.content.forget(new)
        # both parents' mtimes moved; a directory moving between parents moves a link count
        moved_attrs, replaced = self.cache.attrs(old), self.cache.attrs(new)
        moves_dir = (flags != RENAME_EXCHANGE and old_parent != new_parent and moved_attrs is not None
                     and moved_attrs.is_dir)
        self.cache.dir_changed(self.inodes.path(old_parent), -1 if moves_dir else 0)
        self.cache.dir_changed(self.inodes.path(new_parent),
                               +1 if moves_dir and not (replaced is not None and replaced.is_dir) else 0)
        if flags == RENAME_EXCHANGE:
            self.cache.exchanged(old, new)
            self.inodes.exchange(old_parent, old_name, new_parent, new_name)
        else:
            self.cache.renamed(old, new)
            self.inodes.rename(old_parent, old_name, new_parent, new_name)
            if replaced_ino is not None:
                self._lost_a_link(replaced_ino)

    def forget(self, ino: int, n: int) -> None:
        self.inodes.forget(ino, n)

    # == open files ============================================================================
    async def create(self, parent: int, name: bytes, mode: int, flags: int) -> tuple[int, int, Attrs]:
        """Create and open; returns (fh, ino, attrs) and counts one lookup. Exactly one run."""
        self._writable()
        path = self.inodes.child_path(parent, name)
        try:
            attrs = await self.remote.create_empty(path, stat.S_IMODE(mode), exclusive=True)
            self.cache.dir_changed(self.inodes.path(parent), when_ns=attrs.ctime_ns)
        except FsError as exc:
            # The kernel sends create only when it believes the name is free; if it appeared in
            # the VM meanwhile, a plain O_CREAT must open it rather than fail.
            if exc.errno != errno.EEXIST or flags & os.O_EXCL:
                raise
            ino, attrs = await self.lookup(parent, name)
            fh, _keep = await self.open(ino, flags)
            return fh, ino, self._present(ino, attrs)
        self.cache.added(path, attrs)
        self.content.forget(path)
        ino, attrs = self._new_entry(parent, name, attrs)
        file = self._open_file(ino)
        if file.buffer is None:
            file.buffer = WriteBuffer(self.spool_dir)  # empty and clean: close uploads nothing
            file.needs_load = False
            file.base = attrs  # what we created: a file the VM made meanwhile is a conflict
        fh = self._new_handle(ino, file, flags)
        return fh, ino, self._present(ino, attrs)

    async def open(self, ino: int, flags: int) -> tuple[int, bool]:
        """Open ``ino``; returns (fh, keep_cache)."""
        writable = flags & os.O_ACCMODE != os.O_RDONLY
        if writable or flags & os.O_TRUNC:
            self._writable()
        attrs = await self.getattr(ino)
        if not stat.S_ISREG(attrs.mode):
            # Fifos and sockets are served by the kernel itself; anything else is not data.
            raise FsError(errno.ENXIO, "not a regular file")
        if flags & os.O_TRUNC and not writable:
            # Linux truncates on O_RDONLY|O_TRUNC as well; no close of this handle will push,
            # so it is applied now, like a path truncate.
            attrs = await self.setattr(ino, size=0)
        node = self.inodes.get(ino)
        file = self._open_file(ino)
        if writable and file.buffer is None:
            file.buffer = WriteBuffer(self.spool_dir)
            file.needs_load = attrs.size > 0 and not node.unlinked
            file.base = attrs  # replaced at the load by the version whose bytes it takes
        fh = self._new_handle(ino, file, flags)
        if flags & os.O_TRUNC and file.buffer is not None:
            async with file.lock:
                if file.needs_load or file.buffer.size:
                    file.needs_load = False
                    file.buffer.truncate(0)
        keep = file.buffer is None and node.extra.get("served") == attrs.content_key
        return fh, keep

    async def read(self, fh: int, offset: int, length: int) -> bytes:
        handle = self._handles[fh]
        file = handle.file
        node = self.inodes.get(handle.ino)
        if file.buffer is not None:
            async with file.lock:
                await self._ensure_loaded(handle)
                node.extra["served"] = None  # the kernel's pages now come from the buffer
                return file.buffer.read(offset, length)
        if handle.content is None:
            # Pinned at the first read (or when the mount unlinks/renames over the file, see
            # _keep_open_versions); a file deleted in the VM before any read gives ENOENT.
            attrs = await self.getattr(handle.ino)
            key = (self.inodes.path(handle.ino), attrs.size, attrs.mtime_ns)
            await self.readahead.prefetch(key)  # a small file comes with its small siblings
            handle.content = await self.content.get(key)
            handle.content_key = key
        node.extra["served"] = (handle.content_key[1], handle.content_key[2])
        return await self.content.read(handle.content_key, handle.content, offset, length)

    async def write(self, fh: int, offset: int, data: bytes) -> int:
        handle = self._handles[fh]
        file = handle.file
        async with file.lock:
            if not handle.append:  # refused before fetching old bytes it would not use
                check_size(offset + len(data), file)
            await self._ensure_loaded(handle)
            if handle.append:
                offset = file.buffer.size
            check_size(offset + len(data), file)
            file.pending_times = None  # a later write stamps its own mtime
            file.note_dirty(self._timer())
            return file.buffer.write(offset, data)

    async def flush(self, fh: int) -> None:
        """close(): upload if dirty; the upload's errno is the close()'s."""
        handle = self._handles[fh]
        if handle.writable:
            await self._push(handle.ino, handle.file)

    async def fsync(self, fh: int) -> None:
        """Returns once the file's content (and, in write-back mode, every change recorded
        before it, which includes the namespace changes it depends on) is in the VM."""
        handle = self._handles[fh]
        if handle.file.buffer is not None:
            await self._push(handle.ino, handle.file)
        if self.write_back:
            refused = await self.remote.drain(retry_failed=False)
            if not self.inodes.get(handle.ino).unlinked:  # a file with no name has nothing pending
                self._refused_here(self.inodes.path(handle.ino), refused)

    async def fsyncdir(self, fh: int) -> None:
        """Returns once the directory's entries are in the VM (write-through: already)."""
        if self.write_back:
            directory = self.inodes.path(self._dirs[fh].ino)
            self._refused_here(directory, await self.remote.drain(retry_failed=False), inside=True)

    @staticmethod
    def _refused_here(path: bytes, refused: list[tuple[str, str]], *, inside: bool = False) -> None:
        """fsync's answer in write-back mode: EIO when the VM refused a change of ``path`` (or of
        an entry in it, for a directory); the change stays kept in the journal."""
        name = os.fsdecode(path)
        for where, why in refused:
            if where == name or (inside and os.path.dirname(where) == name):
                raise FsError(errno.EIO, f"the VM refused a change of {where} ({why}); it is kept "
                                         "and retried by `arkerfs sync`")

    async def release(self, fh: int) -> int | None:
        """Close a handle. Returns the inode if what it shows changed (refused content was
        discarded: the size and data the kernel may have cached are the buffer's, not the VM's)."""
        handle = self._handles.pop(fh)
        file = handle.file
        file.handles -= 1
        stale = None
        if file.handles == 0:
            async with file.lock:
                if self._files.get(handle.ino) is file and file.handles == 0:
                    if file.buffer is not None and file.buffer.refused is not None:
                        stale = handle.ino
                    self._drop_file(handle.ino, file)
        self.inodes.closed(handle.ino)
        return stale

    async def push_all(self) -> list[tuple[str, str]]:
        """Push every dirty buffer now (before an unmount, for ``arkerfs sync``); failures stay
        dirty and are logged. Returns (VM path, error text) for each file that could not be pushed."""
        failed = []
        for ino, file in list(self._files.items()):
            if file.buffer is not None and file.buffer.refused is not None:
                continue  # its writer got EFBIG; the content goes with its last handle
            try:
                await self._push(ino, file)
            except FsError as exc:
                log.error("could not push inode %d: %s", ino, exc)
                failed.append((self._path_for_report(ino), str(exc)))
        if self.write_back:  # `arkerfs sync` and unmount: changes marked failed get another try
            try:
                failed += await self.remote.drain(retry_failed=True)
            except FsError as exc:
                failed += [(path, str(exc)) for path in self.remote.pending_paths()]
        return failed

    def _path_for_report(self, ino: int) -> str:
        try:
            return self.inodes.path(ino).decode("utf-8", "replace")
        except FsError:  # a directory above it is gone
            return f"(inode {ino}, no longer reachable by name)"

    async def shutdown(self) -> list[str]:
        """At unmount: push every dirty buffer; rescue what cannot be pushed. Returns all
        rescue files of this mount."""
        for ino, file in list(self._files.items()):
            if file.buffer is not None and file.buffer.refused is not None:
                async with file.lock:
                    self._drop_file(ino, file)  # refused content: discarded, never rescued
                continue
            if not file.dirty:
                continue
            try:
                await self._push(ino, file)
            except FsError as exc:
                log.error("could not push inode %d at unmount: %s", ino, exc)
                async with file.lock:
                    self._drop_file(ino, file)
        if self.write_back:  # what cannot go now stays in the journal for the next mount
            try:
                refused = await self.remote.drain(retry_failed=True)
            except FsError as exc:
                log.error("pending changes stay in the journal for the next mount: %s", exc)
            else:
                for path, why in refused:
                    log.error("kept in the journal (the VM refused it): %s: %s", path, why)
        self._note_journal_kept()
        self.inodes.forget_all()
        return list(self.rescued)

    # == sync state ============================================================================
    def sync_state(self, ino: int) -> str:
        """What is pending for ``ino``: clean, pending (changed here, not yet in the VM),
        pushing (an upload in flight), failed (the last upload failed; the data is kept and
        retried) or conflict (its last push met a change made in the VM: both versions were
        kept). Answered from memory: no call."""
        file = self._files.get(ino)
        if file is not None and file.sync_state != "clean":
            return file.sync_state
        if self.write_back and ino in self.inodes:
            try:
                state = self.remote.state_of(self.inodes.path(ino))
            except FsError:
                state = None
            if state is not None:
                return state
        if self.conflicted and ino in self.inodes:
            try:
                if os.fsdecode(self.inodes.path(ino)) in self.conflicted:
                    return "conflict"
            except FsError:  # a directory above it is gone
                pass
        return "clean"

    def pending_summary(self) -> dict:
        """Files with changes not yet in the VM: how many, how many bytes, the oldest's age."""
        dirty = [f for f in self._files.values() if f.dirty]
        since = [f.dirty_since for f in dirty if f.dirty_since is not None]
        summary = {
            "files": len(dirty),
            "bytes": sum(f.buffer.size for f in dirty if f.buffer.dirty),
            "oldest_age_s": round(self._timer() - min(since), 1) if since else None,
            "pushing": sum(f.pushing for f in dirty),
            "failed": sum(f.sync_state == "failed" for f in dirty),
        }
        if self.write_back:  # the journal's changes count too, each path once
            journal = self.remote.journal.summary()
            age = None if journal["oldest"] is None else round(time.time() - journal["oldest"], 1)
            summary["files"] = journal["paths"] + sum(
                1 for ino, f in list(self._files.items())
                if f.dirty and not (ino in self.inodes and self._journaled(ino)))
            summary["bytes"] += journal["bytes"]
            summary["failed"] += journal["failed"]
            summary["pushing"] += len(self.remote.pusher.in_flight)
            if age is not None:
                summary["oldest_age_s"] = max(age, summary["oldest_age_s"] or 0)
        return summary

    def _journaled(self, ino: int) -> bool:
        try:
            return self.remote.state_of(self.inodes.path(ino)) in ("pending", "pushing", "failed")
        except FsError:  # no name any more
            return False

    def pending_paths(self) -> list[str]:
        """VM paths of the open files that still have something to push."""
        paths = []
        for ino, file in list(self._files.items()):
            if file.dirty and ino in self.inodes:
                try:
                    paths.append(self.inodes.path(ino).decode("utf-8", "replace"))
                except FsError:  # a directory above it is gone
                    pass
        if self.write_back:
            paths += [p for p in self.remote.pending_paths() if p not in paths]
        return paths

    def rescue_unsent(self) -> list[str]:
        """Save every unsent buffer to a rescue file without trying to push it (``arkerfs umount
        --force``); returns every rescue file of this mount. Synchronous: no handler interleaves."""
        for ino, file in list(self._files.items()):
            if file.dirty:
                self._drop_file(ino, file)  # rescues the content (logged at ERROR with its path)
        self._note_journal_kept()
        return list(self.rescued)

    def _note_journal_kept(self) -> None:
        """Write-back: what is still in the journal is kept there (durable) for the next mount of
        the VM; listed with the rescue files so `arkerfs umount` says where the data is."""
        if not self.write_back:
            return
        changes = self.remote.journal.summary()["changes"]
        note = f"{self.remote.journal.directory} (write-back journal: {changes} change(s), pushed by the next mount of this VM)"
        if changes and not any(r.startswith(str(self.remote.journal.directory)) for r in self.rescued):
            log.error("unmounting with %d change(s) not pushed; kept in %s", changes, self.remote.journal.directory)
            self.rescued.append(note)

    # == extended attributes ===================================================================
    async def getxattr(self, ino: int, name: bytes) -> bytes:
        if name == STATE_XATTR:
            return self.sync_state(ino).encode()
        path = self.inodes.path(ino)
        known = self._known_xattrs(path)
        if known is not None and _user_xattr(name) not in known:
            raise FsError(errno.ENODATA, "no such attribute")
        return await self.remote.getxattr(path, _user_xattr(name))

    async def listxattr(self, ino: int) -> list[bytes]:
        path = self.inodes.path(ino)
        known = self._known_xattrs(path)
        names = list(known) if known is not None else await self.remote.listxattr(path)
        return [n for n in names if n.startswith(b"user.")]

    def _known_xattrs(self, path: bytes) -> tuple[bytes, ...] | None:
        """The user xattr names of ``path`` its cached listing entry carries (``cp -a`` asks of
        every file it copies: no call); None when not known (or pending: the port answers)."""
        if self.write_back and self.remote.decided(path)[0]:
            return None
        attrs = self.cache.attrs(path)
        return None if attrs is None else attrs.xattrs

    async def setxattr(self, ino: int, name: bytes, value: bytes, flags: int) -> None:
        self._writable()
        _not_state_xattr(name)
        path = self.inodes.path(ino)
        try:
            await self.remote.setxattr(path, _user_xattr(name), value, flags)
        finally:  # even a failed one may have changed them (an answer lost on the way)
            self.cache.xattrs_changed(path)

    async def removexattr(self, ino: int, name: bytes) -> None:
        self._writable()
        _not_state_xattr(name)
        path = self.inodes.path(ino)
        try:
            await self.remote.removexattr(path, _user_xattr(name))
        finally:
            self.cache.xattrs_changed(path)

    # == internals =============================================================================
    def _writable(self) -> None:
        if self.options.read_only:
            raise FsError(errno.EROFS, "mounted read-only")

    def _chown_allowed(self, uid: int | None, gid: int | None) -> tuple[int | None, int | None]:
        """With the owner mapped to the local user, only a no-op chown is allowed."""
        owner = self.options.owner
        if owner is None:
            return uid, gid
        if (uid is not None and uid != owner[0]) or (gid is not None and gid != owner[1]):
            raise FsError(errno.EPERM, "ownership is mapped to the mounting user")
        return None, None

    def _without_noops(self, ino: int, mode: int | None, uid: int | None, gid: int | None,
                       size: int | None) -> tuple[int | None, int | None, int | None, int | None]:
        """Drop the setattr fields that would change nothing the kernel sees (0 calls for them):
        chmod to the mode we show, chown to the owner we show (with the owner mapped, ``_chown_allowed``
        already dropped it), truncate to the size of a file with no local buffer (the caller has
        handled buffered ones). Judged against the cached attrs, which are as fresh as anything we
        show; with nothing cached every field is kept (its run returns fresh attrs anyway)."""
        if self.inodes.get(ino).unlinked:
            return mode, uid, gid, size
        cached = self.cache.attrs(self.inodes.path(ino))
        if cached is None:
            return mode, uid, gid, size
        shown = self._present(ino, cached)
        if mode is not None and stat.S_IMODE(mode) == stat.S_IMODE(shown.mode):
            mode = None
        if not shown.mode & (stat.S_ISUID | stat.S_ISGID):  # else a chown clears them: not a no-op
            uid = None if uid == shown.uid else uid
            gid = None if gid == shown.gid else gid
        if size is not None and size == shown.size:
            size = None
        return mode, uid, gid, size

    def _present(self, ino: int, attrs: Attrs) -> Attrs:
        file = self._files.get(ino)
        if file is not None:
            attrs = file.overlay(attrs)
        owner = self.options.owner
        if owner is not None:
            attrs = replace(attrs, uid=owner[0], gid=owner[1])
        if self.options.transform_symlinks and attrs.symlink_target is not None:
            try:  # a link's size is the length of what readlink returns
                attrs = replace(attrs, size=len(self._shown_target(self.inodes.path(ino), attrs.symlink_target)))
            except FsError:  # unlinked: nothing reads it by name any more
                pass
        return attrs

    def _new_entry(self, parent: int, name: bytes, attrs: Attrs) -> tuple[int, Attrs]:
        ino = self.inodes.learn(parent, name, attrs)
        self.inodes.ref(ino)
        return ino, self._present(ino, attrs)

    async def _path_attrs(self, path: bytes) -> Attrs:
        attrs = self.cache.attrs(path)
        if attrs is not None:
            self.meta_hits += 1
            return attrs
        if self.cache.is_absent(path):
            self.meta_hits += 1
            raise FsError(errno.ENOENT, "cached negative entry")
        self.meta_misses += 1
        source = self._refresh_source(path)
        if source is not None:
            try:  # a directory never listed: its subtree too (a cold walk goes on below it)
                dir_attrs, entries = await self._list(source, refresh=self.cache.listed_size(source) is not None)
            except FsError as exc:
                if exc.errno not in _NOT_LISTABLE:
                    raise  # the remote is in trouble (EIO...): an lstat would only fail the same way
                # not a directory we can list any more: stop trying, ask about the name itself
                log.debug("refresh of %r by listing %r failed: %s", path, source, exc)
                self.cache.unlisted(source)
            else:
                return self._listed_attrs(path, source, dir_attrs, entries)

        async def fill() -> Attrs:
            generation = self.cache.generation
            try:
                value = await self.remote.lstat(path)
            except FsError as exc:
                if exc.errno == errno.ENOENT:
                    self.cache.store_absent(path, generation)
                raise
            self.cache.store_attrs(path, value, generation)
            return self.cache.as_shown(path, value)

        return await self._flights.do(("lstat", path), fill)

    def _refresh_source(self, path: bytes) -> bytes | None:
        """The directory to list to refresh ``path`` (whose cached entry expired): ``path`` itself
        if it is a directory we listed before (the listing carries its own attrs and refreshes
        its entries, which whoever needs the directory's attrs is usually about to use; the root
        is refreshed this way), else its parent if the parent was listed before (one listing
        refreshes every sibling and answers absent names too) or was never listed and is not
        large; None (ask with one lstat) otherwise, or when the directory was too large to
        re-list for one name."""
        for source in (path, parent_of(path)):
            size = self.cache.listed_size(source)
            if size is not None and size <= REFRESH_LISTING_MAX:
                return source
        # a parent never listed is listed once (not one lstat per sibling: git, rsync and
        # make look up every name of a directory) unless its size says it is a large one
        parent = self.cache.attrs(parent_of(path))
        if parent is not None and parent.is_dir and parent.size <= FIRST_LISTING_MAX_BYTES:
            return parent_of(path)
        return None

    def _listed_attrs(self, path: bytes, source: bytes, dir_attrs: Attrs, entries: list[Entry]) -> Attrs:
        """``path``'s attrs from a fresh listing of ``source`` (its parent or itself). The cache
        is asked first: a local change that raced with the listing is newer than it."""
        attrs = self.cache.attrs(path)
        if attrs is not None:
            return attrs
        if self.cache.is_absent(path):
            raise FsError(errno.ENOENT, "not in the directory's listing")
        if path == source:
            return self.cache.as_shown(path, dir_attrs)
        name = name_of(path)
        for entry in entries:
            if entry.name == name:
                return self.cache.as_shown(path, entry.attrs)
        raise FsError(errno.ENOENT, "not in the directory's listing")

    async def _listing(self, path: bytes) -> list[Entry]:
        hit = self.cache.listing(path)
        if hit is not None:
            return hit
        return (await self._list(path))[1]

    async def _list(self, path: bytes, *, refresh: bool = False) -> tuple[Attrs, list[Entry]]:
        """One listing (single-flight per directory), stored in the cache: of the directory and
        its subtree (bounded, ``list_tree``) when it is listed for the first time since its
        listing expired or never was, so a cold walk of a tree costs a call or two, not one per
        directory. A ``refresh`` (for one expired name) lists the directory alone and leaves the
        still-fresh entries as they are (see ``store_listing``)."""

        async def fill() -> tuple[Attrs, list[Entry]]:
            generation = self.cache.generation
            if not refresh and self._subtrees:
                try:
                    attrs, tree = await self.remote.list_tree(path)
                except FsError as exc:
                    if exc.errno == errno.ENOTSUP:
                        log.info("no python3 in the VM: directories are listed one at a time")
                        self._subtrees = False
                    elif exc.errno != errno.E2BIG:  # E2BIG: too large for a subtree, listed in pages
                        raise
                else:
                    self._store_tree(path, attrs, tree, generation)
                    return self.cache.as_shown(path, attrs), self.cache.entries_as_shown(path, tree[b""])
            attrs, entries = await self.remote.list_dir(path)
            self.cache.store_listing(path, attrs, entries, generation, keep_fresh=refresh)
            return self.cache.as_shown(path, attrs), self.cache.entries_as_shown(path, entries)

        return await self._flights.do(("list", path), fill)

    def _store_tree(self, path: bytes, attrs: Attrs, tree: dict[bytes, list[Entry]], generation: int) -> None:
        """Every listing of a subtree (breadth first: a directory's attrs come with its parent's)."""
        dirs = {path: attrs}
        for rel, entries in tree.items():
            directory = path + b"/" + rel if rel else path
            if directory not in dirs:
                continue
            self.cache.store_listing(directory, dirs[directory], entries, generation)
            dirs.update((directory + b"/" + e.name, e.attrs) for e in entries if e.attrs.is_dir)

    def _open_file(self, ino: int) -> OpenFile:
        file = self._files.get(ino)
        if file is None:
            file = self._files[ino] = OpenFile(ino)
        return file

    def _new_handle(self, ino: int, file: OpenFile, flags: int) -> int:
        fh = next(self._fh)
        writable = flags & os.O_ACCMODE != os.O_RDONLY
        self._handles[fh] = Handle(fh, ino, file, writable, bool(flags & os.O_APPEND))
        file.handles += 1
        self.inodes.opened(ino)
        return fh

    async def _ensure_loaded(self, handle: Handle) -> None:
        """Caller holds the file lock."""
        file = handle.file
        if not file.needs_load:
            return
        attrs = await self.getattr(handle.ino)
        path = self.inodes.path(handle.ino)
        content = await self.content.get((path, attrs.size, attrs.mtime_ns))
        await files.load(file, content)
        file.base = attrs

    async def _keep_open_versions(self, ino: int | None) -> None:
        """``ino`` is about to lose a name (unlink, or a rename over it). If it is its last name,
        its open handles must go on reading the version they opened, which the remote is about
        to drop: fetch that version whole now (one sync read, plus ranged GETs when large).
        Costs nothing when no handle is open (the usual case)."""
        file = self._files.get(ino) if ino is not None else None
        if file is None:
            return
        attrs = self.inodes.get(ino).last_attrs
        if attrs is not None and (attrs.nlink > 1 or not stat.S_ISREG(attrs.mode)):
            return
        try:
            await self._fetch_open_versions(ino, file)
        except FsError as exc:  # gone already (changed in the VM): the unlink/rename goes on
            log.debug("could not keep the open version of inode %d: %s", ino, exc)

    async def _fetch_open_versions(self, ino: int, file: OpenFile) -> None:
        if file.buffer is not None:
            async with file.lock:
                await self._ensure_loaded(Handle(0, ino, file, True, False))
            return
        whole: dict[int, WholeContent] = {}
        for handle in [h for h in self._handles.values() if h.file is file]:
            if handle.content is None:
                attrs = await self.getattr(ino)
                handle.content_key = (self.inodes.path(ino), attrs.size, attrs.mtime_ns)
                handle.content = await self.content.get(handle.content_key)
            if isinstance(handle.content, RangedContent):  # its URL would read the new file
                ranged = handle.content
                if id(ranged) not in whole:
                    whole[id(ranged)] = WholeContent(await ranged.read(0, ranged.size), self.spool_dir)
                handle.content = whole[id(ranged)]

    async def _truncate_buffer(self, ino: int, file: OpenFile, size: int, *, push: bool) -> None:
        async with file.lock:
            if file.needs_load and size == 0:
                file.needs_load = False
            elif file.needs_load:
                handle = Handle(0, ino, file, True, False)
                await self._ensure_loaded(handle)
            file.buffer.truncate(size)
            file.note_dirty(self._timer())
        if push:  # a path truncate is expected to take effect now, not at someone's close
            await self._push(ino, file)

    async def _push(self, ino: int, file: OpenFile) -> None:
        """``_push_now``, keeping the file's sync state (pushing, failed) for ``sync_state``."""
        file.pushing = True
        try:
            await self._push_now(ino, file)
        except BaseException:
            file.push_failed = True
            raise
        finally:
            file.pushing = False
        file.push_failed = False
        if not file.dirty:
            file.dirty_since = None

    async def _push_now(self, ino: int, file: OpenFile) -> None:
        """Upload the buffer if dirty, as a compare-and-swap on the VM's version it was based on
        (``file.base``; see ``RemoteFS.write_file``). Write-through: ONE install run (plus the
        upload of a large content) that also applies the mode and whatever chmod/utimens was
        recorded while data was pending. Write-back: the port records it, and a recorded
        chmod/utimens follows. Raises the remote's FsError; what was not done stays pending for
        a retry. A conflict is no error: the local version is safe in the VM beside the VM's."""
        async with file.lock:
            buffer = file.buffer
            if buffer is not None and buffer.refused is not None:  # a change past the cap: never publish
                raise FsError(buffer.refused, "a write or truncate of this file went past the size limit; "
                                              "nothing was uploaded")
            if buffer is None or file.needs_load or not file.dirty:
                return
            node = self.inodes.get(ino)
            if node.unlinked:
                return  # unlinked while open: its data has nowhere to go
            if buffer.broken is not None:  # incomplete (the spool refused a write): never upload it
                raise FsError(buffer.broken, "a write of this file failed in the local spool; nothing was uploaded")
            path = self.inodes.path(ino)
            source, size, mtime_ns = buffer.source(), buffer.size, buffer.mtime_ns
            old = self.cache.attrs(path) or node.last_attrs
            base = file.base or old
            times, pending_mode = file.pending_times, file.pending_mode
            attrs = None
            if buffer.dirty:
                # a sync write replaces the inode: a file with hard links is rewritten in place
                in_place = old is not None and old.nlink > 1
                if self.write_back:
                    # Uploads keep an existing file's mode; only an unusual one is re-applied.
                    mode = None if old is None or stat.S_IMODE(old.mode) == 0o644 else stat.S_IMODE(old.mode)
                    follow_up = times is not None or pending_mode is not None
                    result = await self.remote.write_file(path, source, size, mode=None if follow_up else mode,
                                                          in_place=in_place, base=base, mtime_ns=mtime_ns)
                else:  # the install run applies the mode and the recorded times as well
                    atime_ns, set_mtime = times or (None, None)
                    result = await self.remote.write_file(
                        path, source, size, in_place=in_place, base=base,
                        mode=stat.S_IMODE(old.mode) if pending_mode is None and old is not None else pending_mode,
                        atime_ns=atime_ns, mtime_ns=mtime_ns if set_mtime is None else set_mtime)
                    self._applied(file, times, pending_mode)
                    times, pending_mode = file.pending_times, file.pending_mode
                    mode = None
                buffer.dirty = False
                self.content.forget(path)
                if isinstance(result, Installed):
                    if result.conflict is not None:
                        self._conflict(ino, file, path, result.conflict)
                        return
                    result = result.attrs
                attrs = result
            else:
                mode = None
            while times is not None or pending_mode is not None:
                attrs = await self.remote.setattr(path, mode=mode if pending_mode is None else pending_mode,
                                                  atime_ns=None if times is None else times[0],
                                                  mtime_ns=None if times is None else times[1])
                # a chmod/utimens recorded during the await is newer: it gets its own run
                self._applied(file, times, pending_mode)
                times, pending_mode, mode = file.pending_times, file.pending_mode, None
            if attrs is None:
                # Size is exact; mtime is our estimate until the cache entry expires.
                fallback = old or Attrs(stat.S_IFREG | 0o644, 0, 1, 0, 0, mtime_ns, mtime_ns, mtime_ns)
                attrs = replace(fallback, size=size, mtime_ns=mtime_ns, ctime_ns=mtime_ns)
            elif isinstance(source, bytes):
                self.content.put((path, attrs.size, attrs.mtime_ns), source)
            file.base = attrs
            self.conflicted.discard(os.fsdecode(path))
            self._cache_all_names(ino, path, attrs)
            self.inodes.set_attrs(ino, attrs)

    @staticmethod
    def _applied(file: OpenFile, times, pending_mode) -> None:
        """The recorded ``times``/``pending_mode`` reached the remote (newer ones stay)."""
        if file.pending_times == times:
            file.pending_times = None
        if file.pending_mode == pending_mode:
            file.pending_mode = None

    def _conflict(self, ino: int, file: OpenFile, path: bytes, kept: bytes) -> None:
        """A push found the VM's file changed since the mount saw it: the VM's version stays
        (re-read at the next look), ours is at ``kept``. The buffer is no longer pending (its
        content is safe there); its base stays, so a later push of it conflicts again."""
        log.warning("conflict: %s was changed in the VM since this mount read it; the VM's version "
                    "stays, the local version was saved as %s", os.fsdecode(path), os.fsdecode(kept))
        self.conflicts.append(Conflict(os.fsdecode(path), os.fsdecode(kept), time.time()))
        self.conflicted.add(os.fsdecode(path))
        file.pending_times = file.pending_mode = None  # they went with the conflict copy
        self.cache.invalidate(path)  # drops the directory's listing too: the copy shows up in it
        self.cache.dir_changed(parent_of(path))

    def _peek(self, path: bytes) -> tuple[bool, Attrs | None]:
        """What the caches say of ``path`` without a call (for the write-back port)."""
        attrs = self.cache.attrs(path)
        if attrs is not None:
            return True, attrs
        return (True, None) if self.cache.is_absent(path) else (False, None)

    def _landed(self, final: dict[bytes, Attrs | None], trimmed: list[bytes], shown: dict[bytes, int]) -> None:
        """A push was acknowledged: paths that left the overlay show the VM's attrs now, with
        the ctime the mount showed (``shown``; see ``MetaCache.keep_ctime``). A watcher report
        on its way may have seen the VM before this push (a name the push renamed away still
        there): it is older than the mount's view of every path it left."""
        for path in trimmed:
            self.cache.settled(path)
            attrs = final.get(path)
            if attrs is not None:
                if path in shown:
                    self.cache.keep_ctime(path, attrs, shown[path])
                self.cache.added(path, attrs)
            elif path in final:  # removed there, or a conflict left the VM's version
                self.cache.invalidate(path)

    def _lost_a_link(self, ino: int) -> None:
        """``ino`` just lost a name (unlink, or a rename over it). Names it keeps (other hard
        links) show a changed nlink and ctime: they are re-read from the VM at their next stat."""
        if ino not in self.inodes:
            return
        node = self.inodes.get(ino)
        if node.last_attrs is not None:
            node.last_attrs = replace(node.last_attrs, nlink=max(node.last_attrs.nlink - 1, 0))
        for parent, name in node.links:
            try:
                self._refresh_name(self.inodes.child_path(parent, name))
            except FsError:  # a directory above that name is gone
                pass

    def _other_names_lost_a_link(self, remote_ino: int) -> None:
        """Every cached name of ``remote_ino`` shows a new nlink and ctime: forgotten, to be
        re-read at the next stat; in write-back mode the overlay already has the new attrs of
        the names it holds (no call, and their directories' listings stay)."""
        for path in self.cache.names_of(remote_ino):
            self._refresh_name(path)

    def _refresh_name(self, path: bytes) -> None:
        """``path``'s cached attrs are stale: take the overlay's (write-back), else forget them."""
        decided, attrs = self.remote.decided(path) if self.write_back else (False, None)
        if not decided:
            self.cache.invalidate(path)
        elif attrs is not None:
            self.cache.added(path, attrs)
        else:  # the name itself is the one going
            self.cache.removed(path, is_dir=False)

    def _cache_all_names(self, ino: int, path: bytes, attrs: Attrs) -> None:
        """``path`` (and every other known name of a hard-linked ``ino``) now has ``attrs``."""
        self.cache.added(path, attrs)
        node = self.inodes.get(ino)
        for parent, name in node.links[1:]:
            try:
                self.cache.added(self.inodes.child_path(parent, name), attrs)
            except FsError:  # a directory above that name is gone
                pass

    def _drop_file(self, ino: int, file: OpenFile) -> None:
        """Forget ``file``'s shared state; unsent data goes to a rescue file (caller holds lock)."""
        del self._files[ino]
        if file.buffer is None:
            return
        node = self.inodes.get(ino) if ino in self.inodes else None
        if file.buffer.dirty and node is not None and not node.unlinked:
            path = self.inodes.path(ino)
            if file.buffer.refused is not None:  # its writer got EFBIG: the VM keeps the old file
                log.info("discarded the new content of %s (a change went past the size limit)",
                         path.decode("utf-8", "replace"))
            elif file.buffer.broken is not None:  # its writer got the errno; the content is incomplete
                log.warning("dropped the incomplete new content of %s (a write failed in the local spool: %s)",
                            path.decode("utf-8", "replace"), os.strerror(file.buffer.broken))
            else:
                try:
                    saved = files.rescue(file, self.rescue_dir, path)
                except OSError as exc:
                    log.error("could not save unsent data of %s: %s", path.decode("utf-8", "replace"), exc)
                else:
                    self.rescued.append(saved)
                    log.error("unsent data of %s saved to %s", path.decode("utf-8", "replace"), saved)
        file.buffer.close()


def _not_state_xattr(name: bytes) -> None:
    if name == STATE_XATTR:
        raise FsError(errno.EPERM, "user.arkerfs.state is answered by the mount; it cannot be set")


def _user_xattr(name: bytes) -> bytes:
    if not name.startswith(b"user."):
        raise FsError(errno.ENOTSUP, "only user.* extended attributes are supported")
    return name
