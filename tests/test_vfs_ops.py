"""``mount.ops.Operations`` called directly (no kernel): readdir paging and lookup counting,
the error boundary, and the round trips the model spends, over a small in-memory remote."""

from __future__ import annotations

import errno
import stat

import pyfuse3
import pytest

from arkerfs.fs.errors import FsError
from arkerfs.fs.inodes import ROOT_INODE
from arkerfs.fs.model import Attrs, Entry
from arkerfs.fs.vfs import VFS, Options
from arkerfs.mount.ops import Operations

HOME = b"/home/user"


def file_attrs(size=1):
    return Attrs(stat.S_IFREG | 0o644, size, 1, 0, 0, 0, 1, 0)


DIR = Attrs(stat.S_IFDIR | 0o755, 4096, 2, 0, 0, 0, 1, 0)


class TreeRemote:
    """Just enough of RemoteFS: a fixed tree, with every call recorded."""

    def __init__(self, names):
        self.files = {HOME + b"/" + n: file_attrs() for n in names}
        self.calls = []

    async def list_dir(self, path):
        self.calls.append(("list_dir", path))
        prefix = path + b"/"
        return DIR, [Entry(p[len(prefix):], a) for p, a in self.files.items() if p.startswith(prefix)]

    async def lstat(self, path):
        self.calls.append(("lstat", path))
        if path == HOME:
            return DIR
        if path not in self.files:
            raise FsError(errno.ENOENT)
        return self.files[path]

    async def open_read(self, path):
        raise AssertionError("not used")

    async def unlink(self, path):
        self.calls.append(("unlink", path))
        raise RuntimeError("a bug in the remote layer")


class Ctx:
    uid, gid, pid, umask = 0, 0, 1, 0o022


@pytest.fixture
def ops(tmp_path):
    remote = TreeRemote([b"a", b"b", b"c", b"d"])
    return Operations(VFS(remote, HOME, str(tmp_path), Options(owner=(1000, 1000))))


async def test_readdir_pages_and_counts_only_accepted_entries(ops, monkeypatch):
    accepted = []

    def reply(token, name, attr, next_id):
        if len(accepted) == token:  # the "buffer" holds ``token`` entries
            return False
        accepted.append((name, attr.st_ino, next_id))
        return True

    monkeypatch.setattr(pyfuse3, "readdir_reply", reply)
    fh = await ops.opendir(ROOT_INODE, Ctx())
    await ops.readdir(fh, 0, 2)
    assert [(n, i) for n, _, i in accepted] == [(b"a", 1), (b"b", 2)]
    await ops.readdir(fh, 2, 10)
    assert [n for n, _, _ in accepted] == [b"a", b"b", b"c", b"d"]
    await ops.releasedir(fh)
    table = ops.vfs.inodes
    assert len(table) == 5  # root + four entries, each counted once
    assert ops.vfs.remote.calls == [("list_dir", HOME)]  # one listing for all pages
    attrs = await ops.getattr(accepted[0][1], Ctx())
    assert attrs.st_uid == 1000 and ops.vfs.remote.calls == [("list_dir", HOME)]
    await ops.forget([(ino, 1) for _, ino, _ in accepted])
    assert len(table) == 1


async def test_refused_entry_is_not_counted(ops, monkeypatch):
    monkeypatch.setattr(pyfuse3, "readdir_reply", lambda token, name, attr, next_id: False)
    fh = await ops.opendir(ROOT_INODE, Ctx())
    await ops.readdir(fh, 0, None)
    await ops.releasedir(fh)
    assert len(ops.vfs.inodes) == 1


async def test_negative_lookup_and_error_boundary(ops):
    entry = await ops.lookup(ROOT_INODE, b"zz", Ctx())
    assert entry.st_ino == 0 and entry.entry_timeout <= 1.0
    with pytest.raises(pyfuse3.FUSEError) as info:
        await ops.unlink(ROOT_INODE, b"a", Ctx())  # the remote raises a non-FsError
    assert info.value.errno == errno.EIO
    with pytest.raises(pyfuse3.FUSEError) as info:
        await ops.rename(ROOT_INODE, b"a", ROOT_INODE, b"b", 4, Ctx())
    assert info.value.errno == errno.EINVAL


async def test_lookup_twice_same_inode_and_cached(ops):
    first = await ops.lookup(ROOT_INODE, b"a", Ctx())
    second = await ops.lookup(ROOT_INODE, b"a", Ctx())
    assert first.st_ino == second.st_ino
    assert ops.vfs.remote.calls == [("lstat", HOME + b"/a")]
    await ops.forget([(first.st_ino, 2)])
    assert len(ops.vfs.inodes) == 1
