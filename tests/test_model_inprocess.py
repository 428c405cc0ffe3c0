"""The model-based test in-process: the rules of ``tests/modelrules.py`` (those of
``tests/test_model.py``) on ``VFS`` over ``RemoteFS`` over ``LocalVM`` (the same shell scripts
under bubblewrap on a temp home, files installed with the server's code), driven by
``VfsDriver`` (what the kernel would do) with no kernel and no HTTP. Fast enough for thousands
of steps, so CI runs many more than through the mount (100 examples of up to 50 steps: about
4,700 steps in ~100 s on a loaded 2-core machine, against 375 through the mount).

Compared after every step: each operation's result or exact errno, and the whole tree through
VFS against the reference directory (the tolerances of ``tests/test_model.py``); the VM's home
itself (the temp directory) against the reference whenever no descriptor is open (an open one
may hold data not yet uploaded), and at the end of each example.

Beyond the mount's rules: ``drop_caches`` (the kernel FORGETs every lookup no descriptor pins:
inode records are purged and re-learned), ``expire_caches`` (the fake clock given to VFS jumps
past ``cache_ttl``, so every cached attr, listing and negative entry expires: TTL refreshes run
deterministically), and ``remount`` is a new VFS on the same LocalVM after ``shutdown``. At the
end of each example, with everything closed and forgotten, VFS must hold no inode but the
root and no open file, and nothing may have been logged at WARNING or above.

Longer runs:

    ARKERFS_INPROC_EXAMPLES=200 ARKERFS_INPROC_STEPS=100 .venv/bin/python -m pytest tests/test_model_inprocess.py

(``ARKERFS_MODEL_SEED=N`` / ``ARKERFS_MODEL_REPRODUCE=blob`` work as in ``tests/test_model.py``.)
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
import tempfile

import hypothesis
import pytest
import trio
from hypothesis import HealthCheck, reproduce_failure, seed, settings
from hypothesis.stateful import invariant, rule, run_state_machine_as_test

from arkerfs.fs.errors import FsError
from arkerfs.fs.remote import RemoteFS
from arkerfs.fs.vfs import VFS, Options
from tests.localvm import LocalVM
from tests.modelfs import CANARY_LOCAL, Node, diff_trees, snapshot
from tests.modelrules import FsModel, guard
from tests.vfsdriver import VfsDriver

EXAMPLES = int(os.environ.get("ARKERFS_INPROC_EXAMPLES", "100"))
STEPS = int(os.environ.get("ARKERFS_INPROC_STEPS", "50"))
SEED = os.environ.get("ARKERFS_MODEL_SEED")
REPRODUCE = os.environ.get("ARKERFS_MODEL_REPRODUCE")
LONG = "ARKERFS_INPROC_EXAMPLES" in os.environ or "ARKERFS_INPROC_STEPS" in os.environ
CACHE_TTL = 3.0
STEP_DEADLINE = 60.0  # one call into VFS taking longer is a hang


def _os_link_follows() -> bool:
    """Whether ``os.link(follow_symlinks=True)`` follows a symlink source: CPython calls
    link(2) for it where it can, which on Linux does not follow."""
    with tempfile.TemporaryDirectory() as d:
        os.symlink("target", os.path.join(d, "s"))
        open(os.path.join(d, "target"), "w").close()
        os.link(os.path.join(d, "s"), os.path.join(d, "l"), follow_symlinks=True)
        return not os.path.islink(os.path.join(d, "l"))


OS_LINK_FOLLOWS = _os_link_follows()


class FakeClock:
    """VFS's ``timer``: time moves only when the test says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Problems(logging.Handler):
    """WARNING and above from arkerfs' loggers."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(f"{record.levelname} {record.name}: {record.getMessage()}")


class InProcessTarget:
    """The system under test for ``FsModel``: VFS + VfsDriver over one LocalVM. Its methods are
    called from the hypothesis thread; each VFS call runs in the test's trio loop."""

    remount_every = 8

    def __init__(self, base: str) -> None:
        self.vm = LocalVM(os.path.join(base, "vm"))
        self.spool = os.path.join(base, "spool")
        os.makedirs(self.spool, mode=0o700)
        self.clock = FakeClock()
        self.problems = Problems()
        self._seen = 0
        self.vfs = self.driver = None
        self.mounts = 0
        self.steps = 0
        self._new_vfs()

    def _new_vfs(self) -> None:
        self.vfs = VFS(RemoteFS(self.vm), b"/home/user", self.spool,
                       Options(cache_ttl=CACHE_TTL, owner=(os.getuid(), os.getgid())), timer=self.clock)
        self.driver = VfsDriver(self.vfs)
        self.mounts += 1

    def call(self, fn, *args, **kwargs):
        """``await fn(*args)`` in the trio loop; FsError escaping VFS is a bug of the driver."""

        async def run():
            with trio.fail_after(STEP_DEADLINE):
                return await fn(*args, **kwargs)

        try:
            return trio.from_thread.run(run)
        except trio.TooSlowError:
            raise AssertionError(f"{getattr(fn, '__name__', fn)}{args!r} hung for {STEP_DEADLINE:.0f} s") from None
        except FsError as exc:
            raise OSError(exc.errno, os.strerror(exc.errno)) from None

    # -- Target ---------------------------------------------------------------------------------
    def up(self) -> None:
        pass

    def example(self, exdir: bytes, create: bool = True) -> DriverFS:
        if create:
            self.call(self.driver.mkdir, exdir, 0o755)
        return DriverFS(self, exdir)

    def remount(self) -> None:
        """Like an unmount and a new mount: push everything, forget everything, start afresh."""
        self.driver.drop_caches()
        rescued = self.call(self.vfs.shutdown)
        assert not rescued, f"rescue files at remount: {rescued}"
        self._new_vfs()

    @contextlib.contextmanager
    def watchdog(self, what: str):
        yield  # ``call`` has a deadline of its own

    def vm_snapshot(self, vm_root: bytes) -> dict[bytes, Node]:
        return snapshot(os.fsencode(self.vm.home) + vm_root[len(b"/home/user"):])

    def canaries(self) -> list[str]:
        found = [f"VM: {p}" for p in [os.path.join(self.vm.home, "CANARY")] if os.path.lexists(p)]
        return found + [f"local: {p}" for p in CANARY_LOCAL if os.path.lexists(p)]

    def new_log_problems(self) -> list[str]:
        new, self._seen = self.problems.lines[self._seen:], len(self.problems.lines)
        return new

    def leaks(self) -> list[str]:
        """With no descriptor open and every lookup forgotten: what VFS still holds."""
        self.driver.drop_caches()
        found = []
        if len(self.vfs.inodes) != 1:
            found.append(f"{len(self.vfs.inodes) - 1} inode records besides the root")
        if self.vfs._files or self.vfs._handles or self.vfs._dirs:
            found.append(f"open state: files {list(self.vfs._files)}, handles {list(self.vfs._handles)}, "
                         f"dirs {list(self.vfs._dirs)}")
        return found


class DriverFS:
    """The os-like fs of ``FsModel`` over VfsDriver, on paths relative to ``/home/user/<exdir>``."""

    def __init__(self, target: InProcessTarget, exdir: bytes) -> None:
        self.t = target
        self.exdir = exdir

    def _p(self, path: bytes) -> bytes:
        return self.exdir + b"/" + path

    def _d(self):
        return self.t.driver

    def open(self, path, flags, mode=0o777):
        return self.t.call(self._d().open, self._p(path), flags, mode)

    def close(self, fd):
        return self.t.call(self._d().close, fd)

    def read(self, fd, n):
        return self.t.call(self._d().read, fd, n)

    def pread(self, fd, n, offset):
        return self.t.call(self._d().pread, fd, n, offset)

    def write(self, fd, data):
        return self.t.call(self._d().write, fd, data)

    def pwrite(self, fd, data, offset):
        return self.t.call(self._d().pwrite, fd, data, offset)

    def ftruncate(self, fd, size):
        return self.t.call(self._d().ftruncate, fd, size)

    def fsync(self, fd):
        return self.t.call(self._d().fsync, fd)

    def fstat(self, fd):
        return self.t.call(self._d().fstat, fd)

    def truncate(self, path, size):
        return self.t.call(self._d().truncate, self._p(path), size)

    def rename(self, src, dst):
        return self.t.call(self._d().rename, self._p(src), self._p(dst))

    def mkdir(self, path, mode=0o777):
        return self.t.call(self._d().mkdir, self._p(path), mode)

    def rmdir(self, path):
        return self.t.call(self._d().rmdir, self._p(path))

    def unlink(self, path):
        return self.t.call(self._d().unlink, self._p(path))

    def symlink(self, target, path):
        return self.t.call(self._d().symlink, target, self._p(path))

    def link(self, src, dst, *, follow_symlinks=True):
        follow = follow_symlinks and OS_LINK_FOLLOWS  # do what the reference's os.link does
        return self.t.call(self._d().link, self._p(src), self._p(dst), follow_symlinks=follow)

    def chmod(self, path, mode):
        return self.t.call(self._d().chmod, self._p(path), mode)

    def utime(self, path, *, ns, follow_symlinks=True):
        return self.t.call(self._d().utime, self._p(path), ns=ns, follow_symlinks=follow_symlinks)

    def stat(self, path, *, follow_symlinks=True):
        return self.t.call(self._d().stat, self._p(path), follow_symlinks=follow_symlinks)

    def snapshot(self) -> dict[bytes, Node]:
        return self.t.call(driver_snapshot, self._d(), self.exdir)


async def driver_snapshot(driver: VfsDriver, root: bytes) -> dict[bytes, Node]:
    """``modelfs.snapshot`` through the driver: readdir, lstat, read, readlink."""
    out: dict[bytes, Node] = {}

    async def walk(rel: bytes) -> None:
        for name in sorted(await driver.listdir(root + b"/" + rel if rel else root)):
            child = rel + b"/" + name if rel else name
            full = root + b"/" + child
            st_ = await driver.lstat(full)
            kind = "f" if st_.st_mode & 0o170000 == 0o100000 else "d" if st_.st_mode & 0o170000 == 0o040000 \
                else "l" if st_.st_mode & 0o170000 == 0o120000 else f"?{st_.st_mode & 0o170000:o}"
            content = await driver.read_file(full) if kind == "f" else None
            target = await driver.readlink(full) if kind == "l" else None
            is_dir = kind == "d"
            out[child] = Node(kind, st_.st_mode & 0o7777, None if is_dir else st_.st_size,
                              None if is_dir else st_.st_nlink, st_.st_mtime_ns, content, target, st_.st_ino)
            if is_dir:
                await walk(child)

    await walk(b"")
    return out


class InProcessModel(FsModel):
    """The mount's rules, plus the kernel forgetting and the cache clock jumping."""

    target = None


    @rule()
    @guard
    def drop_caches(self):
        self.note("drop_caches")
        self.keeper.driver.drop_caches()

    @rule()
    @guard
    def expire_caches(self):
        self.note("expire_caches")
        self.keeper.clock.now += CACHE_TTL + 0.5

    @invariant()
    @guard
    def vm_agrees(self):
        """The VM's home holds what the reference holds, whenever no descriptor is open (an
        open one may hold data not uploaded yet)."""
        self.keeper.steps += 1
        if not self.handles:
            self.compare_vm("with no descriptor open")

    def teardown(self):
        super().teardown()
        if not self.failed:
            leaks = self.keeper.leaks()
            assert not leaks, "after closing and forgetting everything:\n" + "\n".join(leaks) + "\n" + self.history()


def _settings() -> settings:
    common = dict(max_examples=EXAMPLES, stateful_step_count=STEPS, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck), print_blob=True)
    if LONG and SEED is None:
        return settings(**common)
    return settings(**common, derandomize=SEED is None)


async def run_model(target: InProcessTarget, model: type[InProcessModel]) -> None:
    """Run ``model``'s rules on ``target`` (from a worker thread: VFS calls come back to this
    trio loop), with arkerfs' WARNING+ log lines collected; the VM is closed at the end."""
    logger = logging.getLogger("arkerfs")
    logger.addHandler(target.problems)
    model.target = target
    machine = model
    if SEED is not None:
        machine = seed(int(SEED))(machine)
    if REPRODUCE:
        machine = reproduce_failure(hypothesis.__version__, REPRODUCE)(machine)
    try:
        await trio.to_thread.run_sync(lambda: run_state_machine_as_test(machine, settings=_settings()))
    finally:
        model.target = None
        logger.removeHandler(target.problems)
        with trio.CancelScope(shield=True):
            await target.vm.aclose()


@pytest.mark.timeout(max(600, EXAMPLES * STEPS))
async def test_vfs_behaves_like_a_local_directory(tmp_path):
    target = InProcessTarget(str(tmp_path))
    await run_model(target, InProcessModel)
    print(f"in-process model: {target.vm.calls['run']} runs ({target.vm.calls['run'] / max(target.vm.run_seconds, 1e-9):.0f}/s), "
          f"{target.vm.calls['sync_read']} sync reads, {target.vm.calls['ranged_read']} ranged reads, "
          f"{target.vm.calls['sync_write']} sync writes, {target.mounts} mounts, {target.steps} steps")


# -- bugs the in-process model found in VFS (fixed; kept as regressions) --------------------------------------

async def test_unlink_of_a_hard_link_after_forget_updates_the_other_names_nlink(tmp_path):
    os.makedirs(tmp_path / "spool", mode=0o700)
    async with LocalVM(str(tmp_path / "vm")) as vm:
        vfs = VFS(RemoteFS(vm), b"/home/user", str(tmp_path / "spool"), Options(owner=(0, 0)),
                  timer=FakeClock())
        driver = VfsDriver(vfs)
        fd = await driver.open(b"a", os.O_WRONLY | os.O_CREAT, 0o644)
        await driver.write(fd, b"x")
        await driver.close(fd)
        await driver.link(b"a", b"b")
        driver.drop_caches()  # the kernel forgets both inodes (memory pressure, drop_caches)
        await driver.unlink(b"a")
        assert os.lstat(os.path.join(vm.home, "b")).st_nlink == 1
        assert (await driver.lstat(b"b")).st_nlink == 1  # VFS says 2


async def test_rename_over_one_of_two_hard_links_updates_the_other_names_nlink(tmp_path):
    os.makedirs(tmp_path / "spool", mode=0o700)
    async with LocalVM(str(tmp_path / "vm")) as vm:
        vfs = VFS(RemoteFS(vm), b"/home/user", str(tmp_path / "spool"), Options(owner=(0, 0)),
                  timer=FakeClock())
        driver = VfsDriver(vfs)
        for name in (b"a", b"c"):
            await driver.close(await driver.open(name, os.O_WRONLY | os.O_CREAT, 0o644))
        await driver.link(b"a", b"b")
        await driver.rename(b"c", b"a")
        assert os.lstat(os.path.join(vm.home, "b")).st_nlink == 1
        assert (await driver.lstat(b"b")).st_nlink == 1  # VFS says 2
