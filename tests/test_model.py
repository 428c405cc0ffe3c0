"""Model-based test of a real mount: random operation sequences against the mount AND a plain
local directory (the reference), compared after every step; the VM's own truth is compared
through the API at the end of every example and after every remount.

One VM and one mount serve the whole run (mounting per example would be far too slow); each
hypothesis example works in a fresh subdirectory ``/home/user/<run>-exN`` of the mount and a
matching fresh local directory. ``remount`` really unmounts and mounts the same VM again, so
everything the mount acknowledged must have reached the VM.

Operations (paths are bytes from a hostile alphabet, see ``tests/modelfs.py``): create/overwrite
a whole file (O_CREAT|O_TRUNC, optionally O_EXCL), write at an offset, append, truncate by path,
rename (files, directories, over existing targets, into other directories, into itself),
mkdir, rmdir, unlink, symlink, hard link (following or not), chmod, utime with explicit ns
times (following or not), open a handle with random flags (O_RDONLY/O_WRONLY/O_RDWR, O_APPEND,
O_TRUNC, O_CREAT, O_EXCL), write/pwrite/read/pread/ftruncate/fsync/fstat/close through open
handles, and remount.

Compared after every step: each operation's result or exact errno; then the whole tree (types,
permission bits, sizes, contents, symlink targets, nlink of non-directories, which names are
hard links of one file, mtimes where the test set them explicitly). At the end of each example
and after each remount the same picture is taken of the VM through the API. Shell-injection
canaries hidden in names must never create ``/home/user/CANARY`` in the VM or ``/tmp/CANARY``
locally, and the daemon must log no WARNING/ERROR.

Tolerances (each deliberate, nothing else is loosened):
- mtimes are compared only when the test set them explicitly (utime) and nothing changed the
  node since; otherwise they are "now" on two clocks. Directory mtimes are compared only in the
  utime step itself: an upload renames a temporary file into the directory on the VM.
- atime only in the utime step's own result (any later read may move it).
- directory sizes and nlink are never compared (they depend on the backing filesystem).

CI runs a small derandomized budget. A longer hunt:

    ARKERFS_MODEL_EXAMPLES=500 ARKERFS_MODEL_STEPS=60 .venv/bin/python -m pytest tests/test_model.py

(``ARKERFS_MODEL_SEED=N`` picks a seed for a long run; without it a long run is random and
prints a ``@reproduce_failure`` blob on failure.)
"""

from __future__ import annotations

import functools
import os
import shutil
import stat
import tempfile
import uuid
from dataclasses import dataclass

import pytest
import hypothesis
from hypothesis import HealthCheck, reproduce_failure, seed, settings
from hypothesis import strategies as st
from hypothesis.stateful import (RuleBasedStateMachine, invariant, precondition, rule,
                                 run_state_machine_as_test)

from tests.modelfs import (MountKeeper, canaries, diff_trees, hostile_names, outcome, snapshot,
                           symlink_targets, too_long_names, vm_snapshot)

EXAMPLES = int(os.environ.get("ARKERFS_MODEL_EXAMPLES", "15"))
STEPS = int(os.environ.get("ARKERFS_MODEL_STEPS", "25"))
SEED = os.environ.get("ARKERFS_MODEL_SEED")
TRACE = os.environ.get("ARKERFS_MODEL_TRACE")  # a file to append every operation to, as it runs
DAEMON_ARGS = os.environ.get("ARKERFS_MODEL_DAEMON_ARGS", "").split()  # e.g. "--debug"
REPRODUCE = os.environ.get("ARKERFS_MODEL_REPRODUCE")  # the blob of a printed @reproduce_failure
LONG = "ARKERFS_MODEL_EXAMPLES" in os.environ or "ARKERFS_MODEL_STEPS" in os.environ
MAX_HANDLES = 4
REMOUNT_EVERY = 12  # at least this many steps between remounts (each costs ~1 s)

# The VM's user is unprivileged (see arkerfs/server/sandbox.py) while the reference directory is
# changed by root, so the owner always keeps rwx here: a mode that locks the owner out is answered
# EACCES by the VM and not by root's local disk (tested on its own in test_mount.py).
MODES = st.one_of(st.sampled_from([0o644, 0o600, 0o755, 0o700, 0o744, 0o711, 0o777]),
                  st.integers(0, 0o777), st.integers(0, 0o7777)).map(lambda mode: mode | 0o700)
SIZES = st.one_of(st.integers(0, 300), st.sampled_from([4095, 4096, 65535, 65536, 70001]))
OFFSETS = st.one_of(st.integers(0, 300), st.sampled_from([4095, 4096, 65535, 65536, 70000]))
DATA = st.one_of(st.binary(min_size=0, max_size=64),
                 st.binary(min_size=1, max_size=8).map(lambda b: b * 700))
# explicit times: whole seconds since before 1970 to 2242, with a nanosecond part
TIMES = st.builds(lambda s, ns: s * 10**9 + ns, st.integers(-2**31 + 1, 2**33), st.integers(0, 10**9 - 1))
ACCESS = [os.O_RDONLY, os.O_WRONLY, os.O_RDWR]

# ---------------------------------------------------------------------------------------------

_keeper: MountKeeper | None = None
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
    def __init__(self) -> None:
        super().__init__()
        global _counter
        _counter += 1
        self.keeper = _keeper
        self.keeper.up()
        self.exdir = f"{_run}-ex{_counter}".encode()
        self.ref_base = tempfile.mkdtemp(prefix="arkerfs-model-").encode()
        os.mkdir(self.mnt_root)
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
    def mnt_root(self) -> bytes:
        return self.keeper.path + b"/" + self.exdir

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
        """Run ``fn(root)`` on the reference, then on the mount; the outcomes must be equal."""
        self.note(what)
        ref = outcome(fn, self.ref_root + b"/")
        with self.keeper.watchdog(what):
            mnt = outcome(fn, self.mnt_root + b"/")
        self.note(f"  -> {str(ref)[:60]} / {str(mnt)[:60]}", log=False)
        assert ref == mnt, f"{what}: reference {ref!r}, mount {mnt!r}\n{self.history()}"
        return ref

    def both_fd(self, what: str, h: Handle, fn, *, allow=None):
        self.note(what)
        ref = outcome(fn, h.ref)
        with self.keeper.watchdog(what):
            mnt = outcome(fn, h.mnt)
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

        def op(root):
            fd = os.open(root + path, flags, mode)
            try:
                n = os.write(fd, content)
            except OSError:
                os.close(fd)
                raise
            os.close(fd)
            return n

        self.both(f"write_whole({path!r}, {_flag_names(flags)}, {mode:#o}, {len(content)} bytes)", op)

    @rule(data=st.data())
    @guard
    def write_at(self, data):
        path = self.existing_path(data, "fl")
        offset = data.draw(OFFSETS, label="offset")
        content = data.draw(DATA, label="data")
        rdwr = data.draw(st.booleans(), label="rdwr")

        def op(root):
            fd = os.open(root + path, os.O_RDWR if rdwr else os.O_WRONLY)
            try:
                n = os.pwrite(fd, content, offset)
            except OSError:
                os.close(fd)
                raise
            os.close(fd)
            return n

        self.both(f"write_at({path!r}, offset={offset}, {len(content)} bytes)", op)

    @rule(data=st.data())
    @guard
    def append(self, data):
        path = self.existing_path(data, "fl")
        content = data.draw(DATA, label="data")

        def op(root):
            fd = os.open(root + path, os.O_WRONLY | os.O_APPEND)
            try:
                n = os.write(fd, content)
            except OSError:
                os.close(fd)
                raise
            os.close(fd)
            return n

        self.both(f"append({path!r}, {len(content)} bytes)", op)

    @rule(data=st.data())
    @guard
    def truncate(self, data):
        path = self.existing_path(data, "fl")
        size = data.draw(SIZES, label="size")
        self.both(f"truncate({path!r}, {size})", lambda root: os.truncate(root + path, size))

    @rule(data=st.data())
    @guard
    def rename(self, data):
        src = self.existing_path(data)
        if data.draw(st.integers(0, 2), label="onto existing?") == 0:
            dst = self.existing_path(data)
        else:
            dst = self.new_path(data)
        self.both(f"rename({src!r}, {dst!r})", lambda root: os.rename(root + src, root + dst))

    @rule(data=st.data())
    @guard
    def mkdir(self, data):
        path = self.any_path(data)
        mode = data.draw(MODES, label="mode")
        self.both(f"mkdir({path!r}, {mode:#o})", lambda root: os.mkdir(root + path, mode))

    @rule(data=st.data())
    @guard
    def rmdir(self, data):
        path = self.existing_path(data, "d")
        self.both(f"rmdir({path!r})", lambda root: os.rmdir(root + path))

    @rule(data=st.data())
    @guard
    def unlink(self, data):
        path = self.existing_path(data)
        self.both(f"unlink({path!r})", lambda root: os.unlink(root + path))

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
        self.both(f"symlink({target!r}, {path!r})", lambda root: os.symlink(target, root + path))

    @rule(data=st.data())
    @guard
    def link(self, data):
        src = self.existing_path(data)
        dst = self.new_path(data) if data.draw(st.integers(0, 4), label="onto existing?") else self.existing_path(data)
        follow = data.draw(st.booleans(), label="follow")
        self.both(f"link({src!r}, {dst!r}, follow_symlinks={follow})",
                  lambda root: os.link(root + src, root + dst, follow_symlinks=follow))

    @rule(data=st.data())
    @guard
    def chmod(self, data):
        path = self.existing_path(data)
        mode = data.draw(MODES, label="mode")
        self.both(f"chmod({path!r}, {mode:#o})", lambda root: os.chmod(root + path, mode))

    @rule(data=st.data())
    @guard
    def utime(self, data):
        path = self.existing_path(data)
        atime = data.draw(TIMES, label="atime")
        mtime = data.draw(TIMES, label="mtime")
        follow = data.draw(st.booleans(), label="follow")
        self.explicit.add(mtime)

        def op(root):
            os.utime(root + path, ns=(atime, mtime), follow_symlinks=follow)
            st_ = os.stat(root + path, follow_symlinks=follow)
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
        ref = outcome(os.open, self.ref_root + b"/" + path, flags, mode)
        with self.keeper.watchdog(what):
            mnt = outcome(os.open, self.mnt_root + b"/" + path, flags, mode)
        if ref[0] == "ok" and mnt[0] == "ok":
            self.handles.append(Handle(ref[1], mnt[1], flags, path))
            self.log[-1] += f" -> h{len(self.handles) - 1}"
            return
        for side in (ref, mnt):
            if side[0] == "ok":
                os.close(side[1])
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
                         lambda fd: os.pwrite(fd, content, offset))
        else:
            self.both_fd(f"write(h{i}, {len(content)} bytes)", h, lambda fd: os.write(fd, content))

    @precondition(lambda self: self.handles)
    @rule(data=st.data())
    @guard
    def handle_read(self, data):
        i, h = self.pick_handle(data)
        n = data.draw(st.sampled_from([1, 10, 100, 5000, 100_000]), label="n")
        if data.draw(st.booleans(), label="pread?"):
            offset = data.draw(OFFSETS, label="offset")
            what, fn = f"pread(h{i}, {n}, {offset})", lambda fd: os.pread(fd, n, offset)
        else:
            what, fn = f"read(h{i}, {n})", lambda fd: os.read(fd, n)
        ref, mnt = self.both_fd(what, h, fn, allow=lambda ref, mnt: self._unread_after_unlink(h, ref, mnt))
        if mnt[0] == "ok":
            h.read_ok = True

    def _unread_after_unlink(self, h: Handle, ref, mnt) -> bool:
        """Documented limitation (arkerfs/fs/vfs.py ``read``): a handle without a write buffer
        reads the version pinned at its FIRST read; if the file lost its last name before that
        first read, there is nothing left to fetch and the read fails ENOENT."""
        return (ref[0] == "ok" and mnt == ("err", "ENOENT") and not h.read_ok
                and h.flags & os.O_ACCMODE == os.O_RDONLY and os.fstat(h.ref).st_nlink == 0)

    @precondition(lambda self: self.handles)
    @rule(data=st.data())
    @guard
    def handle_truncate(self, data):
        i, h = self.pick_handle(data)
        size = data.draw(SIZES, label="size")
        self.both_fd(f"ftruncate(h{i}, {size})", h, lambda fd: os.ftruncate(fd, size))

    @precondition(lambda self: self.handles)
    @rule(data=st.data())
    @guard
    def handle_fsync(self, data):
        i, h = self.pick_handle(data)
        self.both_fd(f"fsync(h{i})", h, os.fsync)

    @precondition(lambda self: self.handles)
    @rule(data=st.data())
    @guard
    def handle_fstat(self, data):
        i, h = self.pick_handle(data)

        def fn(fd):
            s = os.fstat(fd)
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
        ref = outcome(os.close, h.ref)
        with self.keeper.watchdog(f"close(h{i})"):
            mnt = outcome(os.close, h.mnt)
        assert ref == mnt, f"close(h{i}): reference {ref!r}, mount {mnt!r}\n{self.history()}"

    def close_all(self) -> None:
        while self.handles:
            self.close_handle(len(self.handles) - 1)

    # -- remount --------------------------------------------------------------------------------
    @precondition(lambda self: self.since_remount >= REMOUNT_EVERY)
    @rule()
    @guard
    def remount(self):
        self.note("remount")
        self.close_all()
        self.check_log()
        self.keeper.remount()
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
            got = snapshot(self.mnt_root)
        problems = diff_trees(self.tree, got, self.explicit, "mount")
        assert not problems, "\n".join(problems) + "\n" + self.history()

    def compare_vm(self, when: str) -> None:
        want = snapshot(self.ref_root)
        got = vm_snapshot(self.keeper.api, self.keeper.vm_id, self.vm_root)
        problems = diff_trees(want, got, self.explicit, "VM")
        assert not problems, f"{when}:\n" + "\n".join(problems) + "\n" + self.history()
        found = canaries(self.keeper.api, self.keeper.vm_id)
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
                for fd in (h.ref, h.mnt):
                    try:
                        os.close(fd)
                    except OSError:
                        pass
            self.handles.clear()
            shutil.rmtree(self.ref_base, ignore_errors=True)


def _settings() -> settings:
    common = dict(max_examples=EXAMPLES, stateful_step_count=STEPS, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck), print_blob=True)
    if LONG and SEED is None:
        return settings(**common)
    return settings(**common, derandomize=SEED is None)


@pytest.mark.timeout(max(300, EXAMPLES * STEPS * 2))
def test_mount_behaves_like_a_local_directory(server):
    global _keeper
    _keeper = MountKeeper(server, *DAEMON_ARGS)
    try:
        machine = FsModel
        if SEED is not None:
            machine = seed(int(SEED))(FsModel)
        if REPRODUCE:
            machine = reproduce_failure(hypothesis.__version__, REPRODUCE)(machine)
        run_state_machine_as_test(machine, settings=_settings())
    except BaseException:
        keeper, _keeper = _keeper, None
        try:
            keeper.down()
        except AssertionError:
            pass  # the test's own failure is the one to report
        raise
    keeper, _keeper = _keeper, None
    keeper.down()
