"""Presigned object routes ``GET|PUT /_blob/{token}`` (PROTOCOL.md 4.6, 4.5.5).

No bearer key: the signed token is the credential, and anything wrong with it is a 403. The
GET re-resolves the path inside the VM home at request time (the file may have become a
symlink since the URL was issued) and streams it, honouring one ``Range``.
"""

from __future__ import annotations

import os
import re

import trio
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from arkerfs.server import confine
from arkerfs.server.errors import ApiError, EntryError
from arkerfs.server.state import begin, server
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


async def blob_get(request: Request) -> Response:
    state = await begin(request, "presigned_get")
    grant = _grant(request, "GET")
    home = state.store.home(grant.vm_id)
    try:
        fd = await trio.to_thread.run_sync(confine.open_for_read, home, grant.path)
    except confine.ConfineError as exc:
        raise ApiError(exc.code, exc.message) from None
    try:
        size = os.fstat(fd).st_size
        span = parse_range(request.headers.get("range"), size)
    except BaseException:
        os.close(fd)
        raise
    first, last = span or (0, size - 1)
    headers = {"accept-ranges": "bytes", "content-length": str(last - first + 1)}
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
                if not data:
                    break  # the file shrank since fstat; the client sees a short body
                pos += len(data)
                yield data
        finally:
            os.close(fd)

    return StreamingResponse(chunks(), status_code=status, headers=headers, media_type="application/octet-stream")


async def blob_put(request: Request) -> Response:
    state = await begin(request, "presigned_put")
    grant = _grant(request, "PUT")
    limit = state.config.max_file_bytes
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ApiError("payload_too_large", f"upload body exceeds {limit} bytes")
    try:
        received = await state.uploads.receive_put(grant.vm_id, grant.upload_id, grant.path, grant.size, request.stream(), limit)
    except EntryError as exc:
        raise ApiError(exc.code, exc.message) from None
    return JSONResponse({"ok": True, "received_bytes": received})
