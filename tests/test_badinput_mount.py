"""Bad input through a real mount: files over the size limit, a full local spool disk, and names
that are not UTF-8. Remote truth is always checked through the API, never through the mount."""

from __future__ import annotations

import contextlib
import errno
import os
import re
import subprocess
import tempfile

import pytest

from arkerfs import exitcodes
from arkerfs.mount import runtime
from arkerfs.protocol import CLIENT_MAX_FILE_BYTES as LIMIT
from tests.conftest import WRITE_MODES
from tests.mountutil import mounted

MB = 1024 * 1024


def errno_of(fn, *args):
    with pytest.raises(OSError) as info:
        fn(*args)
    return info.value.errno


def write(path, data: bytes, mode: str = "wb") -> None:
    with open(path, mode) as f:
        f.write(data)


def read(path) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def close_errno(fd) -> int:
    """close(fd); its errno, 0 if it succeeded (a handle that got EFBIG fails with EFBIG)."""
    try:
        os.close(fd)
    except OSError as exc:
        return exc.errno
    return 0


# -- files over 100 MB ------------------------------------------------------------------------
def test_efbig_exactly_at_the_write_that_crosses_the_limit(m, api):
    write(m.p("big"), b"old")
    fd = os.open(m.p("big"), os.O_RDWR)
    try:
        assert os.pwrite(fd, b"x" * 10, LIMIT - 10) == 10  # ends exactly at the limit: allowed
        assert os.fstat(fd).st_size == LIMIT
        assert errno_of(os.pwrite, fd, b"y", LIMIT) == errno.EFBIG  # one byte over
        assert os.fstat(fd).st_size == LIMIT  # the refused write changed nothing
        assert errno_of(os.ftruncate, fd, LIMIT + 1) == errno.EFBIG
        assert errno_of(os.ftruncate, fd, 10 * LIMIT) == errno.EFBIG
        os.ftruncate(fd, 3)  # back to the old bytes: readable, but the refused content is never uploaded
        assert os.pread(fd, 10, 0) == b"old"
    finally:
        closed = close_errno(fd)
    assert closed == errno.EFBIG
    assert api.read_file(m.vm_id, "/home/user/big") == b"old"


def test_efbig_for_appends_and_sparse_writes_past_the_limit(m, api):
    write(m.p("log"), b"start\n")
    fd = os.open(m.p("log"), os.O_WRONLY | os.O_APPEND)
    try:
        os.ftruncate(fd, LIMIT - 1)  # sparse in the spool: no 100 MB anywhere
        assert os.write(fd, b"z") == 1  # reaches the limit exactly
        assert errno_of(os.write, fd, b"z") == errno.EFBIG
        os.ftruncate(fd, 6)
    finally:
        closed = close_errno(fd)
    assert closed == errno.EFBIG
    assert api.read_file(m.vm_id, "/home/user/log") == b"start\n"

    fd = os.open(m.p("sparse"), os.O_WRONLY | os.O_CREAT, 0o644)
    try:  # a seek far past the limit, then a write
        os.lseek(fd, 3 * LIMIT, os.SEEK_SET)
        assert errno_of(os.write, fd, b"end") == errno.EFBIG
        assert errno_of(os.pwrite, fd, b"end", LIMIT) == errno.EFBIG
        assert os.fstat(fd).st_size == 0
    finally:
        closed = close_errno(fd)
    assert closed == errno.EFBIG
    assert api.sh(m.vm_id, "stat -c %s /home/user/sparse") == "0\n"  # created, never filled
    # the shell tools see the same limit
    done = subprocess.run(["truncate", "-s", str(LIMIT + 1), m.p("log")], capture_output=True, text=True)
    assert done.returncode != 0 and "too large" in done.stderr.lower()
    assert api.read_file(m.vm_id, "/home/user/log") == b"start\n"


# -- a full local spool disk --------------------------------------------------------------------
@contextlib.contextmanager
def small_tmpfs(size: str = "2m"):
    path = tempfile.mkdtemp(prefix="arkerfs-spool-")
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", path], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", path], check=True)
        os.rmdir(path)
        assert runtime.mount_entry(path) is None


@pytest.mark.parametrize("mode", list(WRITE_MODES))
def test_full_spool_disk_gives_enospc_and_keeps_the_remote_intact(server, api, mode):
    """The write that needs spool space gets ENOSPC (a buffer moves to the spool past 4 MiB),
    close() reports ENOSPC again and uploads nothing: the remote keeps its old content. The
    mount keeps working for files that fit in memory, and again for big files once space is
    back (a new open starts from the remote's content). Write-back holds an open file's writes
    in the same spool until close() records them in the journal."""
    vm = api.fork()
    old = b"old content\n" * 1000
    api.write_file(vm, "/home/user/doc", old)
    with small_tmpfs() as spool, mounted(server, *WRITE_MODES[mode], "--spool-dir", os.path.join(spool, "s"),
                                         vm_id=vm) as m:
        fd = os.open(m.p("doc"), os.O_WRONLY | os.O_TRUNC)
        written, failure = 0, None
        chunk = b"n" * (256 * 1024)
        while written < 6 * MB:
            try:
                written += os.write(fd, chunk)
            except OSError as exc:
                failure = exc.errno
                break
        assert failure == errno.ENOSPC, failure
        assert 3 * MB < written <= 4 * MB + len(chunk)  # in memory up to 4 MiB, then the spool
        assert errno_of(os.write, fd, b"more") == errno.ENOSPC  # the buffer stays refused
        assert errno_of(os.close, fd) == errno.ENOSPC
        assert api.read_file(vm, "/home/user/doc") == old  # nothing half-written reached the VM
        assert read(m.p("doc")) == old
        # small files still work (memory buffers), and so do namespace operations
        write(m.p("small"), b"fits")
        os.rename(m.p("small"), m.p("small2"))
        assert read(m.p("small2")) == b"fits"
        assert api.read_file(vm, "/home/user/small2") == b"fits"
        # no leftovers of the failed buffer hold the space
        assert os.statvfs(spool).f_bfree * os.statvfs(spool).f_bsize > 1.5 * MB
        m.allow_log(r"WARNING arkerfs\.fs\.vfs: dropped the incomplete new content of /home/user/doc ")
    assert api.read_file(vm, "/home/user/doc") == old


@pytest.mark.parametrize("mode", list(WRITE_MODES))
def test_big_write_works_again_once_the_spool_has_room(server, api, mode):
    vm = api.fork()
    with small_tmpfs("2m") as spool, mounted(server, *WRITE_MODES[mode], "--spool-dir", os.path.join(spool, "s"),
                                             vm_id=vm) as m:
        filler = os.path.join(spool, "filler")
        write(filler, b"f" * (1900 * 1024))  # leaves ~100 KiB
        fd = os.open(m.p("late"), os.O_WRONLY | os.O_CREAT, 0o644)
        os.write(fd, b"a" * (4 * MB))
        assert errno_of(os.write, fd, b"b" * MB) == errno.ENOSPC
        assert errno_of(os.close, fd) == errno.ENOSPC
        os.unlink(filler)
        # A tmpfs of 2 MiB cannot hold 5 MiB either; grow it (remount) instead.
        subprocess.run(["mount", "-o", "remount,size=16m", spool], check=True)
        data = os.urandom(5 * MB)
        write(m.p("late"), data)
        assert api.read_file(vm, "/home/user/late") == data
        m.allow_log(r"WARNING arkerfs\.fs\.vfs: dropped the incomplete new content of /home/user/late ")


def test_a_full_journal_disk_gives_enospc_at_close_and_keeps_the_remote_intact(server, api):
    """Write-back: close() copies the content into the journal; when the local disk holding the
    journal cannot take it (and nothing pending could be pushed to make room), close() fails
    with ENOSPC and nothing reaches the VM. Smaller files still fit and are pushed. (The journal
    leaves the disk's last 64 MiB free: an 80 MiB disk takes about 16 MiB.)"""
    vm = api.fork()
    old = b"old content\n" * 1000
    api.write_file(vm, "/home/user/doc", old)
    new = b"n" * (20 * MB)
    with small_tmpfs("80m") as state, mounted(server, "--write-back", vm_id=vm, state_home=state) as m:
        fd = os.open(m.p("doc"), os.O_WRONLY | os.O_TRUNC)
        try:
            os.write(fd, new)  # the write buffer's spool has room; the journal's disk has not
        finally:
            closed = close_errno(fd)
        assert closed == errno.ENOSPC
        assert api.read_file(vm, "/home/user/doc") == old
        assert read(m.p("doc")) == old
        write(m.p("small"), b"fits")
        assert api.read_file(vm, "/home/user/small") == b"fits"
        # as in write-through, the refused content is not dropped: it is a rescue file, named in
        # the log, and the daemon's exit status says so
        (saved,) = re.findall(r"ERROR arkerfs\.fs\.vfs: unsent data of /home/user/doc saved to (\S+)$", m.log(), re.M)
        assert read(saved) == new
        m.allow_log(r"ERROR arkerfs\.fs\.vfs: unsent data of /home/user/doc saved to ")
        m.expect_exit = exitcodes.PENDING
    assert api.read_file(vm, "/home/user/doc") == old


# -- names that are not UTF-8 --------------------------------------------------------------------
@pytest.mark.parametrize("mode", list(WRITE_MODES))
def test_non_utf8_names_list_read_and_write_without_corrupting_the_listing(server, api, mode):
    vm = api.fork()
    api.sh(vm, "mkdir /home/user/d && cd /home/user/d && echo plain > a.txt && echo latin1 > $'caf\\xe9' "
               "&& echo ff > $'\\xff\\xfe' && echo utf8 > 'é.txt' && mkdir $'sub\\x80'")
    with mounted(server, *WRITE_MODES[mode], vm_id=vm) as m:
        d = os.fsencode(m.p("d"))
        names = sorted(os.listdir(d))
        assert names == sorted([b"a.txt", b"caf\xe9", b"\xff\xfe", "é.txt".encode(), b"sub\x80"])
        assert read(d + b"/caf\xe9") == b"latin1\n"
        assert read(d + b"/\xff\xfe") == b"ff\n"
        assert read(d + "/é.txt".encode()) == b"utf8\n"
        # write, create, rename and remove names that are not UTF-8
        write(d + b"/caf\xe9", b"changed")
        write(d + b"/sub\x80/new\xa0", b"created")
        os.rename(d + b"/\xff\xfe", d + b"/moved\xfd")
        os.unlink(d + b"/a.txt")
        remote = api.run(vm, "cd /home/user/d && cat $'caf\\xe9' && echo && cat $'sub\\x80/new\\xa0' && echo "
                             "&& ls -1")
        assert remote.exit_code == 0
        assert remote.stdout.split(b"\n") == [b"changed", b"created", *sorted(
            [b"caf\xe9", "é.txt".encode(), b"moved\xfd", b"sub\x80"], key=lambda n: n.decode("latin-1")), b""]
        listing = subprocess.run(["ls", "-1", d], capture_output=True).stdout.split(b"\n")
        assert sorted(n for n in listing if n) == sorted([b"caf\xe9", "é.txt".encode(), b"moved\xfd", b"sub\x80"])
        assert sorted(os.listdir(d + b"/sub\x80")) == [b"new\xa0"]
