"""Test hooks under ``/_local/``: health, call statistics and fault injection.

Not part of the Arker protocol; clients must never call them. Same bearer key as the API,
and they are neither counted nor delayed/failed by faults, so a test can always reach them.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse

from arkerfs.server.bodies import MAX_SMALL_BODY, read_json
from arkerfs.server.faults import Faults, Stats
from arkerfs.server.state import server


async def health(request: Request) -> JSONResponse:
    return JSONResponse({"ok": True})


async def stats(request: Request) -> JSONResponse:
    return JSONResponse(server(request).stats.body())


async def reset_stats(request: Request) -> JSONResponse:
    server(request).stats = Stats()
    return JSONResponse({"ok": True})


async def set_faults(request: Request) -> JSONResponse:
    faults = Faults.from_request(await read_json(request, MAX_SMALL_BODY))
    server(request).faults = faults
    return JSONResponse({"ok": True, "faults": faults.body()})
