"""Presigned object routes ``GET|PUT /_blob/{token}`` (PROTOCOL.md 4.6, 4.5.5).

No bearer key: the signed token is the credential, and anything wrong with it is a 403.

A GET serves the version the URL was issued for (snapshots.py): from the descriptor held since
the sync read, or, when none is held, from the path re-resolved inside the VM home (it may have
become a symlink since). Either way the version must still match the token's validator, else
412 ``precondition_failed``. Every answer carries that version's ``ETag`` and ``Last-Modified``,
and one ``Range`` is honoured.

A PUT takes at most the size declared when its URL was issued: a longer body is refused (413)
as soon as it passes that size, and the connection is closed rather than the rest read.
"""

from __future__ import annotations

import os
import re

import trio
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from arkerfs.server import confine, snapshots
from arkerfs.server.errors import ApiError, EntryError
from arkerfs.server.state import ServerState, begin, server
from arkerfs.server.tokens import Grant, TokenError

READ_CHUNK = 256 * 1024
_RANGE = re.compile(r"bytes=(\d*)-(\d*)")


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """Inclusive (first, last) for a single satisfiable range; None means send everything.

    Malformed or multi-range headers are ignored (RFC 9110 allows it); an unsatisfiable one
    raises 416.
    """
    match = _RANGE.fullmatch(header.strip()) if header else None
    if not match or match.group(1) == match.group(2) == "":
        return None
    first, last = match.group(1), match.group(2)
    if first == "":
        suffix = int(last)
        if suffix == 0 or size == 0:
            raise _unsatisfiable(size)
        return max(size - suffix, 0), size - 1
    start = int(first)
    if last and int(last) < start:
        return None
    if start >= size:
        raise _unsatisfiable(size)
    return start, min(int(last), size - 1) if last else size - 1


def _unsatisfiable(size: int) -> ApiError:
    return ApiError("range_not_satisfiable", f"range not satisfiable for a {size}-byte object",
                    headers={"content-range": f"bytes */{size}"})


def _grant(request: Request, op: str) -> Grant:
    state = server(request)
    try:
        grant = state.signer.verify(request.path_params["token"], op)
    except TokenError as exc:
        raise ApiError("forbidden", f"invalid presigned URL: {exc}") from None
    state.store.get(grant.vm_id)
    return grant


def _changed(path: str) -> ApiError:
    return ApiError("precondition_failed", f"{path} changed since this URL was issued; request a new one", status=412)


async def _open_version(state: ServerState, grant: Grant, version: snapshots.Version) -> int:
    """A descriptor (the caller closes it) holding exactly the version ``grant`` names."""
    fd = state.snapshots.take(grant.vm_id, version)
    if fd is None:
        try:
            fd = await trio.to_thread.run_sync(confine.open_for_read, state.store.home(grant.vm_id), grant.path)
        except confine.ConfineError as exc:
            raise ApiError(exc.code, exc.message) from None
    try:
        snapshots.check(fd, version)
    except snapshots.VersionChanged:
        os.close(fd)
        raise _changed(grant.path) from None
    return fd


async def blob_get(request: Request) -> Response:
    state = await begin(request, "presigned_get")
    grant = _grant(request, "GET")
    version = snapshots.Version(grant.ino, grant.size, grant.mtime_ns)
    fd = await _open_version(state, grant, version)
    size = version.size
    try:
        span = parse_range(request.headers.get("range"), size)
    except BaseException:
        os.close(fd)
        raise
    first, last = span or (0, size - 1)
    headers = {"accept-ranges": "bytes", "content-length": str(last - first + 1),
               "etag": version.etag, "last-modified": version.last_modified}
    if span:
        headers["content-range"] = f"bytes {first}-{last}/{size}"
    status = 206 if span else 200
    if request.method == "HEAD":
        os.close(fd)
        return Response(status_code=status, headers=headers, media_type="application/octet-stream")

    async def chunks():
        try:
            pos = first
            while pos <= last:
                data = await trio.to_thread.run_sync(os.pread, fd, min(READ_CHUNK, last - pos + 1), pos)
                if not data or snapshots.Version.of(fd) != version:
                    # Changed in place while being sent: end the body short, so the client sees
                    # a broken transfer (and then 412) rather than bytes of two versions.
                    break
                pos += len(data)
                yield data
        finally:
            os.close(fd)

    return StreamingResponse(chunks(), status_code=status, headers=headers, media_type="application/octet-stream")


async def blob_put(request: Request) -> Response:
    state = await begin(request, "presigned_put")
    grant = _grant(request, "PUT")
    limit = grant.size  # what the URL was issued for (never above the server's file limit)
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        return _TooLarge(limit)
    try:
        received = await state.uploads.receive_put(grant.vm_id, grant.upload_id, grant.path, grant.size, request.stream(), limit)
    except EntryError as exc:
        if exc.code == "payload_too_large":
            return _TooLarge(limit)
        raise ApiError(exc.code, exc.message) from None
    return JSONResponse({"ok": True, "received_bytes": received})


class _TooLarge(JSONResponse):
    """413 while the body is still arriving; the connection is closed rather than the rest read
    (the app's usual drain after an early error is skipped for ``connection: close``).

    hypercorn queues body messages for the app (10 at most) and delivers ``http.disconnect``
    through the same queue from inside the app's last ``send``: with the queue full of unread
    body, that send would wait forever. So queued messages are dropped while the answer goes
    out; only what was already in flight is read.
    """

    def __init__(self, limit: int) -> None:
        error = ApiError("payload_too_large", f"upload body exceeds the {limit} bytes this URL was issued for")
        super().__init__(error.body(), error.status, headers={"connection": "close"})

    async def __call__(self, scope, receive, send) -> None:
        async def drop_queued() -> None:
            while (await receive())["type"] == "http.request":
                pass

        async with trio.open_nursery() as nursery:
            nursery.start_soon(drop_queued)
            await super().__call__(scope, receive, send)
            nursery.cancel_scope.cancel()
