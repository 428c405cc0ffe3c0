"""The rules of the model-based test, shared by every system under test: random operation
sequences on the system AND on a plain local directory (the reference), compared after every
step. ``tests/test_model.py`` runs them on a real mount, ``tests/test_model_inprocess.py`` on
``VFS`` in-process (see those for what is compared when, and the tolerances).

The rules act through an os-like filesystem object (``fs.open``, ``fs.rename``, ``fs.fstat``,
...) on paths relative to the example's directory: ``OsFS`` (the os module under a root: the
reference, or the mount) or the in-process driver. A ``Target`` provides the system under test:

- ``up()``; ``example(exdir, create=True)``: the fs of a fresh example directory
  ``/home/user/<exdir>``; ``remount()`` and ``remount_every`` (steps between remounts);
- ``watchdog(what)``: a context that fails the step instead of hanging;
- ``vm_snapshot(vm_root)``, ``canaries()``: the VM's truth; ``new_log_problems()``.
"""

from __future__ import annotations

import functools
import os
import shutil
import stat
import tempfile
import uuid
from dataclasses import dataclass
from typing import Protocol

from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from tests.modelfs import diff_trees, hostile_names, outcome, snapshot, symlink_targets, too_long_names

MAX_HANDLES = 4
TRACE = os.environ.get("ARKERFS_MODEL_TRACE")  # a file to append every operation to, as it runs

# The local server's VM user is unprivileged (see arkerfs/server/sandbox.py) while the reference
# directory is changed by root, so the owner always keeps rwx here (a mode that locks the owner out
# is answered EACCES by the VM, not by root's disk: tested on its own in test_mount.py), and no
# set-user/group-ID bit is drawn (an unprivileged write or truncate clears them, root's does not).
MODES = st.one_of(st.sampled_from([0o644, 0o600, 0o755, 0o700, 0o744, 0o711, 0o777, 0o1777]),
                  st.integers(0, 0o777), st.integers(0, 0o7777)).map(lambda mode: (mode | 0o700) & ~0o6000)
SIZES = st.one_of(st.integers(0, 300), st.sampled_from([4095, 4096, 65535, 65536, 70001]))
OFFSETS = st.one_of(st.integers(0, 300), st.sampled_from([4095, 4096, 65535, 65536, 70000]))
DATA = st.one_of(st.binary(min_size=0, max_size=64),
                 st.binary(min_size=1, max_size=8).map(lambda b: b * 700))
# explicit times: whole seconds since before 1970 to 2242, with a nanosecond part
TIMES = st.builds(lambda s, ns: s * 10**9 + ns, st.integers(-2**31 + 1, 2**33), st.integers(0, 10**9 - 1))
ACCESS = [os.O_RDONLY, os.O_WRONLY, os.O_RDWR]

_run = uuid.uuid4().hex[:6]
_counter = 0


@dataclass
class Handle:
    ref: int
    mnt: int
    flags: int
    path: bytes
    read_ok: bool = False  # the mount's handle has read something (its version is pinned)


def guard(fn):
    """Mark the example failed when ``fn`` raises, so ``teardown`` only cleans up (its own
    comparisons would fail too and mask the first, shrinkable, failure)."""

    @functools.wraps(fn)
    def wrapper(self, *args, **kwargs):
        try:
            return fn(self, *args, **kwargs)
        except BaseException as exc:
            self.failed = True
            if type(exc).__name__ != "StopTest":  # hypothesis' own control flow
                self.note(f"FAILED: {type(exc).__name__}: {str(exc)[:300]}", log=False)
            raise

    return wrapper


def _flag_names(flags: int) -> str:
    names = [{os.O_RDONLY: "O_RDONLY", os.O_WRONLY: "O_WRONLY", os.O_RDWR: "O_RDWR"}[flags & os.O_ACCMODE]]
    names += [n for n in ("O_APPEND", "O_TRUNC", "O_CREAT", "O_EXCL") if flags & getattr(os, n)]
    return "|".join(names)


class FsModel(RuleBasedStateMachine):
    """The rules; ``target`` (set by the test) is the system under test: see ``Target``."""

    target: Target

    def __init__(self) -> None:
        super().__init__()
        global _counter
        _counter += 1
        self.keeper = self.target
        self.keeper.up()
        self.exdir = f"{_run}-ex{_counter}".encode()
        self.ref_base = tempfile.mkdtemp(prefix="arkerfs-model-").encode()
        self.ref = OsFS(self.ref_base)
        self.sut = self.keeper.example(self.exdir)
        self.handles: list[Handle] = []
        self.explicit: set[int] = set()  # mtimes the test set explicitly
        self.tree = {}
        self.since_remount = 0
        self.failed = False
        self.log = []  # the operations of this example, for failure messages

    # -- roots and paths ----------------------------------------------------------------------
    @property
    def ref_root(self) -> bytes:
        return self.ref_base

    @property
    def vm_root(self) -> bytes:
        return b"/home/user/" + self.exdir

    def dirs(self) -> list[bytes]:
        return [b""] + sorted(p for p, n in self.tree.items() if n.kind == "d")

    def draw_name(self, data, parent: bytes) -> bytes:
        existing = sorted({p.rsplit(b"/", 1)[-1] for p in self.tree})
        choices = [hostile_names]
        if existing:
            choices.append(st.sampled_from(existing))  # names that collide with others
        name = data.draw(st.one_of(*choices), label="name")
        if data.draw(st.integers(0, 40), label="too long?") == 0:
            name = data.draw(too_long_names, label="long name")
        return name

    def new_path(self, data) -> bytes:
        parents = self.dirs()
        if data.draw(st.integers(0, 12), label="odd parent?") == 0 and self.tree:
            parents = sorted(self.tree) + [b"missing-dir"]  # ENOTDIR / ENOENT / via a symlink
        parent = data.draw(st.sampled_from(parents), label="parent")
        name = self.draw_name(data, parent)
        return parent + b"/" + name if parent else name

    def existing_path(self, data, kinds: str = "fdl") -> bytes:
        candidates = sorted(p for p, n in self.tree.items() if n.kind in kinds)
        if not candidates or data.draw(st.integers(0, 9), label="missing?") == 0:
            return self.new_path(data)
        return data.draw(st.sampled_from(candidates), label="path")

    def any_path(self, data) -> bytes:
        if data.draw(st.booleans(), label="existing?"):
            return self.existing_path(data)
        return self.new_path(data)

    # -- comparing ------------------------------------------------------------------------------
    def both(self, what: str, fn):
        """Run ``fn(fs)`` on the reference, then on the mount; the outcomes must be equal."""
        self.note(what)
        ref = outcome(fn, self.ref)
        with self.keeper.watchdog(what):
            mnt = outcome(fn, self.sut)
        self.note(f"  -> {str(ref)[:60]} / {str(mnt)[:60]}", log=False)
        assert ref == mnt, f"{what}: reference {ref!r}, mount {mnt!r}\n{self.history()}"
        return ref

    def both_fd(self, what: str, h: Handle, fn, *, allow=None):
        self.note(what)
        ref = outcome(fn, self.ref, h.ref)
        with self.keeper.watchdog(what):
            mnt = outcome(fn, self.sut, h.mnt)
        if ref != mnt and allow is not None and allow(ref, mnt):
            return ref, mnt
        assert ref == mnt, f"{what}: reference {ref!r}, mount {mnt!r}\n{self.history()}"
        return ref, mnt

    def note(self, what: str, *, log: bool = True) -> None:
        if log:
            self.log.append(what)
        if TRACE:  # follow a long run live (e.g. to see which operation hangs)
            with open(TRACE, "a", encoding="utf-8", errors="backslashreplace") as f:
                f.write(f"{self.exdir.decode()}: {what}\n")

    def history(self) -> str:
        return "operations of this example:\n  " + "\n  ".join(self.log[-40:])

    # -- path operations ------------------------------------------------------------------------
    @rule(data=st.data())
    @guard
    def write_whole(self, data):
        path = self.any_path(data)
        excl = data.draw(st.integers(0, 4), label="excl") == 0
        mode = data.draw(MODES, label="mode")
        content = data.draw(DATA, label="data")
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | (os.O_EXCL if excl else 0)

        def op(fs):
            fd = fs.open(path, flags, mode)
            try:
                n = fs.write(fd, content)
            except OSError:
                fs.close(fd)
                raise
            fs.close(fd)
            return n

        self.both(f"write_whole({path!r}, {_flag_names(flags)}, {mode:#o}, {len(content)} bytes)", op)

    @rule(data=st.data())
    @guard
    def write_at(self, data):
        path = self.existing_path(data, "fl")
        offset = data.draw(OFFSETS, label="offset")
        content = data.draw(DATA, label="data")
        rdwr = data.draw(st.booleans(), label="rdwr")

        def op(fs):
            fd = fs.open(path, os.O_RDWR if rdwr else os.O_WRONLY)
            try:
                n = fs.pwrite(fd, content, offset)
            except OSError:
                fs.close(fd)
                raise
            fs.close(fd)
            return n

        self.both(f"write_at({path!r}, offset={offset}, {len(content)} bytes)", op)

    @rule(data=st.data())
    @guard
    def append(self, data):
        path = self.existing_path(data, "fl")
        content = data.draw(DATA, label="data")

        def op(fs):
            fd = fs.open(path, os.O_WRONLY | os.O_APPEND)
            try:
                n = fs.write(fd, content)
            except OSError:
                fs.close(fd)
                raise
            fs.close(fd)
            return n

        self.both(f"append({path!r}, {len(content)} bytes)", op)

    @rule(data=st.data())
    @guard
    def truncate(self, data):
        path = self.existing_path(data, "fl")
        size = data.draw(SIZES, label="size")
        self.both(f"truncate({path!r}, {size})", lambda fs: fs.truncate(path, size))

    @rule(data=st.data())
    @guard
    def rename(self, data):
        src = self.existing_path(data)
        if data.draw(st.integers(0, 2), label="onto existing?") == 0:
            dst = self.existing_path(data)
        else:
            dst = self.new_path(data)
        self.both(f"rename({src!r}, {dst!r})", lambda fs: fs.rename(src, dst))

    @rule(data=st.data())
    @guard
    def mkdir(self, data):
        path = self.any_path(data)
        mode = data.draw(MODES, label="mode")
        self.both(f"mkdir({path!r}, {mode:#o})", lambda fs: fs.mkdir(path, mode))

    @rule(data=st.data())
    @guard
    def rmdir(self, data):
        path = self.existing_path(data, "d")
        self.both(f"rmdir({path!r})", lambda fs: fs.rmdir(path))

    @rule(data=st.data())
    @guard
    def unlink(self, data):
        path = self.existing_path(data)
        self.both(f"unlink({path!r})", lambda fs: fs.unlink(path))

    @rule(data=st.data())
    @guard
    def symlink(self, data):
        path = self.any_path(data)
        if self.tree and data.draw(st.booleans(), label="to an existing name?"):
            parent = path.rsplit(b"/", 1)[0] + b"/" if b"/" in path else b""
            inside = sorted(p[len(parent):] for p in self.tree if p.startswith(parent) and p != path)
            target = data.draw(st.sampled_from(inside), label="target") if inside else b"x"
        else:
            target = data.draw(symlink_targets, label="target")
        self.both(f"symlink({target!r}, {path!r})", lambda fs: fs.symlink(target, path))

    @rule(data=st.data())
    @guard
    def link(self, data):
        src = self.existing_path(data)
        dst = self.new_path(data) if data.draw(st.integers(0, 4), label="onto existing?") else self.existing_path(data)
        follow = data.draw(st.booleans(), label="follow")
        self.both(f"link({src!r}, {dst!r}, follow_symlinks={follow})",
                  lambda fs: fs.link(src, dst, follow_symlinks=follow))

    @rule(data=st.data())
    @guard
    def chmod(self, data):
        path = self.existing_path(data)
        mode = data.draw(MODES, label="mode")
        self.both(f"chmod({path!r}, {mode:#o})", lambda fs: fs.chmod(path, mode))

    @rule(data=st.data())
    @guard
    def utime(self, data):
        path = self.existing_path(data)
        atime = data.draw(TIMES, label="atime")
        mtime = data.draw(TIMES, label="mtime")
        follow = data.draw(st.booleans(), label="follow")
        self.explicit.add(mtime)

        def op(fs):
            fs.utime(path, ns=(atime, mtime), follow_symlinks=follow)
            st_ = fs.stat(path, follow_symlinks=follow)
            return st_.st_atime_ns, st_.st_mtime_ns

        self.both(f"utime({path!r}, ns=({atime}, {mtime}), follow_symlinks={follow})", op)

    # -- handles --------------------------------------------------------------------------------
    @precondition(lambda self: len(self.handles) < MAX_HANDLES)
    @rule(data=st.data())
    @guard
    def open_handle(self, data):
        path = self.existing_path(data, "fl") if data.draw(st.booleans(), label="file?") else self.any_path(data)
        flags = data.draw(st.sampled_from(ACCESS), label="access")
        for name in ("O_APPEND", "O_TRUNC", "O_CREAT", "O_EXCL"):
            if data.draw(st.integers(0, 3), label=name) == 0:
                flags |= getattr(os, name)
        mode = data.draw(MODES, label="mode") if flags & os.O_CREAT else 0o644
        what = f"open({path!r}, {_flag_names(flags)}, {mode:#o})"
        self.note(what)
        ref = outcome(self.ref.open, path, flags, mode)
        with self.keeper.watchdog(what):
            mnt = outcome(self.sut.open, path, flags, mode)
        if ref[0] == "ok" and mnt[0] == "ok":
            self.handles.append(Handle(ref[1], mnt[1], flags, path))
            self.log[-1] += f" -> h{len(self.handles) - 1}"
            return
        for fs, side in ((self.ref, ref), (self.sut, mnt)):
            if side[0] == "ok":
                fs.close(side[1])
        assert ref == mnt, f"{what}: reference {ref!r}, mount {mnt!r}\n{self.history()}"

    def pick_handle(self, data) -> tuple[int, Handle]:
        i = data.draw(st.integers(0, len(self.handles) - 1), label="handle")
        return i, self.handles[i]

    @precondition(lambda self: self.handles)
    @rule(data=st.data())
    @guard
    def handle_write(self, data):
        i, h = self.pick_handle(data)
        content = data.draw(DATA, label="data")
        if data.draw(st.booleans(), label="pwrite?"):
            offset = data.draw(OFFSETS, label="offset")
            self.both_fd(f"pwrite(h{i}, {len(content)} bytes, {offset})", h,
                         lambda fs, fd: fs.pwrite(fd, content, offset))
        else:
            self.both_fd(f"write(h{i}, {len(content)} bytes)", h, lambda fs, fd: fs.write(fd, content))

    @precondition(lambda self: self.handles)
    @rule(data=st.data())
    @guard
    def handle_read(self, data):
        i, h = self.pick_handle(data)
        n = data.draw(st.sampled_from([1, 10, 100, 5000, 100_000]), label="n")
        if data.draw(st.booleans(), label="pread?"):
            offset = data.draw(OFFSETS, label="offset")
            what, fn = f"pread(h{i}, {n}, {offset})", lambda fs, fd: fs.pread(fd, n, offset)
        else:
            what, fn = f"read(h{i}, {n})", lambda fs, fd: fs.read(fd, n)
        ref, mnt = self.both_fd(what, h, fn, allow=lambda ref, mnt: self._unread_after_unlink(h, ref, mnt))
        if mnt[0] == "ok":
            h.read_ok = True

    def _unread_after_unlink(self, h: Handle, ref, mnt) -> bool:
        """Documented limitation (arkerfs/fs/vfs.py ``read``): a handle without a write buffer
        reads the version pinned at its FIRST read; if the file lost its last name before that
        first read, there is nothing left to fetch and the read fails ENOENT."""
        return (ref[0] == "ok" and mnt == ("err", "ENOENT") and not h.read_ok
                and h.flags & os.O_ACCMODE == os.O_RDONLY and self.ref.fstat(h.ref).st_nlink == 0)

    @precondition(lambda self: self.handles)
    @rule(data=st.data())
    @guard
    def handle_truncate(self, data):
        i, h = self.pick_handle(data)
        size = data.draw(SIZES, label="size")
        self.both_fd(f"ftruncate(h{i}, {size})", h, lambda fs, fd: fs.ftruncate(fd, size))

    @precondition(lambda self: self.handles)
    @rule(data=st.data())
    @guard
    def handle_fsync(self, data):
        i, h = self.pick_handle(data)
        self.both_fd(f"fsync(h{i})", h, lambda fs, fd: fs.fsync(fd))

    @precondition(lambda self: self.handles)
    @rule(data=st.data())
    @guard
    def handle_fstat(self, data):
        i, h = self.pick_handle(data)

        def fn(fs, fd):
            s = fs.fstat(fd)
            nlink = s.st_nlink if not stat.S_ISDIR(s.st_mode) else None
            size = s.st_size if not stat.S_ISDIR(s.st_mode) else None
            return stat.S_IFMT(s.st_mode), oct(stat.S_IMODE(s.st_mode)), size, nlink

        self.both_fd(f"fstat(h{i})", h, fn)

    @precondition(lambda self: self.handles)
    @rule(data=st.data())
    @guard
    def handle_close(self, data):
        i, h = self.pick_handle(data)
        self.close_handle(i)

    def close_handle(self, i: int) -> None:
        h = self.handles.pop(i)
        self.note(f"close(h{i})")
        ref = outcome(self.ref.close, h.ref)
        with self.keeper.watchdog(f"close(h{i})"):
            mnt = outcome(self.sut.close, h.mnt)
        assert ref == mnt, f"close(h{i}): reference {ref!r}, mount {mnt!r}\n{self.history()}"

    def close_all(self) -> None:
        while self.handles:
            self.close_handle(len(self.handles) - 1)

    # -- remount --------------------------------------------------------------------------------
    @precondition(lambda self: self.since_remount >= self.keeper.remount_every)
    @rule()
    @guard
    def remount(self):
        self.note("remount")
        self.close_all()
        self.check_log()
        self.keeper.remount()
        self.sut = self.keeper.example(self.exdir, create=False)
        self.since_remount = 0
        self.compare_vm("after remount")

    # -- checks ---------------------------------------------------------------------------------
    @invariant()
    @guard
    def trees_agree(self):
        self.since_remount += 1
        self.note("(compare trees)", log=False)
        self.tree = snapshot(self.ref_root)
        with self.keeper.watchdog("reading the tree through the mount"):
            got = self.sut.snapshot()
        problems = diff_trees(self.tree, got, self.explicit, "mount")
        assert not problems, "\n".join(problems) + "\n" + self.history()

    def compare_vm(self, when: str) -> None:
        want = snapshot(self.ref_root)
        got = self.keeper.vm_snapshot(self.vm_root)
        problems = diff_trees(want, got, self.explicit, "VM")
        assert not problems, f"{when}:\n" + "\n".join(problems) + "\n" + self.history()
        found = self.keeper.canaries()
        assert not found, f"canary created: {found}\n{self.history()}"

    def check_log(self) -> None:
        problems = self.keeper.new_log_problems()
        assert not problems, "daemon log:\n" + "\n".join(problems) + "\n" + self.history()

    def teardown(self):
        try:
            if self.failed:
                self.keeper.new_log_problems()  # part of this example's failure
                return
            self.close_all()
            self.check_log()
            self.trees_agree()
            self.compare_vm("at the end of the example")
        except BaseException as exc:
            self.note(f"FAILED at teardown: {type(exc).__name__}: {str(exc)[:300]}", log=False)
            raise
        finally:
            for h in self.handles:  # only left after a failure
                for fs, fd in ((self.ref, h.ref), (self.sut, h.mnt)):
                    try:
                        fs.close(fd)
                    except OSError:
                        pass
            self.handles.clear()
            shutil.rmtree(self.ref_base, ignore_errors=True)


class Target(Protocol):
    remount_every: int

    def up(self) -> None: ...
    def example(self, exdir: bytes, create: bool = True): ...
    def remount(self) -> None: ...
    def watchdog(self, what: str): ...
    def vm_snapshot(self, vm_root: bytes) -> dict: ...
    def canaries(self) -> list[str]: ...
    def new_log_problems(self) -> list[str]: ...


class OsFS:
    """The os module on paths relative to ``root`` (bytes)."""

    def __init__(self, root: bytes) -> None:
        self.root = root

    def _p(self, path: bytes) -> bytes:
        return self.root + b"/" + path

    def open(self, path, flags, mode=0o777):
        return os.open(self._p(path), flags, mode)

    close, read, pread, write, pwrite = (staticmethod(os.close), staticmethod(os.read), staticmethod(os.pread),
                                         staticmethod(os.write), staticmethod(os.pwrite))
    ftruncate, fsync, fstat = staticmethod(os.ftruncate), staticmethod(os.fsync), staticmethod(os.fstat)

    def truncate(self, path, size):
        os.truncate(self._p(path), size)

    def rename(self, src, dst):
        os.rename(self._p(src), self._p(dst))

    def mkdir(self, path, mode=0o777):
        os.mkdir(self._p(path), mode)

    def rmdir(self, path):
        os.rmdir(self._p(path))

    def unlink(self, path):
        os.unlink(self._p(path))

    def symlink(self, target, path):
        os.symlink(target, self._p(path))

    def link(self, src, dst, *, follow_symlinks=True):
        os.link(self._p(src), self._p(dst), follow_symlinks=follow_symlinks)

    def chmod(self, path, mode):
        os.chmod(self._p(path), mode)

    def utime(self, path, *, ns, follow_symlinks=True):
        os.utime(self._p(path), ns=ns, follow_symlinks=follow_symlinks)

    def stat(self, path, *, follow_symlinks=True):
        return os.stat(self._p(path), follow_symlinks=follow_symlinks)

    def snapshot(self):
        return snapshot(self.root)
