"""The change watcher without a kernel: its VM-side run against a local directory (inotify, and
the scan a VM without inotify gets), and the in-process mount (VFS over a LocalVM) kept fresh
by ``Watcher`` with caches that would otherwise trust what they hold for ten minutes."""

from __future__ import annotations

import errno
import os
import subprocess
import threading
import time
from pathlib import Path

import pytest
import trio

from arkerfs.fs import shell as S
from arkerfs.fs import vmchanges
from arkerfs.fs import vmwatch as W
from arkerfs.fs.remote import RemoteFS
from arkerfs.fs.vfs import VFS, Options
from arkerfs.mount.watcher import Watcher
from arkerfs.writeback.journal import Journal
from arkerfs.writeback.port import WriteBack
from tests.localvm import LocalVM
from tests.vfsdriver import VfsDriver

HOSTILE = b"new\nline $(touch CANARY) \xff"


def run(fragment) -> W.ChangeReport:
    done = subprocess.run(["bash", "-c", S.script([fragment])], capture_output=True, timeout=60)
    (outcome,) = S.parse_output(done.stdout)
    return S.check_result(fragment, outcome)


def later(seconds: float, action) -> threading.Thread:
    def go():
        time.sleep(seconds)
        action()
    thread = threading.Thread(target=go)
    thread.start()
    return thread


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # an injected `touch CANARY` would land here
    root = tmp_path / "home"
    (root / "a" / "b").mkdir(parents=True)
    (root / "a" / "f").write_text("x")
    (root / "moving" / "inner").mkdir(parents=True)
    (root / "moving" / "inner" / "z").write_text("z")
    (root / ".arkerfs").mkdir()  # the mount's staging directory: never reported
    return root


def changes_in(root, report: W.ChangeReport) -> dict[str, bool]:
    """Relative path -> exists, for every reported path."""
    base = bytes(root)
    return {os.path.relpath(p, base).decode("utf-8", "replace"): a is not None for p, a in report.changed.items()}


def change_tree(root) -> None:
    (root / "a" / "b" / "new").write_text("n")
    os.rename(root / "a" / "f", root / "f2")
    (root / "d" / "e").mkdir(parents=True)
    (root / "d" / "e" / "q").write_text("q")
    (root / ".arkerfs" / "staged").write_text("s")
    os.rename(root / "moving", root / "moved")
    os.write(os.open(bytes(root) + b"/" + HOSTILE, os.O_CREAT | os.O_WRONLY), b"h")


@pytest.mark.parametrize("scan", [False, True], ids=["inotify", "scan"])
def test_a_run_reports_what_changed_while_it_watched(home, scan):
    probe = run(W.watch(bytes(home), 0, 0, scan=scan))
    assert (probe.mode, probe.changed, probe.flush) == ("scan" if scan else "inotify", {}, False)
    thread = later(0.4, lambda: change_tree(home))
    started = time.monotonic()
    report = run(W.watch(bytes(home), probe.since_ns, 10, scan=scan))
    thread.join()
    assert time.monotonic() - started < 5  # it answered once things settled, not at its bound
    seen = changes_in(home, report)
    for gone in ("a/f", "moving"):
        assert seen.get(gone) is False, seen
    for there in ("a/b/new", "f2", "d", "d/e", "d/e/q", "moved", "moved/inner/z", HOSTILE.decode("utf-8", "replace")):
        assert seen.get(there) is True, (there, seen)
    assert not any(p.startswith(".arkerfs") for p in seen)
    assert report.changed[bytes(home) + b"/a/b/new"].size == 1
    assert not os.path.exists("CANARY")
    # the moved directory is watched under its new name
    thread = later(0.4, lambda: (home / "moved" / "inner" / "z").write_text("changed"))
    report = run(W.watch(bytes(home), report.since_ns, 10, scan=scan))
    thread.join()
    assert changes_in(home, report).get("moved/inner/z") is True


def test_a_change_between_two_runs_is_reported_by_the_next(home):
    first = run(W.watch(bytes(home), 0, 0))
    (home / "a" / "between").write_text("gap")
    os.unlink(home / "a" / "f")  # a removal shows in no ctime: the directory comes with its names
    started = time.monotonic()
    report = run(W.watch(bytes(home), first.since_ns, 10))
    assert time.monotonic() - started < 5  # what the gap held is answered at once
    assert changes_in(home, report).get("a/between") is True
    assert report.listed[bytes(home) + b"/a"] == {b"b", b"between"}


def test_nothing_changed_means_an_empty_answer_at_the_bound(home):
    first = run(W.watch(bytes(home), 0, 0))
    started = time.monotonic()
    report = run(W.watch(bytes(home), first.since_ns, 1.0))
    assert 1.0 <= time.monotonic() - started < 4
    assert (report.mode, report.changed, report.listed, report.flush) == ("inotify", {}, {}, False)
    assert report.since_ns > first.since_ns


def test_a_home_too_large_to_watch_says_why(home):
    report = run(W.watch(bytes(home), 0, 0, entries_max=3))
    assert report.mode == "off" and "more than 3 entries" in report.note


def test_more_changes_than_can_be_listed_ask_for_a_flush(home):
    first = run(W.watch(bytes(home), 0, 0))
    for i in range(10):
        (home / f"n{i}").write_text("x")
    report = run(W.watch(bytes(home), first.since_ns, 5, changes_max=5))
    assert report.flush and report.changed == {}


# -- in-process: the mount's caches kept fresh by the watcher ----------------------------------------

async def test_the_watcher_keeps_long_lived_caches_fresh_and_ignores_the_mounts_own_changes(tmp_path):
    async with LocalVM(str(tmp_path / "vm")) as vm:
        home = vm.home
        os.mkdir(os.path.join(home, "w"))
        with open(os.path.join(home, "w", "keep"), "w") as f:
            f.write("first")
        spool = tmp_path / "spool"
        spool.mkdir(mode=0o700)
        remote = RemoteFS(vm)
        vfs = VFS(remote, b"/home/user", str(spool), Options(cache_ttl=600))
        fs = VfsDriver(vfs)
        watcher = Watcher(vfs, vm, remote.pool, watch_ttl=600, cache_ttl=600, bound=5)

        async def read(path: bytes) -> bytes:
            fd = await fs.open(path, os.O_RDONLY)
            try:
                return await fs.read(fd, 1 << 20)
            finally:
                await fs.close(fd)

        async def eventually(check, seconds: float = 3.0) -> None:
            with trio.fail_after(seconds):
                while not await check():
                    await trio.sleep(0.02)

        async with trio.open_nursery() as nursery:
            await nursery.start(watcher.run)
            with trio.fail_after(10):
                while not watcher.live:
                    await trio.sleep(0.02)
            assert await fs.listdir(b"w") == [b"keep"] and await read(b"w/keep") == b"first"
            # changes made in the VM: the caches (trusted for ten minutes) follow at once
            with open(os.path.join(home, "w", "keep"), "w") as f:
                f.write("second!")
            await eventually(lambda: _eq(read(b"w/keep"), b"second!"))
            os.rename(os.path.join(home, "w", "keep"), os.path.join(home, "w", "kept"))
            await eventually(lambda: _eq(fs.listdir(b"w"), [b"kept"]))
            # the mount's own change comes back from the VM and changes nothing
            fd = await fs.open(b"w/mine", os.O_CREAT | os.O_WRONLY, 0o644)
            await fs.write(fd, b"mine")
            await fs.close(fd)
            changes = watcher.changes
            await eventually(lambda: _true(watcher.changes > changes))
            reads = vm.calls["sync_read"]
            assert await read(b"w/mine") == b"mine"
            assert vm.calls["sync_read"] == reads  # its content was not dropped
            # nor the listing (the directory's attrs are the VM's now: the mount had estimated them)
            assert [e.name for e in vfs.cache.listing(b"/home/user/w")] == [b"kept", b"mine"]
            assert vfs.conflicts == []
            nursery.cancel_scope.cancel()


async def test_a_report_that_saw_the_vm_before_the_mounts_push_never_brings_back_what_it_renamed(tmp_path):
    """Write-back, the race a loaded machine makes: ``tmp`` is pushed in one batch, its rename
    to ``old`` in the next; a watch run sent in between saw ``tmp`` in the VM, and its report
    arrives after the rename landed. ``tmp`` must stay gone (a ghost ``tmp`` would be the base
    of the next ``open(tmp, "w")``, and its push a spurious conflict)."""
    async with LocalVM(str(tmp_path / "vm")) as vm:
        os.mkdir(os.path.join(vm.home, "w"))
        spool = tmp_path / "spool"
        spool.mkdir(mode=0o700)
        port = WriteBack(RemoteFS(vm), Journal(Path(tmp_path / "journal"), "vm-under-test"))
        vfs = VFS(port, b"/home/user", str(spool), Options(cache_ttl=600))
        fs = VfsDriver(vfs)

        async def write(path: bytes, data: bytes) -> None:
            fd = await fs.open(path, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o644)
            await fs.write(fd, data)
            await fs.close(fd)

        await write(b"w/tmp", b"first")
        await port.drain(retry_failed=False)
        seen_by_the_run = await port.remote.lstat(b"/home/user/w/tmp")  # the VM between the batches
        await fs.rename(b"w/tmp", b"w/old")
        sent_at = vfs.cache.generation  # the watch run is sent now, before the rename's push
        await port.drain(retry_failed=False)
        report = W.ChangeReport("inotify", "", 0, False, changed={b"/home/user/w/tmp": seen_by_the_run})
        vmchanges.apply(vfs, report, sent_at)
        with pytest.raises(OSError) as gone:
            await fs.lstat(b"w/tmp")
        assert gone.value.errno == errno.ENOENT
        await write(b"w/tmp", b"second")
        await port.drain(retry_failed=False)
        assert port.pusher.conflicts == []
        assert sorted(os.listdir(os.path.join(vm.home, "w"))) == ["old", "tmp"]


async def _eq(awaitable, want) -> bool:
    return await awaitable == want


async def _true(value: bool) -> bool:
    return value
