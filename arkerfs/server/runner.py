"""Run commands in a VM: ``bash -c`` under bubblewrap, with emulated persistent sessions.

Every run is a fresh sandbox (PROTOCOL.md 9; the layout is in sandbox.py): an allow-list of
read-only system directories, the VM's home at ``/home/user``, a private ``/tmp``, new user,
network and PID namespaces and no capabilities. Because the sandbox has its own PID namespace, everything a command started dies with it:
when the command ends, or when a timeout SIGKILLs bwrap's process group.

A real VM keeps one shell per session. Here a session is just ``{cwd, exported env}``: the
wrapper restores them, runs the command in the same shell (so ``cd``/``export`` work), and an
EXIT trap writes ``$PWD`` and ``env -0`` to an inherited temp file that the server reads back.
"""

from __future__ import annotations

import base64
import os
import shlex
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import trio

from arkerfs.protocol import HOME
from arkerfs.server.errors import ApiError
from arkerfs.server.sandbox import SANDBOX_USER, Sandbox
from arkerfs.server.spawn import Child, spawn

OUTPUT_CAP = 8 * 1024 * 1024
STATE_CAP = 1024 * 1024
STATE_FD = 201  # the wrapper's copy of the state file; high so user scripts rarely collide
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
BASE_ENV = {
    "HOME": HOME, "PATH": PATH, "SHELL": "/bin/bash", "USER": SANDBOX_USER, "LOGNAME": SANDBOX_USER,
    "LANG": "C.UTF-8", "TERM": "dumb",
}
# Set by bash itself on every start; carrying them over would make them drift (SHLVL grows).
_VOLATILE_ENV = {"_", "SHLVL", "OLDPWD"}


@dataclass
class Session:
    cwd: str = HOME
    env: dict[str, str] = field(default_factory=lambda: dict(BASE_ENV))


@dataclass
class Output:
    data: bytearray = field(default_factory=bytearray)
    truncated: bool = False

    def field(self, name: str) -> dict:
        """``name``, ``name_encoding`` and, when cut, ``name_truncated`` (PROTOCOL.md 7.6)."""
        raw = bytes(self.data)
        try:
            out = {name: raw.decode("utf-8"), f"{name}_encoding": "utf-8"}
        except UnicodeDecodeError:
            out = {name: base64.b64encode(raw).decode("ascii"), f"{name}_encoding": "base64"}
        if self.truncated:
            out[f"{name}_truncated"] = True
        return out


@dataclass
class RunResult:
    stdout: Output
    stderr: Output
    exit_code: int
    duration_ms: float
    cwd: str
    timed_out: bool


def session_key(value: object) -> str:
    """Normalise ``session_id``: an int or digit string is an index, other strings are names."""
    if value is None:
        return "0"
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ApiError("bad_request", "session_id must be an integer or a string")
    if isinstance(value, int):
        if value < 0:
            raise ApiError("bad_request", "session_id must not be negative")
        return str(value)
    if value.isascii() and value.isdigit():
        return str(int(value))
    if not value or len(value) > 128:
        raise ApiError("bad_request", "session_id string must be 1-128 characters")
    return value


def _wrapper(state_fd: int, cwd: str, command: str) -> str:
    """The script bash runs: restore cwd, arm the state trap, then the command itself."""
    # One line, so the user's first line is reported as line 2 in bash's error messages.
    return (
        f"exec {STATE_FD}>&{state_fd} {state_fd}>&-; "
        f"trap '{{ printf \"%s\\0\" \"$PWD\"; /usr/bin/env -0; }} >&{STATE_FD} 2>/dev/null' EXIT; "
        f"cd -- {shlex.quote(cwd)} 2>/dev/null || cd {HOME}\n"
        f"{command}"
    )


def _parse_state(raw: bytes) -> tuple[str, dict[str, str]] | None:
    """(cwd, env) from the trap's output, or None if the shell never got to write it."""
    if not raw or len(raw) >= STATE_CAP:
        return None
    cwd, *entries = raw.split(b"\0")
    env = {}
    for entry in entries:
        key, sep, value = entry.partition(b"=")
        if sep and key:
            env[key.decode("utf-8", "surrogateescape")] = value.decode("utf-8", "surrogateescape")
    for key in _VOLATILE_ENV:
        env.pop(key, None)
    return cwd.decode("utf-8", "surrogateescape"), env


async def _drain(stream: trio.abc.ReceiveStream, out: Output) -> None:
    """Read a pipe to EOF, keeping the first OUTPUT_CAP bytes."""
    while chunk := await stream.receive_some(65536):
        room = OUTPUT_CAP - len(out.data)
        if len(chunk) > room:
            out.truncated = True
        out.data += chunk[: max(room, 0)]


class Runner:
    """Runs commands for every VM; owns the sessions and their busy flags."""

    def __init__(self, sandbox: Sandbox, work_dir: Path, ceiling: float) -> None:
        self._sandbox = sandbox
        self._work = work_dir
        self._ceiling = ceiling
        self._sessions: dict[tuple[str, str], Session] = {}
        self._busy: set[tuple[str, str]] = set()

    @contextmanager
    def claim(self, vm_id: str, key: str) -> Iterator[Session]:
        """The session, held exclusively; a second claim answers 409 vm_busy (run never starts)."""
        ident = (vm_id, key)
        if ident in self._busy:
            raise ApiError("vm_busy", f"session {key} of VM {vm_id} is busy running another command")
        self._busy.add(ident)
        try:
            yield self._sessions.setdefault(ident, Session())
        finally:
            self._busy.discard(ident)

    def forget_vm(self, vm_id: str) -> None:
        for ident in [i for i in self._sessions if i[0] == vm_id]:
            del self._sessions[ident]

    async def run(self, home: str, session: Session, command: str, timeout: float | None) -> RunResult:
        """Run ``command`` in ``session``; returns even on timeout (exit -1, timed_out)."""
        limit = min(timeout, self._ceiling) if timeout else self._ceiling
        stdout, stderr = Output(), Output()
        started = time.monotonic()
        with tempfile.TemporaryFile(dir=self._work) as state:
            proc = await spawn(
                self._sandbox.argv(home, ["/bin/bash", "-c", _wrapper(state.fileno(), session.cwd, command)]),
                stdin=subprocess.DEVNULL, env=session.env, cwd="/", start_new_session=True,
                pass_fds=(state.fileno(),),
            )
            try:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(_drain, proc.stdout, stdout)
                    nursery.start_soon(_drain, proc.stderr, stderr)
                    with trio.move_on_after(limit) as deadline:
                        await proc.wait()
                    if deadline.cancelled_caught:
                        _kill_group(proc)
                        await proc.wait()
            finally:
                if proc.returncode is None:
                    _kill_group(proc)
                    with trio.CancelScope(shield=True):
                        await proc.wait()
                await proc.aclose()
            timed_out = deadline.cancelled_caught
            state.seek(0)
            saved = None if timed_out else _parse_state(state.read(STATE_CAP))
        if saved is not None:
            session.cwd, session.env = saved
        if timed_out:
            if stderr.data and not stderr.data.endswith(b"\n"):
                stderr.data += b"\n"
            stderr.data += f"arker: command timed out after {limit:g} s\n".encode()
        code = proc.returncode
        return RunResult(
            stdout=stdout, stderr=stderr,
            exit_code=-1 if timed_out else (code if code >= 0 else 128 - code),
            duration_ms=round((time.monotonic() - started) * 1000, 1),
            cwd=session.cwd, timed_out=timed_out,
        )


def _kill_group(proc: Child) -> None:
    """SIGKILL bwrap's process group; the sandbox's PID namespace then takes every child down."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
