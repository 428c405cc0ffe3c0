"""Through a real mount: what a local disk would show, at once, after the mount's own changes;
and a change refused past the size cap never replaces the VM's file. The VM's truth is always
read through the API, never through the mount."""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import subprocess
import tempfile
import time

import pytest

from arkerfs.protocol import CLIENT_MAX_FILE_BYTES as LIMIT
from arkerfs.server.control import ServerProcess
from tests.conftest import TEST_KEY, WRITE_MODES
from tests.mountutil import mounted


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


OLD = b"old content\n"


# -- (3) EFBIG: the VM keeps its old file ----------------------------------------------------------
def test_cp_of_a_file_past_the_cap_leaves_the_vm_file_unchanged(m, api, tmp_path):
    """``cp`` over an existing file from a 100,100,000-byte source: cp fails with EFBIG and the VM
    (and the mount) still hold the old file, not the first 100 MB of the new one."""
    src = str(tmp_path / "src")
    with open(src, "wb") as f:  # sparse: no 100 MB on the local disk
        f.write(b"NEW!")
        f.truncate(100_100_000)
    write(m.p("dst"), OLD)
    # default cp: writes the data, then extends with ftruncate (refused);
    # --sparse=never: writes every zero through the handle until a write is refused
    for cp in (["cp", src, m.p("dst")], ["cp", "--sparse=never", src, m.p("dst")]):
        done = subprocess.run(cp, capture_output=True, text=True, timeout=300)
        assert done.returncode == 1 and "File too large" in done.stderr, (cp, done.stderr)
        assert api.read_file(m.vm_id, "/home/user/dst") == OLD, cp
        assert read(m.p("dst")) == OLD and os.stat(m.p("dst")).st_size == len(OLD), cp
    write(m.p("dst"), b"fresh")  # the refusal ended with the handle
    assert api.read_file(m.vm_id, "/home/user/dst") == b"fresh"


@contextlib.contextmanager
def opened(path: str, flags: int):
    """An fd the test closes itself (asserting close's errno); closed anyway if the test fails,
    so the mount can still be unmounted."""
    fd = os.open(path, flags)
    try:
        yield fd
    except BaseException:
        with contextlib.suppress(OSError):
            os.close(fd)
        raise


def test_a_truncate_past_the_cap_makes_close_fail_and_publishes_nothing(m, api):
    write(m.p("f"), OLD)
    # ftruncate on the handle that wrote
    with opened(m.p("f"), os.O_WRONLY | os.O_TRUNC) as fd:
        os.write(fd, b"new")
        assert errno_of(os.ftruncate, fd, LIMIT + 1) == errno.EFBIG
        os.write(fd, b" more")  # the handle keeps working...
        os.fchmod(fd, 0o600)  # metadata changes still reach the VM
        assert errno_of(os.fsync, fd) == errno.EFBIG  # ...but its content is never uploaded
        assert errno_of(os.close, fd) == errno.EFBIG
    assert api.read_file(m.vm_id, "/home/user/f") == OLD
    assert api.sh(m.vm_id, "stat -c %a /home/user/f") == "600\n"
    assert read(m.p("f")) == OLD
    # truncate by path while a handle holds unsent writes
    with opened(m.p("f"), os.O_RDWR) as fd:
        os.pwrite(fd, b"NEW", 0)
        assert errno_of(os.truncate, m.p("f"), LIMIT + 1) == errno.EFBIG
        assert errno_of(os.close, fd) == errno.EFBIG
    assert api.read_file(m.vm_id, "/home/user/f") == OLD
    assert read(m.p("f")) == OLD


# -- (6) the mount's own changes, at once ----------------------------------------------------------
def vm_stat(api, vm_id, name: str) -> tuple[int, int]:
    """(nlink, ctime in ns) of /home/user/NAME in the VM."""
    nlink, ctime = api.sh(vm_id, f"stat -c '%h %.9Z' /home/user/{name}").split()
    sec, frac = ctime.split(".")
    return int(nlink), int(sec) * 10**9 + int(frac)


def test_a_hard_link_replaced_by_rename_shows_its_new_nlink_and_ctime_at_once(m, api):
    write(m.p("a"), b"a\n")
    write(m.p("b"), b"b\n")
    os.link(m.p("b"), m.p("c"))
    before = os.stat(m.p("c"))
    assert before.st_nlink == 2
    time.sleep(0.05)  # let the VM's clock move past the link's ctime
    os.rename(m.p("a"), m.p("b"))
    after = os.stat(m.p("c"))
    assert (after.st_nlink, after.st_ctime_ns) == vm_stat(api, m.vm_id, "c")
    assert after.st_nlink == 1 and after.st_ctime_ns > before.st_ctime_ns
    assert read(m.p("c")) == b"b\n" and read(m.p("b")) == b"a\n"


def test_ftruncate_through_a_handle_moves_ctime_at_once(m):
    write(m.p("f"), b"hello")
    before = os.stat(m.p("f"))
    time.sleep(0.05)
    fd = os.open(m.p("f"), os.O_RDWR)
    try:
        os.ftruncate(fd, 2)
        during = os.fstat(fd)
        assert during.st_size == 2
        assert during.st_ctime_ns > before.st_ctime_ns and during.st_mtime_ns > before.st_mtime_ns
    finally:
        os.close(fd)
    assert os.stat(m.p("f")).st_ctime_ns >= during.st_ctime_ns


def test_mknod_of_a_regular_file_creates_an_empty_file(m, api):
    os.mknod(m.p("n"), stat.S_IFREG | 0o640)
    os.mknod(m.p("plain"), 0o600)  # no type bits: a regular file too
    st = os.stat(m.p("n"))
    assert stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o640 and st.st_size == 0
    assert api.sh(m.vm_id, "cd /home/user && stat -c '%F %a %s' n plain") == \
        "regular empty file 640 0\nregular empty file 600 0\n"
    assert errno_of(os.mknod, m.p("n"), stat.S_IFREG | 0o644) == errno.EEXIST
    write(m.p("n"), b"data")  # an ordinary file from then on
    assert api.read_file(m.vm_id, "/home/user/n") == b"data"


def xattr_answers(path: str) -> dict:
    return {
        "get missing user.*": errno_of(os.getxattr, path, "user.missing"),
        "remove missing user.*": errno_of(os.removexattr, path, "user.missing"),
        "get security.*": errno_of(os.getxattr, path, "security.missing"),
        "remove trusted.*": errno_of(os.removexattr, path, "trusted.missing"),
        "set trusted.*": errno_of(os.setxattr, path, "trusted.x", b"1"),
        "list": os.listxattr(path),
    }


EXPECTED_XATTRS = {
    "get missing user.*": errno.ENODATA,
    "remove missing user.*": errno.ENODATA,
    "get security.*": errno.ENOTSUP,
    "remove trusted.*": errno.ENOTSUP,
    "set trusted.*": errno.ENOTSUP,
    "list": [],
}


def test_xattr_errnos_through_the_mount(m):
    write(m.p("f"), b"x")
    os.mkdir(m.p("d"))
    for path in (m.p("f"), m.p("d")):
        assert xattr_answers(path) == EXPECTED_XATTRS


@contextlib.contextmanager
def server_on_ramfs():
    """A local server whose VMs live on ramfs, a filesystem that stores no user xattrs."""
    top = tempfile.mkdtemp(prefix="arkerfs-ramfs-")
    subprocess.run(["mount", "-t", "ramfs", "-o", "mode=0700", "ramfs", top], check=True)
    try:
        proc = ServerProcess(data_dir=os.path.join(top, "data"), api_key=TEST_KEY,
                             log_path=os.path.join(top, "server.log"))
        proc.start()
        try:
            yield proc
        finally:
            proc.stop()
    finally:
        subprocess.run(["umount", top], check=True)
        os.rmdir(top)


@pytest.fixture(scope="module")
def ramfs_server():
    with server_on_ramfs() as server:
        yield server


@pytest.mark.parametrize("mode", list(WRITE_MODES))
def test_xattr_errnos_where_the_vm_filesystem_stores_none(ramfs_server, mode):
    """Same answers as anywhere (a missing user.* name is ENODATA, listing is empty); only a
    setxattr of a user.* name says ENOTSUP, since it cannot be stored there (write-back: xattr
    changes are applied at once, so the errno comes from the VM too)."""
    with mounted(ramfs_server, *WRITE_MODES[mode]) as m:
        write(m.p("f"), b"x")
        assert xattr_answers(m.p("f")) == EXPECTED_XATTRS
        assert errno_of(os.setxattr, m.p("f"), "user.k", b"v") == errno.ENOTSUP
