"""Counterexamples found by the model-based test (``tests/test_model.py``), as plain tests on a
real mount. Each compares the mount with what a local directory does (the reference), shrunk to
the operations that matter; the docstring says what was wrong and where it was fixed."""

from __future__ import annotations

import errno
import os
import stat
import time

import pytest

from tests.conftest import WRITE_MODES
from tests.mountutil import mounted


@pytest.fixture(params=list(WRITE_MODES))
def m(server, request):
    with mounted(server, *WRITE_MODES[request.param]) as mount:
        yield mount


def errno_of(fn, *args):
    with pytest.raises(OSError) as info:
        fn(*args)
    return info.value.errno


def write(path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)


def read(path) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def test_a_name_over_255_bytes_is_enametoolong_not_enoent(m, tmp_path):
    """Lookups of a 256-byte name answered ENOENT (from the parent's cached listing): the
    kernel passes FUSE names up to 1024 bytes. Fixed in ``VFS.lookup``."""
    long = "y" * 256
    write(m.p("a"), b"")
    os.listdir(m.path)  # the root's listing is cached: the name is "known absent"
    write(str(tmp_path / "a"), b"")
    for root in (str(tmp_path), m.path):  # the local reference, then the mount
        assert errno_of(os.open, os.path.join(root, long), os.O_RDONLY) == errno.ENAMETOOLONG
        assert errno_of(os.open, os.path.join(root, long), os.O_WRONLY | os.O_APPEND) == errno.ENAMETOOLONG
        assert errno_of(os.stat, os.path.join(root, long)) == errno.ENAMETOOLONG
        assert errno_of(os.link, os.path.join(root, "a"), os.path.join(root, long)) == errno.ENAMETOOLONG
        assert errno_of(os.mkdir, os.path.join(root, "é" * 128)) == errno.ENAMETOOLONG
    name255 = "x" * 255
    write(m.p(name255), b"ok")
    assert read(m.p(name255)) == b"ok"


def test_open_rdonly_with_o_trunc_truncates(m, api):
    """``open(f, O_RDONLY|O_TRUNC)`` truncates on Linux; the mount ignored the O_TRUNC of a
    read-only open (no write buffer). Fixed in ``VFS.open``."""
    write(m.p("f"), b"\0")
    fd = os.open(m.p("f"), os.O_RDONLY | os.O_APPEND | os.O_TRUNC)
    assert os.fstat(fd).st_size == 0
    assert os.read(fd, 10) == b""
    os.close(fd)
    assert read(m.p("f")) == b""
    assert api.read_file(m.vm_id, "/home/user/f") == b""


def test_open_rdonly_with_o_trunc_while_a_writer_has_pending_data(m, api):
    """The same, with another handle's unsent data in the write buffer: the truncate must
    reach the VM even though only the read-only handle is closed afterwards."""
    write(m.p("g"), b"old")
    writer = os.open(m.p("g"), os.O_WRONLY)
    os.write(writer, b"pending")
    fd = os.open(m.p("g"), os.O_RDONLY | os.O_TRUNC)
    assert os.fstat(fd).st_size == 0
    os.close(writer)
    assert api.read_file(m.vm_id, "/home/user/g") == b""
    os.close(fd)
    assert read(m.p("g")) == b""


def test_writing_a_hard_linked_file_keeps_the_links(m, api):
    """Uploads replaced the file's inode (sync writes are temp file + rename), so writing one
    name of a hard-linked file split the link in the VM: the other name kept the old bytes and
    both had nlink 1. Fixed: ``VFS._push`` asks ``RemoteFS.write_file(in_place=True)`` for a
    file with nlink > 1, which copies the staged bytes into the existing inode."""
    write(m.p("a"), b"one")
    os.link(m.p("a"), m.p("b"))
    with open(m.p("a"), "ab") as f:
        f.write(b"+two")
    assert read(m.p("b")) == b"one+two"
    assert api.sh(m.vm_id, "cd /home/user && stat -c '%h %s' a b && cat b") == "2 7\n2 7\none+two"
    assert api.sh(m.vm_id, "cd /home/user && [ a -ef b ] && echo same") == "same\n"
    with open(m.p("b"), "r+b") as f:  # through the other name, at an offset
        f.seek(3)
        f.write(b"-")
    assert api.read_file(m.vm_id, "/home/user/a") == b"one-two"
    os.truncate(m.p("b"), 2)
    with open(m.p("a"), "wb") as f:  # O_TRUNC + write: still the same inode
        f.write(b"\xff" * 70_000)
    assert api.sh(m.vm_id, "cd /home/user && [ a -ef b ] && stat -c '%h %s' b") == "2 70000\n"
    assert os.stat(m.p("a")).st_ino == os.stat(m.p("b")).st_ino and os.stat(m.p("b")).st_nlink == 2


def test_rename_a_symlink_over_its_own_target(m, api, tmp_path):
    """``rename(l, f)`` where ``l -> f`` replaces ``f`` with the link (rename(2)); ``mv`` in the
    VM refused with "are the same file" and the mount answered EIO (logged at ERROR). Fixed in
    ``shell.rename`` (rename(2) through python3 for exactly that case)."""
    os.mkdir(m.p("w"))
    for root in (str(tmp_path), m.p("w")):  # the local reference, then the mount
        write(os.path.join(root, "f"), b"data")
        os.symlink("f", os.path.join(root, "l"))
        os.rename(os.path.join(root, "l"), os.path.join(root, "f"))
        assert sorted(os.listdir(root)) == ["f"]
        assert os.readlink(os.path.join(root, "f")) == "f"
        assert errno_of(os.stat, os.path.join(root, "f")) == errno.ELOOP
    assert api.sh(m.vm_id, "cd /home/user/w && ls && readlink f") == "f\nf\n"
    # and through a hard link of the target
    write(m.p("t"), b"t")
    os.link(m.p("t"), m.p("t2"))
    os.symlink("t", m.p("s"))
    os.rename(m.p("s"), m.p("t2"))
    assert os.readlink(m.p("t2")) == "t" and read(m.p("t")) == b"t"
    assert api.sh(m.vm_id, "cd /home/user && readlink t2 && stat -c %h t") == "t\n1\n"


def test_chmod_and_utime_show_through_every_name_of_a_hard_link(m):
    """After utime/chmod/truncate through one name of a hard-linked file, a lookup of its other
    name (once the kernel's 1 s attr timeout passed) answered from that name's cached attrs:
    the old mtime/mode/size, until the cache TTL. Fixed: ``VFS.setattr`` and ``VFS._push``
    update the cached attrs of every known name (``VFS._cache_all_names``)."""
    write(m.p("a"), b"12345")
    os.link(m.p("a"), m.p("b"))
    os.listdir(m.path)  # both names now cached from the listing
    os.utime(m.p("a"), ns=(1_000_000_000_123, 2_000_000_000_456))
    os.chmod(m.p("a"), 0o640)
    os.truncate(m.p("a"), 2)
    time.sleep(1.3)  # past the kernel's attr/entry timeout, within the mount's cache TTL
    st = os.stat(m.p("b"))
    assert st.st_mtime_ns != 2_000_000_000_456  # the truncate (after the utime) moved it on
    assert stat.S_IMODE(st.st_mode) == 0o640 and st.st_size == 2
    os.utime(m.p("b"), ns=(1_000_000_000_123, 3_000_000_000_789))
    time.sleep(1.3)
    assert os.stat(m.p("a")).st_mtime_ns == 3_000_000_000_789


def test_nlink_of_every_name_after_another_hard_link(m, tmp_path):
    """A third hard link left the first link's cached attrs at nlink 2; its next lookup made
    the kernel show nlink 2 for every name (here of a symlink: ``os.link`` hard-links the link
    itself). Fixed: ``VFS.link`` updates the cached attrs of every known name."""
    os.mkdir(m.p("w"))
    for root in (str(tmp_path), m.p("w")):  # the local reference, then the mount
        os.symlink("a", os.path.join(root, "s"))
        os.link(os.path.join(root, "s"), os.path.join(root, "x"))
        os.link(os.path.join(root, "s"), os.path.join(root, "y"))
        os.rename(os.path.join(root, "s"), os.path.join(root, "z"))
        write(os.path.join(root, "f"), b"")
        os.link(os.path.join(root, "f"), os.path.join(root, "g"))
        os.link(os.path.join(root, "g"), os.path.join(root, "h"))
    time.sleep(1.3)  # past the kernel's attr timeout, within the mount's cache TTL
    for name in "xyzfgh":
        assert os.lstat(m.p("w", name)).st_nlink == os.lstat(tmp_path / name).st_nlink == 3, name


def test_rename_onto_another_name_of_the_same_file_changes_nothing(m, tmp_path):
    """rename(2) between two hard links of one file does nothing; the mount moved its own
    record of the old name onto the new one (``VFS.rename`` now returns early)."""
    os.mkdir(m.p("w"))
    for root in (str(tmp_path), m.p("w")):
        write(os.path.join(root, "a"), b"x")
        os.link(os.path.join(root, "a"), os.path.join(root, "b"))
        os.listdir(root)
        os.rename(os.path.join(root, "a"), os.path.join(root, "b"))
        assert sorted(os.listdir(root)) == ["a", "b"]
        assert os.stat(os.path.join(root, "a")).st_nlink == 2
        assert read(os.path.join(root, "a")) == b"x"
