"""Bounded request bodies and JSON parsing: every size limit and parse error becomes an envelope."""

from __future__ import annotations

import json

from starlette.requests import Request

from arkerfs.server.errors import ApiError

# After the limit is hit the rest of the body is still read (up to this much) and thrown
# away, so the client gets the 413 instead of a reset connection mid-upload.
DRAIN_LIMIT = 128 * 1024 * 1024
MAX_SMALL_BODY = 64 * 1024  # fork, faults: bodies of a few fields


def too_large(limit: int) -> ApiError:
    return ApiError("payload_too_large", f"request body exceeds {limit} bytes")


async def read_body(request: Request, limit: int) -> bytes:
    """The whole body, refusing more than ``limit`` bytes with 413."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > DRAIN_LIMIT:
        raise too_large(limit)
    parts: list[bytes] = []
    total = 0
    async for chunk in request.stream():
        total += len(chunk)
        if total <= limit:
            parts.append(chunk)
        elif total > DRAIN_LIMIT:
            break
    if total > limit:
        raise too_large(limit)
    return b"".join(parts)


async def read_json(request: Request, limit: int) -> dict:
    """The body as a JSON object; an empty body reads as ``{}``."""
    raw = await read_body(request, limit)
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise ApiError("bad_request", f"request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise ApiError("bad_request", "request body must be a JSON object")
    return body
