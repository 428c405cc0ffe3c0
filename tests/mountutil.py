"""Real mounts for tests: ``arkerfs mount --foreground`` in a subprocess against the session server.

``mounted(server, ...)`` forks a fresh VM, mounts it on a new directory, waits until the mount is
live (failing fast, with the daemon's log, if the daemon dies), yields a ``Mount`` and ALWAYS
tears down: ``fusermount3 -u`` (then ``-z``), wait for the daemon (terminate/kill if it hangs),
assert nothing is left mounted, and fail if the daemon's log has a WARNING/ERROR/Traceback that
the test did not whitelist with ``Mount.allow_log(pattern)``.

The API key reaches the daemon through ARKER_API_KEY (or a 0600 key file), never argv. If FUSE
is unusable the tests FAIL: a skipped mount suite would hide a broken CI machine.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field

import pytest
import trio

from arkerfs.client import Arker
from arkerfs.mount import runtime

PROBLEM = re.compile(r" (WARNING|ERROR|CRITICAL) |Traceback")
# libfuse logs at ERROR when the kernel no longer waits for a reply (a release or releasedir
# of a file its process closed on exit): the operation was done, only the answer had no taker.
HARMLESS = re.compile(r"ERROR pyfuse3: fuse_release(dir)?\(\): fuse_reply_\* failed with No such file or directory")


def require_fuse() -> None:
    if shutil.which("fusermount3") is None:
        pytest.fail("fusermount3 is missing: install fuse3 (make setup)")
    try:
        os.close(os.open("/dev/fuse", os.O_RDWR))
    except OSError as exc:
        pytest.fail(f"/dev/fuse is unusable: {exc}")


class Api:
    """Synchronous access to the session server's API, to check remote truth."""

    def __init__(self, server) -> None:
        self.server = server

    def _do(self, fn):
        settle_write_back()  # the VM is looked at as a user would after `arkerfs sync`

        async def main():
            async with Arker(self.server.api_key, base_url=self.server.base_url,
                             list_base_url=self.server.base_url) as arker:
                return await fn(arker)

        return trio.run(main)

    def fork(self, name: str | None = None) -> str:
        return self._do(lambda a: _fork(a, name))

    def run(self, vm_id: str, command: str):
        return self._do(lambda a: a.vm(vm_id).run(command, session_id=3, timeout=60))

    def read_file(self, vm_id: str, path: str) -> bytes:
        return self._do(lambda a: a.vm(vm_id).sync.read_file(path))

    def write_file(self, vm_id: str, path: str, data: bytes) -> None:
        self._do(lambda a: a.vm(vm_id).sync.write_file(path, data))

    def sh(self, vm_id: str, command: str) -> str:
        """Run ``command`` in the VM, assert success, return stdout as text."""
        result = self.run(vm_id, command)
        assert result.exit_code == 0, (command, result.stderr.decode(errors="replace"))
        return result.stdout.decode()


async def _fork(arker, name):
    vm = await arker.vm("arkuntu").fork(name=name)
    return vm.id


@dataclass
class Mount:
    path: str
    vm_id: str
    log_path: str
    proc: subprocess.Popen
    spool_dir: str
    allowed: list[re.Pattern] = field(default_factory=list)
    expect_exit: int | None = 0
    write_back: bool = False  # mounted in write-back mode (the default)

    def allow_log(self, pattern: str) -> None:
        """Whitelist daemon log lines matching ``pattern`` (regex) for this mount."""
        self.allowed.append(re.compile(pattern))

    def p(self, *parts: str) -> str:
        return os.path.join(self.path, *parts)

    def log(self) -> str:
        with open(self.log_path, encoding="utf-8", errors="replace") as f:
            return f.read()


def daemon_command(vm: str, mnt: str, base_url: str, log_path: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "arkerfs", "mount", "--foreground", "--base-url", base_url,
            "--log-file", log_path, *extra, vm, mnt]


def wait_for_mount(proc: subprocess.Popen, mnt: str, log_path: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"mount daemon exited with {proc.returncode} before mounting:\n{_read(log_path)}")
        if runtime.mount_entry(mnt) is not None:
            return
        time.sleep(0.05)
    pytest.fail(f"no mount at {mnt} after {timeout} s:\n{_read(log_path)}")


def teardown(proc: subprocess.Popen, mnt: str) -> list[str]:
    """Unmount and reap no matter what state things are in; returns what went wrong."""
    problems = []
    if runtime.mount_entry(mnt) is not None:
        done = subprocess.run(["fusermount3", "-u", mnt], capture_output=True, text=True)
        if done.returncode != 0:
            problems.append(f"fusermount3 -u failed: {done.stderr.strip()}")
            subprocess.run(["fusermount3", "-u", "-z", mnt], capture_output=True)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        problems.append("daemon did not exit after unmount; killed")
        proc.send_signal(signal.SIGUSR1)  # stacks into its log
        time.sleep(0.5)
        proc.kill()
        proc.wait()
    if runtime.mount_entry(mnt) is not None:
        subprocess.run(["fusermount3", "-u", "-z", mnt], capture_output=True)
        problems.append("still mounted after the daemon exited")
    assert runtime.mount_entry(mnt) is None, f"{mnt} is still mounted"
    with contextlib.suppress(OSError):
        os.rmdir(mnt)
    return problems


# Live write-back mounts: what a test reads of the VM through ``Api`` is read after they have
# pushed everything pending, as a user would after ``arkerfs sync``.
_WRITE_BACK: list[tuple[Mount, str]] = []


def settle(mount: Mount, runtime_dir: str) -> None:
    """``arkerfs sync MOUNT``, in-process: returns once everything pending is in the VM."""
    from arkerfs.mount.status import SyncRequest

    saved = os.environ.get("XDG_RUNTIME_DIR")
    os.environ["XDG_RUNTIME_DIR"] = runtime_dir  # where the daemon's socket is
    try:
        with SyncRequest(mount.path) as request:
            answer = request.answer(300)
    finally:
        if saved is None:
            del os.environ["XDG_RUNTIME_DIR"]
        else:
            os.environ["XDG_RUNTIME_DIR"] = saved
    assert answer is not None and answer.get("ok"), f"arkerfs sync of {mount.path}: {answer}"


def settle_write_back() -> None:
    for mount, runtime_dir in list(_WRITE_BACK):
        if mount.proc.poll() is None and runtime.mount_entry(mount.path) is not None:
            settle(mount, runtime_dir)


def fsync_dir(path: str) -> None:
    """fsync of a directory: in write-back mode, returns once its entries are in the VM."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def is_write_back(args) -> bool:
    """Whether ``arkerfs mount`` with these arguments writes back (the default)."""
    return not {"--write-through", "--read-only"} & set(args)


def errno_of(fn, *args) -> int:
    """The errno ``fn(*args)`` fails with (a test failure when it succeeds)."""
    with pytest.raises(OSError) as info:
        fn(*args)
    return info.value.errno


def log_problems(text: str, allowed: list[re.Pattern]) -> list[str]:
    return [line for line in text.splitlines()
            if PROBLEM.search(line) and not HARMLESS.search(line) and not any(p.search(line) for p in allowed)]


@contextlib.contextmanager
def mounted(server, *extra_args: str, vm_id: str | None = None, key_file: bool = False,
            state_home: str | None = None, watch: bool = False):
    """Mount a fresh fork (or ``vm_id``) of the session server; see the module docstring.
    ``state_home``: the XDG state directory (where write-back journals live), to share one
    between mounts (default: the mount's own temporary directory). ``watch``: with the change
    watcher (the default for users); without it unless asked for (``--no-watch``), so that
    what other tests count and time is the mount's own work (the watcher's tests ask)."""
    require_fuse()
    api = Api(server)
    vm_id = vm_id or api.fork()
    workdir = tempfile.mkdtemp(prefix="arkerfs-test-")
    mnt = os.path.realpath(os.path.join(workdir, "mnt"))
    os.mkdir(mnt)
    log_path = os.path.join(workdir, "daemon.log")
    env = {**os.environ, "XDG_RUNTIME_DIR": workdir, "XDG_CACHE_HOME": workdir,
           "XDG_STATE_HOME": state_home or workdir}
    env.pop("ARKER_API_KEY", None)
    args = list(extra_args) + ([] if watch or "--no-watch" in extra_args else ["--no-watch"])
    if key_file:
        key_path = os.path.join(workdir, "key")
        fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.write(fd, server.api_key.encode())
        os.close(fd)
        args += ["--api-key-file", key_path]
    else:
        env["ARKER_API_KEY"] = server.api_key
    proc = subprocess.Popen(daemon_command(vm_id, mnt, server.base_url, log_path, *args), env=env,
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    spool = os.path.join(workdir, "arkerfs", "spool", runtime.mount_key(mnt))  # XDG_CACHE_HOME above
    mount = Mount(mnt, vm_id, log_path, proc, spool)
    failed = True
    write_back = is_write_back(args)
    try:
        wait_for_mount(proc, mnt, log_path)
        if write_back:
            mount.write_back = True
            _WRITE_BACK.append((mount, workdir))
        yield mount
        failed = False
    finally:
        if write_back:
            _WRITE_BACK[:] = [(m, d) for m, d in _WRITE_BACK if m is not mount]
        problems = teardown(proc, mnt)
        text = _read(log_path)
        shutil.rmtree(workdir, ignore_errors=True)
        if not failed:  # don't mask the test's own failure
            problems += [f"log: {line}" for line in log_problems(text, mount.allowed)]
            if mount.expect_exit is not None and proc.returncode != mount.expect_exit:
                problems.append(f"daemon exit status {proc.returncode}, expected {mount.expect_exit}")
            if problems:
                pytest.fail("mount teardown: " + "; ".join(problems) + f"\n--- daemon log ---\n{text}")


def _read(path: str) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:
        return "(no log)"
