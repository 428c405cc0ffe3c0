"""``POST /api/v1/vms/{id}/sync``: whole-file read, and writes of three kinds (PROTOCOL.md 4.5).

Request-level problems are envelope errors; anything about one write entry is a per-entry
error with HTTP 200, reported in order with the other entries' results.
"""

from __future__ import annotations

import base64
import binascii
import os
import time

import trio
from starlette.requests import Request
from starlette.responses import JSONResponse

from arkerfs.protocol import SERVER_MAX_SYNC_BODY, PathRuleError, check_sync_path, new_ulid
from arkerfs.server import confine, vmfiles
from arkerfs.server.bodies import read_json
from arkerfs.server.errors import ApiError, EntryError
from arkerfs.server.state import ServerState, begin
from arkerfs.server.tokens import Grant
from arkerfs.server.uploads import Upload

MAX_UPLOAD_ID_CHARS = 256


def blob_url(request: Request, token: str) -> str:
    """Absolute URL on the origin the client used, so it works behind any loopback name."""
    return f"{str(request.base_url).rstrip('/')}/_blob/{token}"


async def sync(request: Request) -> JSONResponse:
    body = await read_json(request, SERVER_MAX_SYNC_BODY)
    op = body.get("op")
    if op == "read":
        return await _read(request, await begin(request, "sync_read"), body)
    if op == "write":
        return await _write(request, await begin(request, "sync_write"), body)
    raise ApiError("bad_request", f"unknown sync op: {op!r} (expected 'read' or 'write')")


def _open_and_size(home: str, path: str) -> tuple[int, int]:
    fd = confine.open_for_read(home, path)
    return fd, os.fstat(fd).st_size


def _read_inline(fd: int) -> bytes:
    try:
        return vmfiles.read_all(fd)
    finally:
        os.close(fd)


async def _read(request: Request, state: ServerState, body: dict) -> JSONResponse:
    path = body.get("path")
    try:
        check_sync_path(path)
        home = state.store.home(request.path_params["vm_id"])
        fd, size = await trio.to_thread.run_sync(_open_and_size, home, path)
    except PathRuleError as exc:
        raise ApiError("bad_request", str(exc)) from None
    except confine.ConfineError as exc:
        raise ApiError(exc.code, exc.message) from None
    limit = state.config.max_file_bytes
    if size > limit:
        os.close(fd)
        raise ApiError("payload_too_large", f"file is {size} bytes; the limit is {limit}")
    if size > state.config.inline_read_limit:
        ttl = state.config.presign_ttl
        vm_id, expires_at = request.path_params["vm_id"], time.time() + ttl
        version = state.snapshots.hold(vm_id, fd, expires_at)  # the URL serves this version
        grant = Grant(vm_id=vm_id, path=path, op="GET", expires_at=expires_at,
                      size=version.size, ino=version.ino, mtime_ns=version.mtime_ns)
        return JSONResponse({
            "ok": True, "op": "read", "path": path, "size": version.size,
            "presigned_url": blob_url(request, state.signer.issue(grant)),
            "expires_in": round(ttl), "method": "GET",
        })
    data = await trio.to_thread.run_sync(_read_inline, fd)
    return JSONResponse({
        "ok": True, "op": "read", "path": path, "size": len(data),
        "content": base64.b64encode(data).decode("ascii"), "encoding": "base64",
    })


def _int_field(entry: dict, name: str) -> int:
    value = entry.get(name)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise EntryError("bad_request", f"{name} must be a non-negative integer")
    return value


def _upload_id(entry: dict) -> str:
    value = entry.get("upload_id")
    if not isinstance(value, str) or not value or len(value) > MAX_UPLOAD_ID_CHARS:
        raise EntryError("bad_request", f"upload_id must be a non-empty string of at most {MAX_UPLOAD_ID_CHARS} characters")
    return value


def _progress(up: Upload) -> dict:
    return {
        "received_bytes": up.size if up.written else up.received,
        "ranges": [{"start": s, "end": e} for s, e in up.ranges],
        "complete": up.complete, "written": up.written,
    }


async def _entry(request: Request, state: ServerState, vm_id: str, home: str, entry: object) -> dict:
    """The result of one write entry; raises EntryError for a per-entry failure."""
    if not isinstance(entry, dict):
        raise EntryError("bad_request", "each write entry must be a JSON object")
    path = entry.get("path")
    try:
        check_sync_path(path)
        confine.check_lengths(path)
    except (PathRuleError, confine.ConfineError) as exc:
        raise EntryError("bad_request", str(exc)) from None
    size = _int_field(entry, "size")
    if size > state.config.max_file_bytes:
        raise EntryError("payload_too_large", f"size {size} exceeds the limit of {state.config.max_file_bytes} bytes")
    uploads = state.uploads
    if entry.get("presigned") is True:
        upload_id = "upl_" + new_ulid()
        uploads.presign(vm_id, path, size, upload_id)
        ttl = state.config.presign_ttl
        grant = Grant(vm_id=vm_id, path=path, op="PUT", expires_at=time.time() + ttl, upload_id=upload_id, size=size)
        return {
            "presigned_url": blob_url(request, state.signer.issue(grant)), "upload_id": upload_id,
            "expires_in": round(ttl), "method": "PUT", "complete": False, "written": False,
        }
    if "content" in entry:
        upload_id = _upload_id(entry)
        start, end = _int_field(entry, "start"), _int_field(entry, "end")
        if not start <= end <= size:
            raise EntryError("bad_request", f"chunk range [{start}, {end}) does not fit in size {size}")
        content = entry["content"]
        if not isinstance(content, str):
            raise EntryError("bad_request", "content must be a base64 string")
        try:
            data = base64.b64decode(content, validate=True)
        except (binascii.Error, ValueError):
            raise EntryError("bad_request", "content is not valid base64") from None
        if len(data) != end - start:
            raise EntryError("bad_request", f"content is {len(data)} bytes but end - start is {end - start}")
        return _progress(await uploads.chunk(home, vm_id, upload_id, path, size, start, data))
    if "upload_id" in entry:
        up = await uploads.commit(home, vm_id, _upload_id(entry), path, size)
        return {"complete": up.complete, "written": up.written}
    raise EntryError("bad_request", "entry is neither a chunk (content), a presign request (presigned: true) nor a commit (upload_id)")


async def _write(request: Request, state: ServerState, body: dict) -> JSONResponse:
    writes = body.get("writes")
    if not isinstance(writes, list) or not writes:
        raise ApiError("bad_request", "writes must be a non-empty array")
    vm_id = request.path_params["vm_id"]
    home = state.store.home(vm_id)
    results = []
    for entry in writes:
        base = {"path": entry.get("path"), "size": entry.get("size")} if isinstance(entry, dict) else {"path": None, "size": None}
        try:
            results.append({**base, **await _entry(request, state, vm_id, home, entry), "error": None})
        except EntryError as exc:
            failed = {"received_bytes": 0, "ranges": [], "complete": False, "written": False}
            results.append({**base, **failed, "error": exc.body()})
    return JSONResponse({"ok": True, "op": "write", "results": results})
