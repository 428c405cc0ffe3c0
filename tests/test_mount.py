"""Real kernel mounts: POSIX behaviour, round-trip costs, and remote truth checked through the API."""

from __future__ import annotations

import errno
import os
import stat
import subprocess
import time

import pytest

from arkerfs import exitcodes
from tests.conftest import NO_WATCH, WRITE_BACK_ONLY, WRITE_MODES, WRITE_THROUGH_ONLY
from tests.mountutil import mounted

MB = 1024 * 1024


def errno_of(fn, *args):
    with pytest.raises(OSError) as info:
        fn(*args)
    return info.value.errno


def sh(*cmd: str) -> str:
    return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout


def write(path: str, data: bytes, mode: str = "wb") -> None:
    with open(path, mode) as f:
        f.write(data)


def read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


@pytest.mark.parametrize("mode", list(WRITE_MODES))
def test_ls_l_costs_one_listing_and_entry_stats_cost_nothing(server, api, control, mode):
    vm = api.fork()
    api.sh(vm, "mkdir /home/user/many && cd /home/user/many && for i in $(seq 30); do echo $i > f$i; done")
    with mounted(server, *WRITE_MODES[mode], "--no-watch", vm_id=vm) as m:
        os.stat(m.p("many"))  # the lookup of the directory itself is not what we measure
        control.reset_stats()
        listing = sh("ls", "-l", m.p("many"))
        assert listing.count("\n") == 31  # "total" + 30 entries
        assert control.nonzero_calls() == {"run": 1}
        for i in range(1, 31):
            assert os.stat(m.p("many", f"f{i}")).st_size == len(f"{i}\n")
        assert control.nonzero_calls() == {"run": 1}


@NO_WATCH
def test_create_write_read_append_overwrite_truncate(m, api, control):
    f = m.p("notes.txt")
    control.reset_stats()
    write(f, b"hello\n")
    # write-through: create + one install run carrying the bytes at close (write-back: at most
    # two calls, pushed later)
    calls = control.nonzero_calls()
    assert calls == {"run": 2} or (m.write_back and sum(calls.values()) <= 2), calls
    assert read(f) == b"hello\n"
    assert api.read_file(m.vm_id, "/home/user/notes.txt") == b"hello\n"
    write(f, b"more\n", "ab")
    assert api.read_file(m.vm_id, "/home/user/notes.txt") == b"hello\nmore\n"
    write(f, b"new", "wb")  # O_TRUNC
    assert read(f) == b"new" and os.stat(f).st_size == 3
    with open(f, "r+b") as fh:  # rewrite the middle without truncating
        fh.seek(1)
        fh.write(b"E")
    assert api.read_file(m.vm_id, "/home/user/notes.txt") == b"nEw"
    control.reset_stats()
    with open(m.p("empty"), "w"):
        pass
    calls = control.nonzero_calls()  # the create run, no upload (write-back: at most that)
    assert calls == {"run": 1} or (m.write_back and calls == {}), calls
    assert api.sh(m.vm_id, "stat -c %s /home/user/empty") == "0\n"


def test_pending_writes_show_their_size(m):
    with open(m.p("growing"), "wb") as fh:
        fh.write(b"x" * 5000)
        fh.flush()
        assert os.stat(m.p("growing")).st_size == 5000
        assert os.fstat(fh.fileno()).st_size == 5000


def test_dd_seek_notrunc_truncate_and_sparse(m, api):
    f = m.p("blob")
    write(f, b"0123456789")
    sh("dd", "if=/dev/zero", f"of={f}", "bs=1", "seek=3", "count=2", "conv=notrunc", "status=none")
    assert read(f) == b"012\0\x0056789"
    sh("truncate", "-s", "4", f)
    assert read(f) == b"012\0"
    sh("truncate", "-s", "6", f)
    assert read(f) == b"012\0\0\0"
    with open(m.p("sparse"), "wb") as fh:
        fh.seek(100_000)
        fh.write(b"end")
    want = bytes(100_000) + b"end"
    assert read(m.p("sparse")) == want
    assert api.read_file(m.vm_id, "/home/user/sparse") == want
    assert api.read_file(m.vm_id, "/home/user/blob") == b"012\0\0\0"


@pytest.mark.parametrize("mode", list(WRITE_MODES))
def test_six_megabytes_byte_exact_both_ways(server, api, control, mode):
    vm = api.fork()
    down = os.urandom(6 * MB + 123)
    api.write_file(vm, "/home/user/down.bin", down)
    with mounted(server, *WRITE_MODES[mode], "--no-watch", vm_id=vm) as m:
        up = os.urandom(6 * MB)
        write(m.p("up.bin"), up)
        assert api.read_file(m.vm_id, "/home/user/up.bin") == up
        control.reset_stats()
        with open(m.p("down.bin"), "rb") as fh:
            fh.seek(5 * MB)
            assert fh.read(10) == down[5 * MB:5 * MB + 10]
            got = control.nonzero_calls()
            # served through the presigned URL by ranges, not downloaded whole first
            assert got.get("sync_read") == 1 and 1 <= got.get("presigned_get", 0) <= 2, got
            fh.seek(0)
            assert fh.read() == down


def test_namespace_operations(m, api):
    sh("mkdir", "-p", m.p("a/b/c"))
    write(m.p("a/b/c/f"), b"deep")
    assert api.sh(m.vm_id, "cat /home/user/a/b/c/f") == "deep"
    with pytest.raises(OSError) as e:
        os.rmdir(m.p("a/b"))
    assert e.value.errno == errno.ENOTEMPTY
    sh("rm", "-r", m.p("a/b"))
    assert os.listdir(m.p("a")) == []
    os.rmdir(m.p("a"))
    assert not os.path.exists(m.p("a"))
    # mv file over file
    write(m.p("x"), b"X")
    write(m.p("y"), b"Y")
    os.rename(m.p("x"), m.p("y"))
    assert read(m.p("y")) == b"X" and not os.path.exists(m.p("x"))
    # rename a directory, then use a child the kernel already knows
    os.mkdir(m.p("d1"))
    write(m.p("d1/child"), b"c")
    child_ino = os.stat(m.p("d1/child")).st_ino
    fd = os.open(m.p("d1/child"), os.O_RDONLY)
    os.rename(m.p("d1"), m.p("d2"))
    assert os.stat(m.p("d2/child")).st_ino == child_ino
    write(m.p("d2/child"), b"changed")
    assert api.sh(m.vm_id, "cat /home/user/d2/child") == "changed"
    os.close(fd)
    # hard link, symlink, readlink
    os.link(m.p("y"), m.p("y2"))
    assert os.stat(m.p("y")).st_nlink == 2 and os.stat(m.p("y")).st_ino == os.stat(m.p("y2")).st_ino
    os.symlink("y", m.p("ly"))
    assert os.readlink(m.p("ly")) == "y" and read(m.p("ly")) == b"X"
    assert api.sh(m.vm_id, "readlink /home/user/ly; stat -c %h /home/user/y2") == "y\n2\n"
    # chmod and ns timestamps (also on a symlink itself)
    os.chmod(m.p("y"), 0o751)
    assert stat.S_IMODE(os.stat(m.p("y")).st_mode) == 0o751
    sh("touch", "-d", "2021-02-03 04:05:06.123456789", m.p("y"))
    assert os.stat(m.p("y")).st_mtime_ns == 1612325106_123456789
    assert api.sh(m.vm_id, "stat -c '%a %.9Y' /home/user/y") == "751 1612325106.123456789\n"
    os.utime(m.p("ly"), ns=(1_000_000_000_111, 2_000_000_000_222), follow_symlinks=False)
    assert os.lstat(m.p("ly")).st_mtime_ns == 2_000_000_000_222
    assert api.sh(m.vm_id, "stat -c %.9Y /home/user/ly") == "2000.000000222\n"


def test_unlink_while_open(m, api):
    write(m.p("gone"), b"still here")
    reader = open(m.p("gone"), "rb")
    assert reader.read(5) == b"still"
    rw = open(m.p("tmpfile"), "w+b")
    rw.write(b"scratch")
    rw.flush()
    os.unlink(m.p("gone"))
    os.unlink(m.p("tmpfile"))
    assert not os.path.exists(m.p("gone"))
    assert reader.read() == b" here"
    rw.seek(0)
    assert rw.read() == b"scratch"
    rw.write(b" more")
    rw.close()
    reader.close()
    assert api.sh(m.vm_id, "ls /home/user") .split().count("tmpfile") == 0


def test_mkfifo_and_statfs(m, api):
    os.mkfifo(m.p("pipe"))
    assert stat.S_ISFIFO(os.stat(m.p("pipe")).st_mode)
    assert api.sh(m.vm_id, "stat -c %F /home/user/pipe") == "fifo\n"
    st = os.statvfs(m.path)
    assert st.f_blocks > 0 and st.f_bsize > 0 and st.f_namemax == 255
    assert "arkerfs:" in sh("df", m.path)


def test_xattrs(m, api):
    write(m.p("x"), b"")
    os.setxattr(m.p("x"), "user.color", b"blue")
    assert os.getxattr(m.p("x"), "user.color") == b"blue"
    assert "user.color" in os.listxattr(m.p("x"))
    assert api.sh(m.vm_id, "getfattr --only-values -n user.color /home/user/x 2>/dev/null || "
                           "python3 -c \"import os;print(os.getxattr('/home/user/x','user.color').decode(),end='')\"") \
        == "blue"
    os.removexattr(m.p("x"), "user.color")
    assert errno_of(os.getxattr, m.p("x"), "user.color") == errno.ENODATA
    assert errno_of(os.setxattr, m.p("x"), "trusted.t", b"v") == errno.ENOTSUP



def test_errnos(m, api):
    assert errno_of(os.open, m.p("missing"), os.O_RDONLY) == errno.ENOENT
    os.mkdir(m.p("dir"))
    write(m.p("dir/f"), b"1")
    assert errno_of(os.mkdir, m.p("dir")) == errno.EEXIST
    assert errno_of(os.rmdir, m.p("dir")) == errno.ENOTEMPTY
    assert errno_of(os.open, m.p("dir"), os.O_WRONLY) == errno.EISDIR
    assert errno_of(os.open, m.p("dir/f/x"), os.O_RDONLY) == errno.ENOTDIR
    assert errno_of(os.open, m.p("dir/f"), os.O_CREAT | os.O_EXCL | os.O_WRONLY) == errno.EEXIST


def test_efbig_at_the_limit_leaves_the_remote_unchanged(m, api, control):
    write(m.p("big"), b"old")
    fd = os.open(m.p("big"), os.O_RDWR)
    try:
        os.pwrite(fd, b"a" * 10, 99_999_995)  # ends at 100,000,005 bytes
    except OSError as exc:
        assert exc.errno == errno.EFBIG
    else:
        pytest.fail("a write past 100,000,000 bytes succeeded")
    assert errno_of(os.close, fd) == errno.EFBIG  # the refused content is never uploaded
    assert errno_of(os.truncate, m.p("big"), 100_000_001) == errno.EFBIG
    assert api.read_file(m.vm_id, "/home/user/big") == b"old"


@pytest.mark.parametrize("mode", list(WRITE_MODES))
def test_change_in_the_vm_is_visible_within_the_ttl(server, api, mode):
    with mounted(server, *WRITE_MODES[mode], "--cache-ttl", "1") as m:
        write(m.p("f"), b"v1")
        assert read(m.p("f")) == b"v1"
        api.sh(m.vm_id, "echo -n version-two > /home/user/f; touch /home/user/new")
        start = time.monotonic()
        while read(m.p("f")) != b"version-two" or not os.path.exists(m.p("new")):
            assert time.monotonic() - start < 1 + 1 + 1.5, "change not visible within ttl + kernel timeout"
            time.sleep(0.1)


@WRITE_THROUGH_ONLY
def test_upload_failure_fails_close_with_eio_and_keeps_the_data(m, api, control):
    m.allow_log(r"WARNING arkerfs\.(client|mount\.ops)")
    write(m.p("doc"), b"old")
    fd = os.open(m.p("doc"), os.O_WRONLY | os.O_TRUNC)
    os.write(fd, b"new content")
    spare = os.dup(fd)
    control.set_faults(fail_rate=1.0)
    assert errno_of(os.close, fd) == errno.EIO
    control.clear_faults()
    assert api.read_file(m.vm_id, "/home/user/doc") == b"old"
    os.close(spare)  # the buffer stayed dirty: this close pushes it
    assert api.read_file(m.vm_id, "/home/user/doc") == b"new content"


@WRITE_BACK_ONLY
def test_an_upload_failure_in_write_back_keeps_the_change_pending_until_it_goes(m, api, control):
    """close() returned: the data is in the journal; a failing VM only delays it."""
    m.allow_log(r"WARNING arkerfs\.(client|mount\.ops|writeback\.pusher)")
    write(m.p("doc"), b"old")
    api.read_file(m.vm_id, "/home/user/doc")  # pushed
    control.set_faults(fail_rate=1.0)
    write(m.p("doc"), b"new content")  # close() returns 0 at once
    assert read(m.p("doc")) == b"new content"
    assert os.getxattr(m.p("doc"), "user.arkerfs.state") in (b"pending", b"pushing")
    control.clear_faults()
    assert api.read_file(m.vm_id, "/home/user/doc") == b"new content"  # after `arkerfs sync`
    assert os.getxattr(m.p("doc"), "user.arkerfs.state") == b"clean"


@WRITE_THROUGH_ONLY
def test_data_a_failed_close_could_not_push_goes_to_a_rescue_file(m, api, control):
    m.allow_log(r"WARNING arkerfs\.(client|mount\.ops)")
    m.allow_log(r"ERROR arkerfs\.fs\.vfs: unsent data of /home/user/doc saved to ")
    m.expect_exit = exitcodes.PENDING  # the daemon reports the rescued file at unmount
    write(m.p("doc"), b"old")
    fd = os.open(m.p("doc"), os.O_WRONLY | os.O_TRUNC)
    os.write(fd, b"precious")
    control.set_faults(fail_rate=1.0)
    assert errno_of(os.close, fd) == errno.EIO
    rescue_dir = os.path.join(m.spool_dir, "rescue")
    deadline = time.monotonic() + 10
    while not (os.path.isdir(rescue_dir) and os.listdir(rescue_dir)):
        assert time.monotonic() < deadline, "no rescue file"
        time.sleep(0.05)
    control.clear_faults()
    (name,) = os.listdir(rescue_dir)
    assert read(os.path.join(rescue_dir, name)) == b"precious"
    assert api.read_file(m.vm_id, "/home/user/doc") == b"old"


def test_read_only_mount_refuses_changes(server, api):
    vm = api.fork()
    api.sh(vm, "echo data > /home/user/f")
    with mounted(server, "--read-only", vm_id=vm, key_file=True) as m:
        assert read(m.p("f")) == b"data\n"
        assert errno_of(open, m.p("f"), "wb") == errno.EROFS
        assert errno_of(os.mkdir, m.p("d")) == errno.EROFS
        assert errno_of(os.unlink, m.p("f")) == errno.EROFS


def test_files_look_owned_by_the_mounting_user_and_chown_is_refused(m):
    write(m.p("f"), b"")
    st = os.stat(m.p("f"))
    assert (st.st_uid, st.st_gid) == (os.getuid(), os.getgid())
    os.chown(m.p("f"), os.getuid(), os.getgid())  # a no-op is fine
    assert errno_of(os.chown, m.p("f"), 12345, 12345) == errno.EPERM


@pytest.mark.parametrize("mode", list(WRITE_MODES))
def test_show_remote_owner_passes_chown_through(server, api, mode):
    """chown goes to the VM, whose user is unprivileged: a change of owner is refused there
    (EPERM, as for any non-root user of a local disk) and nothing changes (write-back: chown is
    applied at once, after everything pending)."""
    with mounted(server, *WRITE_MODES[mode], "--show-remote-owner") as m:
        write(m.p("f"), b"")
        owner = api.sh(m.vm_id, "stat -c '%u %g' /home/user/f")
        remote_uid, remote_gid = map(int, owner.split())
        assert (os.stat(m.p("f")).st_uid, os.stat(m.p("f")).st_gid) == (remote_uid, remote_gid)
        os.chown(m.p("f"), remote_uid, remote_gid)
        # EPERM for an unprivileged user; EINVAL where that uid has no mapping in the VM's namespace
        assert errno_of(os.chown, m.p("f"), 12345, 23456) in (errno.EPERM, errno.EINVAL)
        assert api.sh(m.vm_id, "stat -c '%u %g' /home/user/f") == owner


def test_the_vms_user_is_unprivileged_so_a_read_only_directory_refuses_changes(m):
    """Even for root on this side: the VM's user has no capabilities, as on a real VM."""
    os.mkdir(m.p("ro"))
    write(m.p("ro", "kept"), b"x")
    os.chmod(m.p("ro"), 0o555)
    assert errno_of(os.mkdir, m.p("ro", "new")) == errno.EACCES
    assert errno_of(os.unlink, m.p("ro", "kept")) == errno.EACCES
    os.chmod(m.p("ro"), 0o755)
    os.unlink(m.p("ro", "kept"))
