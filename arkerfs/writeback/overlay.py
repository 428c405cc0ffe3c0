"""What the mount has changed that the VM does not have yet: the pending overlay.

Every read path of the write-back port (``lstat``, ``list_dir``, ``readlink``, ``open_read``)
asks the overlay before the VM, so the mount shows its own pending changes at once, after any
cache expires and after the last handle closes, until the push is acknowledged.

Per path the overlay holds the node as it will be once pushed (``Attrs``) or ``None`` for a
name that is gone, and where its bytes come from: a journal spool file (new content) or the VM
path it still has there (a pending rename or link of a file whose content is already in the
VM). Directories the mount created are *fresh*: nothing under them exists in the VM, so they
are listed from the overlay alone. Each path remembers the last change (``seq``) that touched
it; ``trim(seq)`` drops what the VM has acknowledged. Pure bookkeeping: no I/O, no awaits.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, replace

from arkerfs.fs.cache import name_of, parent_of
from arkerfs.fs.model import Attrs, Entry


@dataclass(frozen=True, slots=True)
class Spooled:
    """New content of a path: a journal spool file of ``size`` bytes."""

    file: str
    size: int


class Overlay:
    def __init__(self) -> None:
        self.nodes: dict[bytes, Attrs | None] = {}
        self.content: dict[bytes, Spooled] = {}
        self.origin: dict[bytes, bytes] = {}  # path -> VM path holding its (unchanged) content
        self.fresh: set[bytes] = set()  # directories created here
        self._made: dict[bytes, int] = {}  # fresh directory -> seq of its mkdir
        self._seq: dict[bytes, int] = {}
        self._children: defaultdict[bytes, set[bytes]] = defaultdict(set)

    # == reading ===============================================================================
    def __contains__(self, path: bytes) -> bool:
        return path in self.nodes

    def __len__(self) -> int:
        return len(self.nodes)

    def known(self, path: bytes) -> tuple[bool, Attrs | None]:
        """(True, attrs-or-None) when the overlay decides what ``path`` is; (False, None) when
        the VM does. A name under a removed or fresh directory is decided (absent) here."""
        if path in self.nodes:
            return True, self.nodes[path]
        parent = path
        while parent:
            parent = parent_of(parent)
            if parent in self.nodes and (self.nodes[parent] is None or parent in self.fresh):
                return True, None
        return False, None

    def children(self, directory: bytes) -> list[tuple[bytes, Attrs | None]]:
        """(name, attrs-or-None) of every pending name directly in ``directory``."""
        return [(name, self.nodes[directory + b"/" + name]) for name in sorted(self._children.get(directory, ()))]

    def merged(self, directory: bytes, entries: list[Entry]) -> list[Entry]:
        """The VM's listing of ``directory`` with the pending changes in it applied."""
        pending = dict(self.children(directory))
        if not pending:
            return entries
        out = [e for e in entries if e.name not in pending]
        out += [Entry(name, attrs) for name, attrs in pending.items() if attrs is not None]
        return out

    def has_children(self, directory: bytes) -> bool:
        """Whether a pending change is about a name directly in ``directory``."""
        return bool(self._children.get(directory))

    def seq_of(self, path: bytes) -> int | None:
        return self._seq.get(path)

    # == recording =============================================================================
    def put(self, path: bytes, attrs: Attrs, seq: int, *, fresh_dir: bool = False) -> None:
        self._set(path, attrs, seq)
        if fresh_dir:
            self.fresh.add(path)
            self._made[path] = seq

    def write(self, path: bytes, attrs: Attrs, spooled: Spooled, seq: int) -> None:
        self._set(path, attrs, seq)
        self.content[path] = spooled
        self.origin.pop(path, None)

    def links_here(self, attrs: Attrs) -> int:
        """How many names of the (multiply linked) file ``attrs`` the overlay holds."""
        return sum(1 for a in self.nodes.values() if a is not None and a.remote_ino == attrs.remote_ino)

    def remove(self, path: bytes, seq: int) -> None:
        gone = self.nodes.get(path)
        if gone is not None and gone.nlink > 1 and not gone.is_dir:  # its other names lose a link
            for other, a in list(self.nodes.items()):
                if a is not None and other != path and a.remote_ino == gone.remote_ino:
                    self._set(other, replace(a, nlink=a.nlink - 1), seq)  # shown until this lands
        self._set(path, None, seq)
        self.content.pop(path, None)
        self.origin.pop(path, None)
        self.fresh.discard(path)
        self._made.pop(path, None)

    def move(self, old: bytes, new: bytes, attrs: Attrs, seq: int) -> None:
        """A file (never a directory: those are renamed through a barrier) moved ``old`` → ``new``."""
        spooled, origin = self.content.pop(old, None), self.origin.pop(old, None)
        if spooled is None and origin is None and old not in self.fresh:
            origin = old  # its content is in the VM, under the old name until the push
        self.nodes.pop(old, None)  # not a lost link: the file keeps its count under the new name
        self.remove(old, seq)
        if new in self.nodes:
            self.remove(new, seq)  # replaced: its other names (if any) lose a link
        self._set(new, attrs, seq)
        self.content.pop(new, None)
        self.origin.pop(new, None)
        if spooled is not None:
            self.content[new] = spooled
        elif origin is not None:
            self.origin[new] = origin

    def link(self, existing: bytes, new: bytes, attrs: Attrs, seq: int) -> None:
        """``attrs``: the file's, its link count already counting ``new``; every other name
        the overlay holds of it shows the new count too."""
        for other, a in list(self.nodes.items()):
            if a is not None and a.remote_ino == attrs.remote_ino and not a.is_dir:
                self._set(other, replace(a, nlink=attrs.nlink, ctime_ns=attrs.ctime_ns), seq)
        self._set(existing, attrs, seq)
        self._set(new, attrs, seq)
        if existing in self.content:
            self.content[new] = self.content[existing]
        else:
            self.origin[new] = self.origin.get(existing, existing)

    # == a push landed ========================================================================
    # A name still pending may read bytes the VM now has under another name: content written
    # and pushed (its spool file goes with the acknowledgement) then renamed again here, or a
    # name renamed twice (git: tmp_pack → .tmp-pack → pack-*.pack) whose first rename landed.

    def sources_landed(self, landed: list[tuple[str, bytes, bytes | str]]) -> None:
        """The VM applied these changes, in order: ``("write", path, spool file)`` (its bytes
        are at ``path`` there now, and the spool file goes) and ``("rename", old, new)``. Each
        name showing those bytes reads them where the VM has them. One pass over the overlay
        per batch, whatever its size (a tar of thousands of files lands in a few batches)."""
        if not landed:
            return
        by_spool: defaultdict[str, list[bytes]] = defaultdict(list)
        for name, spooled in self.content.items():
            by_spool[spooled.file].append(name)
        by_origin: defaultdict[bytes, set[bytes]] = defaultdict(set)
        for name, origin in self.origin.items():
            by_origin[origin].add(name)
        for op, a, b in landed:
            if op == "write":
                for name in by_spool.pop(b, []):
                    del self.content[name]
                    if name != a:
                        self.origin[name] = a
                        by_origin[a].add(name)
            else:  # rename a -> b
                moved = by_origin.pop(a, set())
                for name in moved:
                    self.origin[name] = b
                by_origin[b] |= moved

    def retitle(self, path: bytes, attrs: Attrs, seq: int) -> None:
        """New attrs for ``path`` (chmod, utimens), content unchanged."""
        self._set(path, attrs, seq)

    def trim(self, acknowledged: int) -> list[bytes]:
        """Forget every path whose last change is at or before ``acknowledged``; returns them.
        A fresh directory whose mkdir is acknowledged exists in the VM now: its listing comes
        from the VM (with what is still pending in it) from then on."""
        for path in [p for p, s in self._made.items() if s <= acknowledged]:
            del self._made[path]
            self.fresh.discard(path)
        done = [p for p, s in self._seq.items() if s <= acknowledged]
        for path in done:
            del self._seq[path]
            self.nodes.pop(path, None)
            self.content.pop(path, None)
            self.origin.pop(path, None)
            self.fresh.discard(path)
            siblings = self._children.get(parent_of(path))
            if siblings is not None:
                siblings.discard(name_of(path))
                if not siblings:
                    del self._children[parent_of(path)]
        return done

    def _set(self, path: bytes, attrs: Attrs | None, seq: int) -> None:
        self.nodes[path] = attrs
        self._seq[path] = max(seq, self._seq.get(path, 0))
        self._children[parent_of(path)].add(name_of(path))
