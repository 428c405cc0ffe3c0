"""The inode table: our own inode numbers for the remote's path-named nodes.

Each inode records the names it is known by as ``(parent_ino, name)`` links, and a reverse index
maps every link back to its inode, so a path is built by walking parents and renaming a
directory changes one record (its descendants follow automatically).

Numbers come from a monotonic counter and are never reused while the daemon lives. A remote
inode number is used only to group hard links: a regular file with ``nlink > 1`` whose remote
inode we already know maps to the same local inode, so ``st_ino`` and ``nlink`` agree.

Lookup counts follow the kernel protocol (pyfuse3 ``Operations`` docstrings): ``ref`` after every
successful lookup-like reply, ``forget`` from the kernel's FORGET. A record is purged only when
nobody needs it any more: no kernel lookups, no open handles and no known children (a child's
path needs its parent). The root is pinned and never purged.

Concurrency contract: everything here is synchronous and never awaits, so each method is atomic
with respect to the trio tasks that serve FUSE requests. Callers that await the remote before
touching the table (the normal order) must do all of get-or-create + ``ref`` with no await in
between, or a ``forget`` could purge the record under them.
"""

from __future__ import annotations

import errno
import logging
from dataclasses import dataclass, field

from arkerfs.fs.errors import FsError
from arkerfs.fs.model import Attrs

log = logging.getLogger(__name__)

ROOT_INODE = 1  # the kernel's fixed number for the mount root (pyfuse3.ROOT_INODE)

Link = tuple[int, bytes]


@dataclass(eq=False)
class Inode:
    ino: int
    links: list[Link]  # every (parent, name) this inode is known by; [0] builds the path
    is_dir: bool
    remote_ino: int = 0
    lookups: int = 0  # the kernel's lookup count
    opens: int = 0  # open file/dir handles
    children: int = 0  # links in the index whose parent is this inode
    last_attrs: Attrs | None = None  # what we last reported: serves fstat after unlink
    extra: dict = field(default_factory=dict)  # per-inode state owned by higher layers

    @property
    def unlinked(self) -> bool:
        return not self.links and self.ino != ROOT_INODE


class InodeTable:
    """ino <-> (parent, name) records with lookup counts; see the module docstring."""

    def __init__(self, root_path: bytes, root_attrs: Attrs | None = None) -> None:
        self.root_path = root_path
        self._next = ROOT_INODE + 1
        self._by_ino: dict[int, Inode] = {}
        self._by_link: dict[Link, int] = {}
        self._by_remote: dict[int, int] = {}  # remote inode -> local inode, hard-linked files only
        root = Inode(ROOT_INODE, [], True, lookups=1)  # pinned: the kernel never looks it up
        root.last_attrs = root_attrs
        self._by_ino[ROOT_INODE] = root

    # -- queries --------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._by_ino)

    def numbers(self) -> list[int]:
        return list(self._by_ino)

    def __contains__(self, ino: int) -> bool:
        return ino in self._by_ino

    def get(self, ino: int) -> Inode:
        try:
            return self._by_ino[ino]
        except KeyError:
            raise FsError(errno.ENOENT, f"unknown inode {ino}") from None

    def child(self, parent: int, name: bytes) -> int | None:
        return self._by_link.get((parent, name))

    def path(self, ino: int) -> bytes:
        """The remote path of ``ino`` (its first link), built by walking parents. ENOENT if the
        inode, or a directory above it, has been unlinked."""
        parts: list[bytes] = []
        node = self.get(ino)
        while node.ino != ROOT_INODE:
            if not node.links:
                raise FsError(errno.ENOENT, f"inode {ino} is unlinked")
            parent, name = node.links[0]
            parts.append(name)
            node = self.get(parent)
        return b"/".join([self.root_path, *reversed(parts)])

    def names_in(self, parent: int) -> list[bytes]:
        """The names known in directory ``parent``. Scans the table."""
        return [name for (p, name) in list(self._by_link) if p == parent]

    def child_path(self, parent: int, name: bytes) -> bytes:
        return self.path(parent) + b"/" + name

    # -- creating records -----------------------------------------------------------------
    def learn(self, parent: int, name: bytes, attrs: Attrs) -> int:
        """Get or create the inode for ``parent/name`` as the remote just described it.

        Does not change the lookup count: call ``ref`` once the reply is accepted, or
        ``release_if_unused`` if it was not. A name whose node changed between directory and
        non-directory gets a fresh inode (the old one is detached), and a hard-linked file maps
        to the inode already known for its remote inode number.
        """
        self.get(parent)
        link = (parent, name)
        ino = self._by_link.get(link)
        if ino is not None:
            node = self._by_ino[ino]
            if node.is_dir == attrs.is_dir:
                self._remember(node, attrs)
                return ino
            self.unlink(parent, name)
        shared = self._hard_link_target(attrs)
        if shared is not None:
            node = self._by_ino[shared]
            self._add_link(node, link)
            self._remember(node, attrs)
            return shared
        node = Inode(self._next, [], attrs.is_dir)
        self._next += 1
        self._by_ino[node.ino] = node
        self._add_link(node, link)
        self._remember(node, attrs)
        return node.ino

    def ref(self, ino: int, n: int = 1) -> None:
        self.get(ino).lookups += n

    def release_if_unused(self, ino: int) -> None:
        """Purge ``ino`` if it is unused (e.g. a readdir entry the kernel refused)."""
        node = self._by_ino.get(ino)
        if node is not None:
            self._maybe_purge(node)

    def set_attrs(self, ino: int, attrs: Attrs) -> None:
        node = self._by_ino.get(ino)
        if node is not None:
            self._remember(node, attrs)

    # -- kernel bookkeeping ---------------------------------------------------------------
    def forget(self, ino: int, n: int) -> None:
        """The kernel dropped ``n`` lookups. Never raises (FORGET has no reply)."""
        node = self._by_ino.get(ino)
        if node is None or ino == ROOT_INODE:
            if node is None:
                log.error("forget of unknown inode %d", ino)
            return
        if n > node.lookups:
            log.error("forget(%d, %d) exceeds lookup count %d", ino, n, node.lookups)
            n = node.lookups
        node.lookups -= n
        self._maybe_purge(node)

    def opened(self, ino: int) -> None:
        self.get(ino).opens += 1

    def closed(self, ino: int) -> None:
        node = self._by_ino.get(ino)
        if node is None:
            log.error("close of unknown inode %d", ino)
            return
        node.opens -= 1
        self._maybe_purge(node)

    def forget_all(self) -> None:
        """At unmount: the kernel does not forget everything, so empty the table ourselves."""
        root = self._by_ino[ROOT_INODE]
        self._by_ino = {ROOT_INODE: root}
        self._by_link.clear()
        self._by_remote.clear()
        root.children = 0

    # -- namespace changes ----------------------------------------------------------------
    def unlink(self, parent: int, name: bytes) -> int | None:
        """Remove the link ``parent/name``; the inode lives on while it is looked up or open."""
        ino = self._by_link.get((parent, name))
        if ino is None:
            return None
        node = self._by_ino[ino]
        self._drop_link(node, (parent, name))
        self._maybe_purge(node)
        return ino

    def rename(self, old_parent: int, old_name: bytes, new_parent: int, new_name: bytes) -> None:
        """Move one link; a node previously at the target loses that link."""
        self.get(new_parent)
        ino = self._by_link.get((old_parent, old_name))
        if (old_parent, old_name) == (new_parent, new_name):
            return
        self.unlink(new_parent, new_name)
        if ino is None:
            return
        node = self._by_ino[ino]
        self._drop_link(node, (old_parent, old_name))
        self._add_link(node, (new_parent, new_name))

    def exchange(self, parent_a: int, name_a: bytes, parent_b: int, name_b: bytes) -> None:
        """Swap two links atomically (RENAME_EXCHANGE)."""
        ino_a = self._by_link.get((parent_a, name_a))
        ino_b = self._by_link.get((parent_b, name_b))
        for ino, link in ((ino_a, (parent_a, name_a)), (ino_b, (parent_b, name_b))):
            if ino is not None:
                self._drop_link(self._by_ino[ino], link)
        if ino_a is not None:
            self._add_link(self._by_ino[ino_a], (parent_b, name_b))
        if ino_b is not None:
            self._add_link(self._by_ino[ino_b], (parent_a, name_a))

    # -- internals ------------------------------------------------------------------------
    def _hard_link_target(self, attrs: Attrs) -> int | None:
        if attrs.is_dir or attrs.nlink <= 1 or not attrs.remote_ino:
            return None
        return self._by_remote.get(attrs.remote_ino)

    def _remember(self, node: Inode, attrs: Attrs) -> None:
        node.last_attrs = attrs
        if node.remote_ino != attrs.remote_ino:
            if self._by_remote.get(node.remote_ino) == node.ino:
                del self._by_remote[node.remote_ino]
            node.remote_ino = attrs.remote_ino
        if attrs.remote_ino and not attrs.is_dir and attrs.nlink > 1:
            self._by_remote.setdefault(attrs.remote_ino, node.ino)

    def _add_link(self, node: Inode, link: Link) -> None:
        node.links.append(link)
        self._by_link[link] = node.ino
        self._by_ino[link[0]].children += 1

    def _drop_link(self, node: Inode, link: Link) -> None:
        node.links.remove(link)
        del self._by_link[link]
        parent = self._by_ino[link[0]]
        parent.children -= 1
        self._maybe_purge(parent)

    def _maybe_purge(self, node: Inode) -> None:
        if node.ino == ROOT_INODE or node.lookups or node.opens or node.children:
            return
        if self._by_ino.get(node.ino) is not node:
            return
        del self._by_ino[node.ino]
        if self._by_remote.get(node.remote_ino) == node.ino:
            del self._by_remote[node.remote_ino]
        for link in list(node.links):
            self._drop_link(node, link)
