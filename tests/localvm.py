"""LocalVM: a fake of the SDK's ``VM`` for ``RemoteFS``, over a local directory as /home/user.

It lets the filesystem model (``VFS`` over ``RemoteFS``) run in-process with no server, no HTTP
and no kernel, while still executing the SAME shell fragments the mount sends:

- ``run(command, session_id, timeout)`` runs the command with bash under bubblewrap with the
  fake's home bound at /home/user (in the local server's own sandbox, a private /tmp), kills it at
  ``timeout`` (exit -1, ``timed_out``), and answers a second concurrent run on one session with
  ``vm_busy`` like the server. By default each session is one long-lived sandboxed bash that
  runs every command in a fresh subshell (``persistent``; ~6 ms a run here instead of ~9 ms for
  a new sandbox per run, ``persistent=False``, which is what the local server does). Sessions
  keep no cwd/env between runs: RemoteFS's scripts are self-contained subshells with absolute
  paths, so nothing needs it.
- ``sync.open_read`` / ``sync.write_file`` read and install files with the local server's own
  code (``arkerfs.server.confine`` path resolution, ``arkerfs.server.vmfiles.install``: temp
  file + rename, a replaced file keeps its mode, missing parents made), behind the client's
  path rules (``check_sync_path``). Reads up to ``inline_read_limit`` are inline; larger ones
  return a ranged file whose ``read_range`` re-opens the path at call time, as a presigned GET.
- ``calls`` counts runs, sync reads, ranged reads and sync writes (for budgets).

Errors are the SDK's ``ArkerError`` with the codes the server would send.
"""

from __future__ import annotations

import collections
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import trio

from arkerfs.client import ArkerError, RemoteFile
from arkerfs.client.models import RunResult
from arkerfs.protocol import CLIENT_MAX_FILE_BYTES, HOME, PathRuleError, check_sync_path
from arkerfs.server import confine, vmfiles
from arkerfs.server.runner import BASE_ENV
from arkerfs.server.sandbox import Sandbox

BWRAP = shutil.which("bwrap") or "bwrap"
INLINE_READ_LIMIT = 64 * 1024  # the test server's (tests/conftest.py): large reads are ranged


class LocalVM:
    """See the module docstring. ``base`` is a private directory; the home is ``base/home``
    (the server's temp files for atomic installs go to ``base/tmp``)."""

    def __init__(self, base: str, *, inline_read_limit: int = INLINE_READ_LIMIT, persistent: bool = True) -> None:
        self.base = base
        self.home = os.path.join(base, "home")
        os.makedirs(self.home, exist_ok=True)
        self.vm_id = "local-" + os.path.basename(base)
        self.calls: collections.Counter[str] = collections.Counter()
        self.run_seconds = 0.0  # wall time spent in runs
        self.sync = LocalSync(self, inline_read_limit)
        self.persistent = persistent
        self._busy: set[str] = set()
        self._shells: dict[str, _Shell] = {}

    def __repr__(self) -> str:
        return f"LocalVM({self.home!r})"

    async def run(self, command: str, session_id: int | str = 0, timeout: float | None = None) -> RunResult:
        key = str(session_id)
        if key in self._busy:
            raise ArkerError("vm_busy", f"session {key} is busy running another command", 409)
        self._busy.add(key)
        self.calls["run"] += 1
        started = time.monotonic()
        try:
            if self.persistent:
                shell = self._shells.get(key)
                if shell is None:
                    shell = self._shells[key] = await _Shell.start(self.home, os.path.join(self.base, "ipc", key))
                out, err, code, timed_out = await shell.run(command, timeout)
                if shell.dead:
                    del self._shells[key]
            else:
                out, err, code, timed_out = await _run_once(self.home, command, timeout)
        finally:
            self._busy.discard(key)
            self.run_seconds += time.monotonic() - started
        if timed_out:
            err += f"arker: command timed out after {timeout:g} s\n".encode()
        return RunResult(stdout=out, stderr=err, exit_code=-1 if timed_out else code,
                         duration_ms=round((time.monotonic() - started) * 1000, 1),
                         session_id=key, cwd=HOME, timed_out=timed_out)

    async def aclose(self) -> None:
        """Stop the persistent shells (a closed LocalVM starts new ones if used again)."""
        shells, self._shells = self._shells, {}
        for shell in shells.values():
            await shell.kill()

    async def __aenter__(self) -> LocalVM:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


_SANDBOX: Sandbox | None = None


def _sandbox(home: str, *extra: str) -> list[str]:
    """The local server's own sandbox (``arkerfs.server.sandbox``: no capabilities, user ``user``,
    the home at /home/user, a private /tmp), so runs here answer as the server's do; ``extra``
    bwrap options go last, and the caller appends the command."""
    global _SANDBOX
    if _SANDBOX is None:
        _SANDBOX = Sandbox(BWRAP, Path(tempfile.mkdtemp(prefix="localvm-etc-")))
    return _SANDBOX.argv(home, list(extra))


async def _run_once(home: str, command: str, timeout: float | None) -> tuple[bytes, bytes, int, bool]:
    """One fresh sandbox for one run, as the local server does (slower: ~3 ms more a run)."""
    proc = await trio.lowlevel.open_process(
        [*_sandbox(home), "bash", "-c", command], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, env=BASE_ENV, cwd="/", start_new_session=True)
    out, err = bytearray(), bytearray()
    timed_out = False
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_drain, proc.stdout, out)
            nursery.start_soon(_drain, proc.stderr, err)
            with trio.move_on_after(timeout or float("inf")) as deadline:
                await proc.wait()
            if deadline.cancelled_caught:
                timed_out = True
                _kill_group(proc)
                await proc.wait()
    finally:
        if proc.returncode is None:
            _kill_group(proc)
            with trio.CancelScope(shield=True):
                await proc.wait()
    return bytes(out), bytes(err), _status(proc.returncode), timed_out


class _Shell:
    """One long-lived bash in one sandbox (per session), sourcing each command in a subshell:
    ``( . script ) >out 2>err </dev/null; echo $?``. Saves the sandbox and bash start-up of each
    run; a subshell keeps runs from affecting each other. A timeout kills the whole sandbox
    (``dead``: the next run starts a new one)."""

    IPC = "/tmp/localvm-ipc"  # the ipc directory's path inside the sandbox

    def __init__(self, proc: trio.Process, ipc: str) -> None:
        self.proc = proc
        self.ipc = ipc
        self.dead = False
        self._pending = bytearray()

    @classmethod
    async def start(cls, home: str, ipc: str) -> _Shell:
        os.makedirs(ipc, mode=0o700, exist_ok=True)
        proc = await trio.lowlevel.open_process(
            [*_sandbox(home, "--bind", ipc, cls.IPC), "bash", "--noprofile", "--norc"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            env=BASE_ENV, cwd="/", start_new_session=True)
        return cls(proc, ipc)

    async def run(self, command: str, timeout: float | None) -> tuple[bytes, bytes, int, bool]:
        with open(os.path.join(self.ipc, "script"), "w", encoding="utf-8", errors="surrogateescape") as f:
            f.write(command)
        d = self.IPC
        line = f"( . {d}/script ) >{d}/out 2>{d}/err </dev/null; echo $?\n"
        try:
            with trio.move_on_after(timeout or float("inf")) as deadline:
                await self.proc.stdin.send_all(line.encode())
                status = await self._line()
        except BaseException:
            await self.kill()
            raise
        if deadline.cancelled_caught:
            await self.kill()
            return await trio.to_thread.run_sync(self._outputs) + (-1, True)
        return await trio.to_thread.run_sync(self._outputs) + (_status(int(status)), False)

    async def _line(self) -> bytes:
        while b"\n" not in self._pending:
            chunk = await self.proc.stdout.receive_some(4096)
            if not chunk:
                raise RuntimeError("the LocalVM shell died")
            self._pending += chunk
        line, _, rest = bytes(self._pending).partition(b"\n")
        self._pending = bytearray(rest)
        return line

    def _outputs(self) -> tuple[bytes, bytes]:
        found = []
        for name in ("out", "err"):
            try:
                with open(os.path.join(self.ipc, name), "rb") as f:
                    found.append(f.read())
            except FileNotFoundError:
                found.append(b"")
        return found[0], found[1]

    async def kill(self) -> None:
        self.dead = True
        _kill_group(self.proc)
        with trio.CancelScope(shield=True):
            await self.proc.wait()
            for stream in (self.proc.stdin, self.proc.stdout):
                await stream.aclose()


def _status(code: int) -> int:
    return code if code >= 0 else 128 - code


class LocalSync:
    """``vm.sync`` of a LocalVM: the client's checks, then the server's file code, in a thread."""

    def __init__(self, vm: LocalVM, inline_read_limit: int) -> None:
        self._vm = vm
        self.inline_read_limit = inline_read_limit

    async def open_read(self, path: str):
        path = _checked(path)
        self._vm.calls["sync_read"] += 1
        fd, size = await trio.to_thread.run_sync(_open_and_size, self._vm.home, path)
        if size > CLIENT_MAX_FILE_BYTES:
            os.close(fd)
            raise ArkerError("payload_too_large", f"file is {size} bytes", 413)
        if size > self.inline_read_limit:
            return LocalRangedFile(self._vm, path, fd, size)
        data = await trio.to_thread.run_sync(_read_and_close, fd)
        return RemoteFile(None, path=path, size=len(data), content=data)

    async def read_file(self, path: str) -> bytes:
        return await (await self.open_read(path)).read_all()

    async def write_file(self, path: str, data) -> None:
        path = _checked(path)
        if isinstance(data, str):
            data = data.encode()
        elif isinstance(data, os.PathLike):
            with open(data, "rb") as f:
                data = f.read()
        data = bytes(data)
        if not data:
            raise ArkerError("bad_request", "write_file: empty data cannot be sent through sync", 0)
        if len(data) > CLIENT_MAX_FILE_BYTES:
            raise ArkerError("payload_too_large", f"write_file: {len(data)} bytes is over the limit", 0)
        self._vm.calls["sync_write"] += 1
        await trio.to_thread.run_sync(_install, self._vm.home, path, data)


class LocalRangedFile:
    """The answer to a large sync read, like a presigned ``RemoteFile``: it serves the version
    that was there at ``open_read`` (it holds that file open, as the server's URL does)."""

    inline = False
    expired = False

    def __init__(self, vm: LocalVM, path: str, fd: int, size: int) -> None:
        self._vm = vm
        self.path = path
        self.size = size
        self._fd = fd

    def __del__(self) -> None:
        os.close(self._fd)

    def __repr__(self) -> str:
        return f"LocalRangedFile(path={self.path!r}, size={self.size})"

    def continues(self, previous) -> None:
        """A renewed URL (never needed here: these do not expire)."""

    async def read_range(self, offset: int, length: int) -> bytes:
        chunks = bytearray()
        await self.read_range_into(offset, length, lambda position, data: chunks.extend(data))
        return bytes(chunks)

    async def read_range_into(self, offset: int, length: int, sink) -> int:
        if offset < 0 or length < 0:
            raise ValueError("offset and length must be non-negative")
        end = min(offset + length, self.size)
        if offset >= end:
            return 0
        self._vm.calls["ranged_read"] += 1
        data = await trio.to_thread.run_sync(os.pread, self._fd, end - offset, offset)
        sink(offset, data)
        return len(data)

    async def read_all(self) -> bytes:
        return await self.read_range(0, self.size)


# -- the server's file code, mapped to the SDK's errors ----------------------------------------

def _checked(path: str) -> str:
    try:
        return check_sync_path(path)
    except PathRuleError as exc:
        raise ArkerError("bad_request", str(exc), 0) from None


def _confined(fn, *args):
    try:
        return fn(*args)
    except confine.ConfineError as exc:
        raise ArkerError(exc.code, exc.message, 404 if exc.code == "not_found" else 400) from None


def _open_and_size(home: str, path: str) -> tuple[int, int]:
    fd = _confined(confine.open_for_read, home, path)
    return fd, os.fstat(fd).st_size


def _read_and_close(fd: int) -> bytes:
    try:
        return vmfiles.read_all(fd)
    finally:
        os.close(fd)


def _install(home: str, path: str, data: bytes) -> None:
    try:
        _confined(confine.check_lengths, path)
        _confined(vmfiles.install, home, path, data)
    except OSError as exc:  # per-entry errors come back with HTTP 200
        raise ArkerError("internal", f"storage failure writing {path}: {exc.strerror}", 200) from None


async def _drain(stream: trio.abc.ReceiveStream, out: bytearray) -> None:
    while chunk := await stream.receive_some(65536):
        out += chunk


def _kill_group(proc: trio.Process) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
