"""What a landed push leaves for the names still pending (write-back, in-process: VFS over the
port and a real journal on a LocalVM). A name renamed again while the push of its first rename
(or of its content) was in flight reads its bytes from where the VM has them once that push
lands: git writes ``tmp_pack``, renames it to ``.tmp-pack`` and then to ``pack-*.pack`` in
quick succession, and reads it back through ``mmap`` (an error there is a SIGBUS)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import trio

from arkerfs.fs.remote import RemoteFS
from arkerfs.fs.vfs import VFS, Options
from arkerfs.writeback.journal import Journal
from arkerfs.writeback.port import WriteBack
from tests.localvm import LocalVM
from tests.vfsdriver import VfsDriver


class HeldAnswers:
    """The remote of a pusher whose batches are applied in the VM, then answered only once
    ``release`` is set: the window in which the VM has a rename the mount has not heard of."""

    def __init__(self, remote) -> None:
        self.remote = remote
        self.applied = trio.Event()
        self.release = trio.Event()

    def __getattr__(self, name: str):
        return getattr(self.remote, name)

    async def run_batch(self, fragments):
        results = await self.remote.run_batch(fragments)
        self.applied.set()
        await self.release.wait()
        return results


def mount_of(vm, tmp_path, options: Options = Options(cache_ttl=600), timer=time.monotonic) -> tuple[WriteBack, VfsDriver]:
    spool = tmp_path / "spool"
    spool.mkdir(mode=0o700)
    port = WriteBack(RemoteFS(vm), Journal(Path(tmp_path / "journal"), "vm-under-test"))
    return port, VfsDriver(VFS(port, b"/home/user", str(spool), options, timer=timer))


async def write(fs: VfsDriver, path: bytes, data: bytes) -> None:
    fd = await fs.open(path, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o644)
    await fs.write(fd, data)
    await fs.close(fd)


async def read(fs: VfsDriver, path: bytes) -> bytes:
    fd = await fs.open(path, os.O_RDONLY)
    try:
        return await fs.read(fd, 1 << 20)
    finally:
        await fs.close(fd)


async def test_a_pending_name_read_while_the_vm_renames_its_bytes_waits_for_that_push(tmp_path):
    async with LocalVM(str(tmp_path / "vm")) as vm:
        port, fs = mount_of(vm, tmp_path)
        await write(fs, b"main.lock", b"ref")
        await port.drain(retry_failed=False)
        await fs.rename(b"main.lock", b"main")  # the bytes are in the VM, as main.lock until pushed
        held = port.pusher.remote = HeldAnswers(port.pusher.remote)
        got: list[bytes] = []

        async def reader() -> None:
            got.append(await read(fs, b"main"))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(port.pusher.push_batch)
            await held.applied.wait()  # the VM has main now; the mount has not heard yet
            nursery.start_soon(reader)
            await trio.sleep(0.3)
            assert got == []  # it met no main.lock in the VM, and waits for the answer
            held.release.set()
        assert got == [b"ref"]


async def test_a_name_renamed_again_during_a_push_reads_its_bytes_once_the_push_lands(tmp_path):
    async with LocalVM(str(tmp_path / "vm")) as vm:
        port, fs = mount_of(vm, tmp_path)

        def in_vm() -> list[str]:
            return sorted(n for n in os.listdir(vm.home) if n != ".arkerfs")

        await write(fs, b"in_vm", b"content already pushed")
        await port.drain(retry_failed=False)
        await fs.rename(b"in_vm", b"idx.tmp")  # pushed next: the VM's name changes under it
        await write(fs, b"pending", b"content still in the journal")
        await fs.rename(b"pending", b"pack.tmp")  # pushed next with its content
        async with trio.open_nursery() as nursery:
            nursery.start_soon(port.pusher.push_batch)
            while not port.pusher.pushing:
                await trio.sleep(0)
            # renamed again while that batch is in flight: these renames go in the next one
            await fs.rename(b"idx.tmp", b"pack.idx")
            await fs.rename(b"pack.tmp", b"pack.pack")
        assert in_vm() == ["idx.tmp", "pack.tmp"]  # the first batch only
        assert await read(fs, b"pack.idx") == b"content already pushed"
        assert await read(fs, b"pack.pack") == b"content still in the journal"
        await port.drain(retry_failed=False)
        assert in_vm() == ["pack.idx", "pack.pack"]
        assert await read(fs, b"pack.idx") == b"content already pushed"


async def test_a_pushed_file_keeps_the_ctime_the_mount_showed_until_the_vm_changes_it(tmp_path):
    """The VM stamps its own ctime when a push installs a file; showing that one afterwards
    would move the ctime with no change (git then takes every file it wrote for modified)."""
    now = [0.0]
    async with LocalVM(str(tmp_path / "vm")) as vm:
        port, fs = mount_of(vm, tmp_path, Options(cache_ttl=3), timer=lambda: now[0])
        await write(fs, b"f", b"data")
        before = await fs.lstat(b"f")
        shown = before.st_ctime_ns
        await trio.sleep(0.05)  # the VM's clock moves on before the push
        await port.drain(retry_failed=False)
        assert os.lstat(os.path.join(vm.home, "f")).st_ctime_ns != shown
        after = await fs.lstat(b"f")
        assert (after.st_ctime_ns, after.st_mtime_ns, after.st_ino, after.st_size) == \
            (shown, before.st_mtime_ns, before.st_ino, before.st_size)  # what git compares
        now[0] += 10  # past the TTL: asked of the VM again
        fs.drop_caches()
        assert (await fs.lstat(b"f")).st_ctime_ns == shown
        assert [e for e in await fs.listdir(b"") if e == b"f"] == [b"f"]
        assert (await fs.lstat(b"f")).st_ctime_ns == shown
        os.chmod(os.path.join(vm.home, "f"), 0o600)  # changed in the VM: its ctime shows
        now[0] += 10
        fs.drop_caches()
        assert (await fs.lstat(b"f")).st_ctime_ns == os.lstat(os.path.join(vm.home, "f")).st_ctime_ns
