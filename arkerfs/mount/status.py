"""The daemon's private status channel: a Unix socket that answers one JSON object per connection.

The socket is ``<runtime dir>/<mount key>.sock`` (see ``runtime``), mode 0600 in a 0700
directory, and a connection from another user (other than root) is closed unanswered
(``SO_PEERCRED``). Asking never costs an API call and never touches the mounted tree, so
``arkerfs status``/``umount`` answer even when the VM does not.

Wire: the client sends one line and reads one JSON object, then EOF:

- ``status``: the snapshot (``MountReport.snapshot``), at once.
- ``sync``: the daemon pushes everything pending now (``VFS.push_all``) and answers once done:
  ``{"ok": true}``, or ``{"ok": false, "failed": [{"path": ..., "error": ...}, ...]}``. This may
  take long (an outage is waited out); ``status`` keeps being answered meanwhile, which is how
  ``arkerfs sync`` shows the pushes draining. A client that goes away does not stop the push.

Anything else, or a request the daemon cannot serve, gets ``{"error": "..."}``.
"""

from __future__ import annotations

import json
import logging
import os
import select
import socket
import struct
from collections.abc import Awaitable, Callable
from pathlib import Path

import trio

from arkerfs.mount import runtime

log = logging.getLogger(__name__)

MAX_REQUEST = 256
ANSWER_TIMEOUT = 5.0


def socket_path(mountpoint: str) -> Path:
    return runtime.runtime_dir() / f"{runtime.mount_key(mountpoint)}.sock"


# ``sync``: push everything pending; returns (VM path, error text) for what could not be pushed
SyncCallable = Callable[[], Awaitable[list[tuple[str, str]]]]


async def serve_status(mountpoint: str, snapshot: Callable[[], dict], *, sync: SyncCallable | None = None,
                       task_status=trio.TASK_STATUS_IGNORED) -> None:
    """Serve ``snapshot()`` (and ``sync()``, if given) on the mount's socket until cancelled;
    removes the socket at the end."""
    path = socket_path(mountpoint)
    path.unlink(missing_ok=True)  # left by a daemon that died
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o177)
    try:
        await sock.bind(str(path))
    finally:
        os.umask(old_umask)
    sock.listen(16)
    try:
        async with trio.open_nursery() as nursery:
            task_status.started(path)
            while True:
                conn, _ = await sock.accept()
                nursery.start_soon(_answer, conn, snapshot, sync)
    finally:
        sock.close()
        path.unlink(missing_ok=True)


async def _answer(conn, snapshot: Callable[[], dict], sync: SyncCallable | None) -> None:
    with conn:
        if not _same_user(conn):
            return
        request = b""
        with trio.move_on_after(ANSWER_TIMEOUT):
            request = (await conn.recv(MAX_REQUEST)).strip()
        if request == b"status":
            body = _snapshot_body(snapshot)
        elif request == b"sync" and sync is not None:
            body = await _sync_body(sync)  # no timeout: the client decides how long to wait
        else:
            body = b'{"error": "unknown request"}\n'
        with trio.move_on_after(ANSWER_TIMEOUT):
            try:
                view = memoryview(body)
                while view:
                    sent = await conn.send(view)
                    view = view[sent:]
            except OSError as exc:  # the client went away (e.g. Ctrl-C while waiting for a sync)
                log.debug("status client gone before the answer: %s", exc)


def _snapshot_body(snapshot: Callable[[], dict]) -> bytes:
    try:
        return json.dumps(snapshot()).encode() + b"\n"
    except Exception:  # a bug in a snapshot must not take the daemon down
        log.exception("status snapshot failed")
        return b'{"error": "snapshot failed; see the log"}\n'


async def _sync_body(sync: SyncCallable) -> bytes:
    log.info("sync requested: pushing everything pending")
    try:
        failed = await sync()
    except Exception:  # a bug in a push must not take the daemon down; the client hears of it
        log.exception("sync failed")
        return b'{"error": "sync failed; see the log"}\n'
    answer = {"ok": not failed, "failed": [{"path": path, "error": error} for path, error in failed]}
    return json.dumps(answer).encode() + b"\n"


def _same_user(conn) -> bool:
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return uid in (0, os.getuid())


class StatusUnavailable(Exception):
    """No daemon answers on that mount's socket."""


def query(mountpoint: str, timeout: float = ANSWER_TIMEOUT) -> dict:
    """One snapshot from the daemon of ``mountpoint`` (a resolved path); blocking."""
    try:
        with _connect(mountpoint, b"status", timeout) as sock:
            return _read_answer(sock, mountpoint)
    except OSError as exc:
        raise StatusUnavailable(f"no status from the daemon of {mountpoint}: {exc.strerror or exc}") from None


class SyncRequest:
    """``sync`` sent to the daemon of ``mountpoint``; ``answer(wait)`` until it is not None.
    Closing (or leaving the ``with``) before the answer does not stop the daemon's push."""

    def __init__(self, mountpoint: str) -> None:
        self.mountpoint = mountpoint
        try:
            self._sock = _connect(mountpoint, b"sync", ANSWER_TIMEOUT)
        except OSError as exc:
            raise StatusUnavailable(f"cannot ask the daemon of {mountpoint} to sync: {exc.strerror or exc}") from None

    def answer(self, wait: float) -> dict | None:
        """The daemon's answer, or None if it has not come within ``wait`` seconds."""
        readable, _, _ = select.select([self._sock], [], [], wait)
        if not readable:
            return None
        self._sock.settimeout(ANSWER_TIMEOUT)  # the answer has started: the rest follows at once
        try:
            return _read_answer(self._sock, self.mountpoint)
        except OSError as exc:
            raise StatusUnavailable(f"the daemon of {self.mountpoint} stopped answering: {exc.strerror or exc}") from None

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> SyncRequest:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def _connect(mountpoint: str, request: bytes, timeout: float) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        sock.connect(str(socket_path(mountpoint)))
        sock.sendall(request + b"\n")
    except OSError:
        sock.close()
        raise
    return sock


def _read_answer(sock: socket.socket, mountpoint: str) -> dict:
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    if not chunks:  # closed unanswered: the daemon is stopping (its status socket goes with it)
        raise StatusUnavailable(f"the daemon of {mountpoint} closed the connection without answering "
                                "(it is unmounting or has exited)")
    try:
        answer = json.loads(b"".join(chunks))
    except ValueError:
        raise StatusUnavailable(f"the daemon of {mountpoint} sent an unreadable answer") from None
    if not isinstance(answer, dict) or "error" in answer:
        raise StatusUnavailable(f"the daemon of {mountpoint} answered: {answer.get('error') if isinstance(answer, dict) else answer}")
    return answer
