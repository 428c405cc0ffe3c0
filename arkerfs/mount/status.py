"""The daemon's private status channel: a Unix socket that answers one JSON snapshot per connection.

The socket is ``<runtime dir>/<mount key>.sock`` (see ``runtime``), mode 0600 in a 0700
directory, and a connection from another user (other than root) is closed unanswered
(``SO_PEERCRED``). Asking never costs an API call and never touches the mounted tree, so
``arkerfs status``/``umount`` answer even when the VM does not.

Wire: the client sends one line, ``status``, and reads one JSON object, then EOF.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import struct
from collections.abc import Callable
from pathlib import Path

import trio

from arkerfs.mount import runtime

log = logging.getLogger(__name__)

MAX_REQUEST = 256
ANSWER_TIMEOUT = 5.0


def socket_path(mountpoint: str) -> Path:
    return runtime.runtime_dir() / f"{runtime.mount_key(mountpoint)}.sock"


async def serve_status(mountpoint: str, snapshot: Callable[[], dict], *,
                       task_status=trio.TASK_STATUS_IGNORED) -> None:
    """Serve ``snapshot()`` on the mount's socket until cancelled; removes the socket at the end."""
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
                nursery.start_soon(_answer, conn, snapshot)
    finally:
        sock.close()
        path.unlink(missing_ok=True)


async def _answer(conn, snapshot: Callable[[], dict]) -> None:
    with conn:
        if not _same_user(conn):
            return
        with trio.move_on_after(ANSWER_TIMEOUT):
            request = await conn.recv(MAX_REQUEST)
            if request.strip() != b"status":
                await conn.send(b'{"error": "unknown request"}\n')
                return
            try:
                body = json.dumps(snapshot()).encode() + b"\n"
            except Exception:  # a bug in a snapshot must not take the daemon down
                log.exception("status snapshot failed")
                body = b'{"error": "snapshot failed; see the log"}\n'
            view = memoryview(body)
            while view:
                sent = await conn.send(view)
                view = view[sent:]


def _same_user(conn) -> bool:
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return uid in (0, os.getuid())


class StatusUnavailable(Exception):
    """No daemon answers on that mount's socket."""


def query(mountpoint: str, timeout: float = ANSWER_TIMEOUT) -> dict:
    """One snapshot from the daemon of ``mountpoint`` (a resolved path); blocking."""
    path = socket_path(mountpoint)
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(str(path))
            sock.sendall(b"status\n")
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
    except OSError as exc:
        raise StatusUnavailable(f"no status from the daemon of {mountpoint}: {exc.strerror or exc}") from None
    try:
        answer = json.loads(b"".join(chunks))
    except ValueError:
        raise StatusUnavailable(f"the daemon of {mountpoint} sent an unreadable status") from None
    if not isinstance(answer, dict) or "error" in answer:
        raise StatusUnavailable(f"the daemon of {mountpoint} answered: {answer.get('error') if isinstance(answer, dict) else answer}")
    return answer
