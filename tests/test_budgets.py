"""Round-trip budgets of everyday workloads through real write-through mounts (``--write-through``,
named: write-back is the default; its batch budgets are in test_writeback_mount.py), counted on
the server.

Every number here is exact: the calls a workload makes are deterministic once nothing expires
in the middle of it, so mounts whose measurement must not see an expiry use a long
``--cache-ttl`` and the tests about expiry sleep past a short one before measuring (the
measured part then runs far inside the next TTL period at zero latency).

What each budget pins (see ``arkerfs.fs.vfs``'s docstring for the rules):
- an expired entry is refreshed by ONE listing of its (already listed) directory, shared by
  every sibling and absent name, instead of one ``lstat`` each;
- a setattr that changes nothing we show costs nothing;
- a chmod/utimens made while data is pending rides on the upload's install run;
- a small content travels in its install run (the compare-and-swap that never overwrites a change
  made in the VM): a close costs that one run, where it was an upload plus, often, a mode run;
- a sequential read of a presigned file grows its ranged GETs (1, 2, 4, 8, 16 MiB).
"""

from __future__ import annotations

import errno
import os
import stat
import subprocess
import time

import pytest
import trio.testing

from tests.mountutil import mounted as mounted_in_the_default_mode

MB = 1024 * 1024
LONG_TTL = ("--cache-ttl", "600")  # nothing expires during a measurement


def mounted(server, *args, **kwargs):
    """Write-through mounts: these are its budgets (write-back's: tests/test_writeback_mount.py).
    No change watcher: its long poll would land in a count at a moment no test controls."""
    return mounted_in_the_default_mode(server, "--write-through", "--no-watch", *args, **kwargs)


def sh(*cmd: str, cwd: str | None = None) -> str:
    return subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=cwd).stdout


def make_tree(root: str, dirs: int = 2, files: int = 5) -> str:
    """A local tree of ``dirs`` directories of ``files`` small files each (distinct mtimes)."""
    tree = os.path.join(root, "tree")
    for d in range(dirs):
        os.makedirs(os.path.join(tree, f"d{d}"))
        for i in range(files):
            path = os.path.join(tree, f"d{d}", f"f{i}")
            with open(path, "wb") as f:
                f.write(os.urandom(300 + i))
            os.utime(path, ns=(1_600_000_000_000_000_000 + i, 1_500_000_000_000_000_000 + 1000 * d + i))
        os.utime(os.path.join(tree, f"d{d}"), ns=(1_600_000_000_000_000_000, 1_400_000_000_000_000_000 + d))
    os.utime(tree, ns=(1_600_000_000_000_000_000, 1_400_000_000_000_000_000))  # old: never "this second"
    return tree


def remote_tree(api, vm: str, top: str) -> str:
    """name, mode, size and mtime (s) of everything under /home/user/<top>, sorted."""
    return api.sh(vm, f"cd /home/user/{top} && find . -printf '%p %m %s %T@\\n' | sort")


def local_tree(tree: str) -> str:
    return sh("bash", "-c", "find . -printf '%p %m %s %T@\\n' | sort", cwd=tree)


# == metadata: listings instead of per-name lstat ==========================================
def test_ls_l_and_stat_of_every_entry_cost_one_listing(server, api, control):
    vm = api.fork()
    api.sh(vm, "mkdir /home/user/many && cd /home/user/many && for i in $(seq 100); do echo $i > f$i; done")
    with mounted(server, *LONG_TTL, vm_id=vm) as m:
        os.stat(m.p("many"))  # from the root's listing taken at mount time
        control.reset_stats()
        assert sh("ls", "-l", m.p("many")).count("\n") == 101
        for i in range(1, 101):
            assert os.stat(m.p("many", f"f{i}")).st_size == len(f"{i}\n")
        assert control.nonzero_calls() == {"run": 1}


def test_expired_siblings_and_absent_names_refresh_with_one_listing(server, api, control):
    vm = api.fork()
    api.sh(vm, "mkdir /home/user/many && cd /home/user/many && for i in $(seq 30); do echo $i > f$i; done")
    with mounted(server, "--cache-ttl", "2", vm_id=vm) as m:
        fd = os.open(m.p("many"), os.O_RDONLY | os.O_DIRECTORY)  # lookups relative to it: no root lookups
        try:
            assert len(os.listdir(fd)) == 30
            api.sh(vm, "echo changed-in-the-vm > /home/user/many/f1 && echo new > /home/user/many/g")
            time.sleep(2.5)  # our entries and the kernel's have expired
            control.reset_stats()
            sizes = [os.stat(f"f{i}", dir_fd=fd).st_size for i in range(1, 31)]
            for name in ("nope1", "nope2", ".f1.tmp"):
                with pytest.raises(FileNotFoundError):
                    os.stat(name, dir_fd=fd)
            assert os.stat("g", dir_fd=fd).st_size == 4  # appeared in the VM: seen after the TTL
            assert control.nonzero_calls() == {"run": 1}  # was 30 lstats + 3 negative lstats + 1
            assert sizes[0] == len("changed-in-the-vm\n") and sizes[1:] == [len(f"{i}\n") for i in range(2, 31)]
        finally:
            os.close(fd)


def test_a_listed_directory_replaced_in_the_vm_is_seen_after_the_ttl(server, api, control):
    vm = api.fork()
    api.sh(vm, "mkdir /home/user/d && touch /home/user/d/f")
    with mounted(server, "--cache-ttl", "2", vm_id=vm) as m:
        assert os.listdir(m.p("d")) == ["f"]
        api.sh(vm, "rm -r /home/user/d && echo file > /home/user/d")
        time.sleep(2.5)
        control.reset_stats()
        st = os.stat(m.p("d"))
        assert stat.S_ISREG(st.st_mode) and st.st_size == 5
        with pytest.raises(NotADirectoryError):
            os.stat(m.p("d", "f"))
        assert control.nonzero_calls() == {"run": 1}  # the root's refresh listing already shows d as a file


def test_no_op_setattr_costs_nothing(server, api, control):
    vm = api.fork()
    api.sh(vm, "printf 12345 > /home/user/f && chmod 640 /home/user/f && mkdir -m 750 /home/user/d")
    with mounted(server, *LONG_TTL, vm_id=vm) as m:
        f = m.p("f")
        st = os.stat(f)
        control.reset_stats()
        os.chown(f, os.getuid(), os.getgid())  # the owner we show (mapped to the mounting user)
        os.chown(f, -1, os.getgid())
        os.chmod(f, 0o640)
        os.chmod(m.p("d"), 0o750)
        os.truncate(f, 5)
        with open(f, "rb") as fh:
            os.fchmod(fh.fileno(), 0o640)
        assert control.nonzero_calls() == {}
        assert os.stat(f).st_mtime_ns == st.st_mtime_ns
        os.chmod(f, 0o600)  # a real change: one run
        assert control.nonzero_calls() == {"run": 1}
        assert api.sh(vm, "stat -c %a /home/user/f") == "600\n"


def test_chown_to_the_shown_remote_owner_costs_nothing(server, api, control):
    vm = api.fork()
    api.sh(vm, "echo x > /home/user/f")
    with mounted(server, "--show-remote-owner", *LONG_TTL, vm_id=vm) as m:
        st = os.stat(m.p("f"))
        control.reset_stats()
        os.chown(m.p("f"), st.st_uid, st.st_gid)
        os.lchown(m.p("f"), st.st_uid, -1)
        assert control.nonzero_calls() == {}


# == writes: one upload, follow-ups folded =================================================
def test_create_write_close_is_two_runs(server, api, control):
    with mounted(server, *LONG_TTL) as m:
        control.reset_stats()
        with open(m.p("new.txt"), "wb") as f:
            f.write(b"hello\n")
        assert control.nonzero_calls() == {"run": 2}  # create, then the install carrying the bytes
        assert api.read_file(m.vm_id, "/home/user/new.txt") == b"hello\n"


def test_tar_style_futimens_and_fchmod_before_close_fold_into_the_upload(server, api, control):
    """tar x: create 0600, write, futimens, fchown (no-op), fchmod 0644, close."""
    with mounted(server, *LONG_TTL) as m:
        control.reset_stats()
        fd = os.open(m.p("x.txt"), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, b"data\n")
            os.utime(fd, ns=(1_600_000_000_123_456_789, 1_500_000_000_987_654_321))
            os.fchown(fd, os.getuid(), os.getgid())
            os.fchmod(fd, 0o644)
            shown = os.fstat(fd)  # the kernel sees the new mode and times at once
            assert stat.S_IMODE(shown.st_mode) == 0o644 and shown.st_mtime_ns == 1_500_000_000_987_654_321
            assert control.nonzero_calls() == {"run": 1}  # only the create so far
        finally:
            os.close(fd)
        assert control.nonzero_calls() == {"run": 2}  # + ONE install run: bytes, mode and times
        assert api.sh(m.vm_id, "stat -c '%a %s %.9Y' /home/user/x.txt") == "644 5 1500000000.987654321\n"
        assert api.read_file(m.vm_id, "/home/user/x.txt") == b"data\n"


def test_chmod_while_data_is_pending_is_applied_with_the_upload(server, api, control):
    with mounted(server, *LONG_TTL) as m:
        with open(m.p("s.sh"), "wb") as f:
            control.reset_stats()
            f.write(b"#!/bin/sh\n")
            f.flush()
            os.chmod(m.p("s.sh"), 0o755)  # by path, while another handle holds unsent data
            assert stat.S_IMODE(os.stat(m.p("s.sh")).st_mode) == 0o755
            assert control.nonzero_calls() == {}
        assert control.nonzero_calls() == {"run": 1}  # the install run applies the mode
        assert api.sh(m.vm_id, "stat -c %a /home/user/s.sh") == "755\n"


# == everyday tools ==========================================================================
def test_cp_r_budget(server, api, control, tmp_path):
    tree = make_tree(str(tmp_path))
    with mounted(server, *LONG_TTL) as m:
        control.reset_stats()
        sh("cp", "-r", tree, m.p("copied"))
        # one mkdir per directory, one create + one install (bytes included) per file; nothing else
        assert control.nonzero_calls() == {"run": 23}
        assert api.sh(m.vm_id, "find /home/user/copied -type f | wc -l") == "10\n"


def test_rsync_budget(server, api, control, tmp_path):
    tree = make_tree(str(tmp_path))
    with mounted(server, *LONG_TTL) as m:
        control.reset_stats()
        sh("rsync", "-a", tree + "/", m.p("synced/"))
        # per file: create, install (bytes and mode in one run), utimens, chmod, rename (its
        # no-op fchmod right after create costs nothing); per directory: mkdir, times and chmod
        # (rsync makes them 0700 first), and times again once filled
        assert control.nonzero_calls() == {"run": 61}
        assert remote_tree(api, m.vm_id, "synced") == local_tree(tree)
        control.reset_stats()
        sh("rsync", "-a", tree + "/", m.p("synced/"))
        assert control.nonzero_calls() == {}  # all cached: nothing to do


def test_rsync_again_after_expiry_costs_one_listing_per_directory(server, api, control, tmp_path):
    tree = make_tree(str(tmp_path))
    vm = api.fork()
    with mounted(server, *LONG_TTL, vm_id=vm) as m:
        sh("rsync", "-a", tree + "/", m.p("synced/"))
    with mounted(server, "--cache-ttl", "2", vm_id=vm) as m:
        sh("ls", "-R", m.p("synced"))  # the directories are known to the mount...
        time.sleep(2.5)  # ...and everything about them has expired
        control.reset_stats()
        sh("rsync", "-a", tree + "/", m.p("synced/"))
        # synced (its own attrs and entries), d0, d1: was one lstat per name (13)
        assert control.nonzero_calls() == {"run": 3}


def test_find_costs_one_listing_for_the_whole_subtree(server, api, control, tmp_path):
    vm = api.fork()
    api.sh(vm, "mkdir -p /home/user/t/a/b /home/user/t/c && touch /home/user/t/a/x /home/user/t/a/b/y /home/user/t/z")
    with mounted(server, *LONG_TTL, vm_id=vm) as m:
        control.reset_stats()
        assert sh("find", ".", cwd=m.p("t")).count("\n") == 7
        # t's first listing takes t/a, t/a/b and t/c with it (was one per directory); find's statfs
        assert control.nonzero_calls() == {"run": 2}


# == large reads ===========================================================================
def test_sequential_read_of_a_large_file_grows_its_ranged_gets(server, api, control):
    vm = api.fork()
    data = os.urandom(20_000_000)  # 20 chunks of 1 MiB (the last one partial)
    api.write_file(vm, "/home/user/big.bin", data)
    with mounted(server, *LONG_TTL, vm_id=vm) as m:
        control.reset_stats()
        with open(m.p("big.bin"), "rb") as f:
            assert f.read() == data
        # one sync read, then GETs of 1, 2 (with 4 more ahead), 8 (with the last 5 ahead) chunks
        # (was 20 GETs)
        assert control.nonzero_calls() == {"sync_read": 1, "presigned_get": 5}


def test_random_reads_of_a_large_file_fetch_one_chunk_each(server, api, control):
    vm = api.fork()
    data = os.urandom(12 * MB)
    api.write_file(vm, "/home/user/big.bin", data)
    with mounted(server, *LONG_TTL, vm_id=vm) as m:
        control.reset_stats()
        fd = os.open(m.p("big.bin"), os.O_RDONLY)
        try:
            for chunk in (9, 2, 6, 0, 4):  # never the chunk right after the previous fetch
                offset = chunk * MB + 1000
                assert os.pread(fd, 4096, offset) == data[offset:offset + 4096]
        finally:
            os.close(fd)
        assert control.nonzero_calls() == {"sync_read": 1, "presigned_get": 5}


# == the refresh rules, without a kernel =====================================================
class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class _DirRemote:
    """/home/user/d with files a, b, c; every call recorded; ``list_error`` breaks list_dir."""

    def __init__(self) -> None:
        from arkerfs.fs.model import Attrs

        self.dir = Attrs(stat.S_IFDIR | 0o755, 4096, 2, 0, 0, 0, 1, 0)
        self.files = {n: Attrs(stat.S_IFREG | 0o644, 1, 1, 0, 0, 0, 1, 0) for n in (b"a", b"b", b"c")}
        self.calls: list[tuple[str, bytes]] = []
        self.list_error: int | None = None

    async def list_dir(self, path):
        from arkerfs.fs.errors import FsError
        from arkerfs.fs.model import Entry

        self.calls.append(("list_dir", path))
        if self.list_error is not None:
            raise FsError(self.list_error)
        if path == b"/home/user":
            return self.dir, [Entry(b"d", self.dir)]
        return self.dir, [Entry(n, a) for n, a in self.files.items()]

    async def lstat(self, path):
        from arkerfs.fs.errors import FsError

        self.calls.append(("lstat", path))
        name = path.rsplit(b"/", 1)[1]
        if path == b"/home/user/d":
            return self.dir
        if name in self.files:
            return self.files[name]
        raise FsError(errno.ENOENT)

    async def open_read(self, path):
        raise AssertionError("not used")


def _vfs(tmp_path):
    from arkerfs.fs.vfs import VFS, Options

    remote, clock = _DirRemote(), _Clock()
    vfs = VFS(remote, b"/home/user", str(tmp_path), Options(cache_ttl=3.0), timer=clock)
    return vfs, remote, clock


async def _lookup_all(vfs, names):
    d, _ = await vfs.lookup(1, b"d")
    found = {}
    for name in names:
        try:
            found[name] = (await vfs.lookup(d, name))[1].size
        except Exception as exc:  # noqa: BLE001 - the errno is what we compare
            found[name] = getattr(exc, "errno", exc)
    return found


async def test_model_refreshes_expired_siblings_with_one_listing_per_directory(tmp_path):
    vfs, remote, clock = _vfs(tmp_path)
    await vfs.readdir(vfs.opendir(1), 0)
    d, _ = await vfs.lookup(1, b"d")
    await vfs.readdir(vfs.opendir(d), 0)
    clock.now += 10  # everything expired
    remote.calls.clear()
    found = await _lookup_all(vfs, [b"a", b"b", b"c", b"nope", b".tmp"])
    assert found == {b"a": 1, b"b": 1, b"c": 1, b"nope": errno.ENOENT, b".tmp": errno.ENOENT}
    assert remote.calls == [("list_dir", b"/home/user/d")]  # d's own attrs come from it too


async def test_model_falls_back_to_lstat_when_the_directory_cannot_be_listed(tmp_path):
    vfs, remote, clock = _vfs(tmp_path)
    d, _ = await vfs.lookup(1, b"d")
    await vfs.readdir(vfs.opendir(d), 0)
    clock.now += 10
    remote.calls.clear()
    remote.list_error = errno.EACCES  # e.g. made unreadable in the VM (lookups may still work)
    with pytest.raises(Exception) as info:
        await vfs.lookup(d, b"nope")
    assert info.value.errno == errno.ENOENT
    assert remote.calls == [("list_dir", b"/home/user/d"), ("lstat", b"/home/user/d/nope")]
    remote.calls.clear()
    clock.now += 10
    await vfs.lookup(d, b"a")  # d is no longer re-listed: straight to lstat
    assert remote.calls == [("lstat", b"/home/user/d/a")]


async def test_model_does_not_double_a_failed_refresh_when_the_remote_is_down(tmp_path):
    vfs, remote, clock = _vfs(tmp_path)
    d, _ = await vfs.lookup(1, b"d")
    await vfs.readdir(vfs.opendir(d), 0)
    clock.now += 10
    remote.calls.clear()
    remote.list_error = errno.EIO
    with pytest.raises(Exception) as info:
        await vfs.lookup(d, b"a")
    assert info.value.errno == errno.EIO
    assert remote.calls == [("list_dir", b"/home/user/d")]  # no lstat that would fail the same way


async def test_ranged_reads_grow_while_sequential_and_restart_when_not(tmp_path, monkeypatch):
    from arkerfs.fs import content

    monkeypatch.setattr(content, "CHUNK", 4)
    data = bytes(i % 251 for i in range(400))  # 100 chunks
    gets: list[tuple[int, int]] = []

    class Remote:
        size, inline, expired = len(data), False, False

        async def read_range(self, offset, length):
            gets.append((offset // 4, length // 4))  # (first chunk, chunks asked)
            return data[offset:offset + length]

        async def read_range_into(self, offset, length, sink):
            sink(offset, await self.read_range(offset, length))

    ranged = content.RangedContent(b"/h/f", Remote(), opener=None, spool_dir=str(tmp_path))
    for offset in range(0, 128, 2):  # a sequential reader, two bytes at a time, chunks 0..31
        assert await ranged.read(offset, 2) == data[offset:offset + 2]
    await trio.testing.wait_all_tasks_blocked()  # the GET ahead, in its own task
    # 1, then 2 with the next 4 ahead, then 8 with 16 ahead, then 32 with 32 more ahead
    assert sorted(gets) == [(0, 1), (1, 2), (3, 4), (7, 8), (15, 16), (31, 32), (63, 32)]
    gets.clear()
    ranged = content.RangedContent(b"/h/f", Remote(), opener=None, spool_dir=str(tmp_path))
    for chunk in (90, 95, 70):  # random: one chunk each, nothing ahead
        assert await ranged.read(chunk * 4, 4) == data[chunk * 4:chunk * 4 + 4]
    await trio.testing.wait_all_tasks_blocked()
    assert gets == [(90, 1), (95, 1), (70, 1)]
    gets.clear()
    assert await ranged.read(71 * 4, 2) == data[284:286]  # right after 70's fetch: sequential again
    await trio.testing.wait_all_tasks_blocked()
    assert await ranged.read(88 * 4, 12) == data[352:364]  # one read over 3 chunks: one GET, up to 90 (held)
    assert sorted(gets) == [(71, 2), (73, 4), (88, 2)]
