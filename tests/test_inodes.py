"""InodeTable invariants: paths by walking parents, lookup counts, purge rules, hard links."""

from __future__ import annotations

import errno
import stat

import pytest

from arkerfs.fs.errors import FsError
from arkerfs.fs.inodes import ROOT_INODE, InodeTable
from arkerfs.fs.model import Attrs

ROOT = b"/home/user"


def attrs(kind=stat.S_IFREG, nlink=1, remote_ino=0):
    return Attrs(kind | 0o644, 0, nlink, 0, 0, 0, 0, 0, remote_ino=remote_ino)


DIR = stat.S_IFDIR


def test_paths_follow_a_directory_rename():
    t = InodeTable(ROOT)
    d = t.learn(ROOT_INODE, b"d", attrs(DIR))
    t.ref(d)
    f = t.learn(d, b"f", attrs())
    t.ref(f)
    assert t.path(f) == b"/home/user/d/f"
    t.rename(ROOT_INODE, b"d", ROOT_INODE, b"e")
    assert t.path(f) == b"/home/user/e/f"  # one record changed, the child follows
    assert t.child(ROOT_INODE, b"d") is None and t.child(ROOT_INODE, b"e") == d


def test_same_name_same_inode_and_lookup_counts_purge_at_zero():
    t = InodeTable(ROOT)
    a = t.learn(ROOT_INODE, b"a", attrs())
    t.ref(a)
    assert t.learn(ROOT_INODE, b"a", attrs()) == a
    t.ref(a)
    t.forget(a, 1)
    assert a in t
    t.forget(a, 1)
    assert a not in t and t.child(ROOT_INODE, b"a") is None
    b = t.learn(ROOT_INODE, b"a", attrs())
    assert b > a  # numbers are never reused


def test_refused_entry_is_released_and_root_is_never_purged():
    t = InodeTable(ROOT)
    a = t.learn(ROOT_INODE, b"a", attrs())
    t.release_if_unused(a)
    assert a not in t
    t.forget(ROOT_INODE, 5)
    assert ROOT_INODE in t and t.path(ROOT_INODE) == ROOT


def test_parent_outlives_its_known_children():
    t = InodeTable(ROOT)
    d = t.learn(ROOT_INODE, b"d", attrs(DIR))
    t.ref(d)
    f = t.learn(d, b"f", attrs())
    t.ref(f)
    t.forget(d, 1)
    assert d in t  # f's path still needs it
    t.forget(f, 1)
    assert d not in t and f not in t and len(t) == 1


def test_unlink_while_open_keeps_the_inode_until_close_and_forget():
    t = InodeTable(ROOT)
    f = t.learn(ROOT_INODE, b"f", attrs())
    t.ref(f)
    t.opened(f)
    t.unlink(ROOT_INODE, b"f")
    assert f in t and t.get(f).unlinked
    with pytest.raises(FsError) as e:
        t.path(f)
    assert e.value.errno == errno.ENOENT
    t.forget(f, 1)
    assert f in t
    t.closed(f)
    assert f not in t


def test_rename_over_existing_detaches_the_target():
    t = InodeTable(ROOT)
    a = t.learn(ROOT_INODE, b"a", attrs())
    b = t.learn(ROOT_INODE, b"b", attrs())
    t.ref(a)
    t.ref(b)
    t.rename(ROOT_INODE, b"a", ROOT_INODE, b"b")
    assert t.child(ROOT_INODE, b"b") == a
    assert t.get(b).unlinked


def test_exchange_swaps_names():
    t = InodeTable(ROOT)
    a = t.learn(ROOT_INODE, b"a", attrs())
    b = t.learn(ROOT_INODE, b"b", attrs(DIR))
    t.ref(a)
    t.ref(b)
    t.exchange(ROOT_INODE, b"a", ROOT_INODE, b"b")
    assert t.path(a) == ROOT + b"/b" and t.path(b) == ROOT + b"/a"


def test_hard_links_share_an_inode():
    t = InodeTable(ROOT)
    a = t.learn(ROOT_INODE, b"a", attrs(nlink=2, remote_ino=77))
    t.ref(a)
    b = t.learn(ROOT_INODE, b"b", attrs(nlink=2, remote_ino=77))
    assert a == b
    t.ref(b)
    t.unlink(ROOT_INODE, b"a")
    assert t.path(a) == ROOT + b"/b"
    lone = t.learn(ROOT_INODE, b"c", attrs(nlink=1, remote_ino=78))
    assert lone != a


def test_type_change_gets_a_fresh_inode():
    t = InodeTable(ROOT)
    a = t.learn(ROOT_INODE, b"x", attrs())
    t.ref(a)
    d = t.learn(ROOT_INODE, b"x", attrs(DIR))
    assert d != a and t.get(a).unlinked


def test_forget_all_leaves_only_the_root():
    t = InodeTable(ROOT)
    for name in (b"a", b"b"):
        t.ref(t.learn(ROOT_INODE, name, attrs()))
    t.forget_all()
    assert len(t) == 1 and t.child(ROOT_INODE, b"a") is None
