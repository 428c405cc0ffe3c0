"""What a change watcher's report does to the mount: exactly the affected entries change.

A reported path's cached attributes become the VM's (a name gone is marked absent, and what was
cached below a directory that went or was replaced is forgotten); a file's cached contents are
dropped when its version moved; a directory reported with its names (``listed``) loses the
cached names it no longer has. What the mount itself pushed comes back with the attributes the
mount already holds, and changes nothing (no call, no kernel invalidation): the mount's own
changes are never taken for foreign ones.

In write-back mode the pending overlay still decides every path it holds: the cache shows the
overlay's view of those (as after any refresh, see ``VFS._refresh_name``), and a change the VM
made under a pending one is met by the push's compare-and-swap, never overwritten.

Every change bumps the cache generation, so a fill that was in flight when the VM changed
never stores what it read before the change.

A report is a picture taken at some moment of its run; the mount may have changed a path after
that moment and before the report arrived (``changed_since`` the generation when the run was
sent). Such a path keeps the mount's view, whatever the report says: a late report never turns
back the mount's own change (no ctime comparison can order them: the mount's attrs after a
rename carry the source's ctime, a directory's mtime is an estimate). The price: a change the
VM made to that same path in that same window shows up at the path's next change or expiry.

Returned: what the kernel must forget (``KernelNotes``), for the mount to tell it
(``pyfuse3.invalidate_entry_async``/``invalidate_inode``); nothing here touches the kernel.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from arkerfs.fs.cache import name_of, parent_of
from arkerfs.fs.inodes import ROOT_INODE
from arkerfs.fs.model import Attrs
from arkerfs.fs.vmwatch import ChangeReport


@dataclass
class KernelNotes:
    entries: list[tuple[int, bytes]] = field(default_factory=list)  # (parent inode, name) to look up again
    inodes: list[int] = field(default_factory=list)  # attributes and cached data to drop
    everything: bool = False  # the report could not say what changed: every inode

    def __bool__(self) -> bool:
        return bool(self.entries or self.inodes or self.everything)


def apply(vfs, report: ChangeReport, sent_at: int) -> KernelNotes:
    """Apply ``report`` to ``vfs``'s caches; ``sent_at`` is the cache generation when its run
    was sent. Returns what the kernel must forget."""
    notes = KernelNotes()
    if report.flush:
        vfs.cache.forget_entries()
        notes.everything = True
        return notes
    root = vfs.inodes.root_path
    with vfs.cache.reporting():
        for path, attrs in report.changed.items():
            if path == root or path.startswith(root + b"/"):
                _one(vfs, path, attrs, notes, sent_at)
        for directory, names in report.listed.items():
            for name in _cached_names(vfs, directory) - names:
                _one(vfs, directory + b"/" + name, None, notes, sent_at)
    return notes


def _one(vfs, path: bytes, attrs: Attrs | None, notes: KernelNotes, sent_at: int) -> None:
    cache = vfs.cache
    if _mount_decides(vfs, path, sent_at) or (
            vfs.write_back and attrs is not None and attrs.is_dir and vfs.remote.overlay.has_children(path)):
        return  # a directory with pending entries shows the mount's view of its mtime and links
    cached, was_absent = cache.attrs(path), cache.is_absent(path)
    if attrs is not None:
        attrs = cache.as_shown(path, attrs)  # a version the mount pushed keeps the ctime it showed
    if attrs is None:
        if cached is None and was_absent:
            return
        cache.removed(path, is_dir=cached is None or cached.is_dir)
        vfs.content.forget(path)
    else:
        if cached is not None and _same(cached, attrs):
            return  # what the mount already shows: its own change coming back
        if cached is not None and cached.is_dir and (not attrs.is_dir or cached.remote_ino != attrs.remote_ino):
            cache.removed(path)  # another directory (or none) is there now: forget what was below
        cache.added(path, attrs)
        if not attrs.is_dir:
            vfs.content.forget(path)
            if attrs.nlink > 1:  # every name of a hard-linked file shows the same attrs
                for other in cache.names_of(attrs.remote_ino) - {path}:
                    if not _mount_decides(vfs, other, sent_at):
                        cache.added(other, attrs)
    ino = _ino_of(vfs.inodes, path)
    if ino is not None:
        notes.inodes.append(ino)
    # The kernel's entry goes only when the name now means something else: gone, new where it
    # was absent, another inode. Never for a directory that is still the same one: the kernel
    # would unhash it, and a process inside it would lose its working directory (getcwd ENOENT).
    if attrs is None or was_absent or (cached is not None and (
            cached.remote_ino != attrs.remote_ino or cached.is_dir != attrs.is_dir)):
        parent = _ino_of(vfs.inodes, parent_of(path))
        if parent is not None:
            notes.entries.append((parent, name_of(path)))


def _mount_decides(vfs, path: bytes, sent_at: int) -> bool:
    """Whether the mount's own view of ``path`` stands whatever the report says: the mount
    changed it while the report was coming, or (write-back) the overlay holds a change of it
    until its push lands (``_landed`` then shows the VM's)."""
    return vfs.cache.changed_since(path, sent_at) or (vfs.write_back and vfs.remote.decided(path)[0])


def _same(a: Attrs, b: Attrs) -> bool:
    """Equal but for the access time (reading a file moves it; that is no change)."""
    return replace(a, atime_ns=0) == replace(b, atime_ns=0)


def _cached_names(vfs, directory: bytes) -> set[bytes]:
    """Names in ``directory`` the mount's caches or kernel-facing inode table know of."""
    names = set(vfs.cache.cached_names(directory))
    ino = _ino_of(vfs.inodes, directory)
    if ino is not None:
        names.update(vfs.inodes.names_in(ino))
    return names


def _ino_of(inodes, path: bytes) -> int | None:
    """The inode the kernel knows ``path`` by, if it knows it (no call)."""
    root = inodes.root_path
    if path == root:
        return ROOT_INODE
    if not path.startswith(root + b"/"):
        return None
    ino: int | None = ROOT_INODE
    for name in path[len(root) + 1:].split(b"/"):
        ino = inodes.child(ino, name)
        if ino is None:
            return None
    return ino
