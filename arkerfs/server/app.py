"""The Starlette app: route table, bearer auth, byte accounting and the error envelope.

Every failure a client can see is the core envelope ``{"ok": false, "error": {...}}``, unknown
routes and wrong methods included. A bug becomes a 500 ``internal`` envelope; Starlette's
ServerErrorMiddleware re-raises it afterwards so hypercorn's error log records the traceback.
"""

from __future__ import annotations

import hmac

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from arkerfs.server import routes_blob, routes_local, routes_sync, routes_vms
from arkerfs.server.errors import CODE_FOR_STATUS, ApiError, reason
from arkerfs.server.state import ServerState

AUTH_PREFIXES = ("/api/", "/_local/")


def _envelope(code: str, message: str, status: int, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"ok": False, "error": {"code": code, "message": message}}, status, headers=headers)


class Gate:
    """ASGI middleware: bearer auth for ``/api/`` and ``/_local/``, byte counts for API and blob routes."""

    def __init__(self, app: ASGIApp, state: ServerState) -> None:
        self.app = app
        self.state = state
        self._keys = [key.encode() for key in state.config.api_keys]

    def _authorized(self, scope: Scope) -> bool:
        for name, value in scope["headers"]:
            if name == b"authorization":
                scheme, _, given = value.partition(b" ")
                if scheme.lower() != b"bearer":
                    return False
                given = given.strip()
                # Compare against every key so timing does not reveal which one matched.
                return sum(hmac.compare_digest(given, key) for key in self._keys) > 0
        return False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        if path.startswith(AUTH_PREFIXES) and not self._authorized(scope):
            response = _envelope("unauthorized", "missing or invalid API key (authorization: Bearer <key>)", 401)
            await response(scope, receive, send)
            return
        if path.startswith("/_local/"):
            await self.app(scope, receive, send)
            return

        async def counting_receive() -> Message:
            message = await receive()
            if message["type"] == "http.request":
                self.state.stats.bytes_in += len(message.get("body", b""))
            return message

        async def counting_send(message: Message) -> None:
            if message["type"] == "http.response.body":
                self.state.stats.bytes_out += len(message.get("body", b""))
            await send(message)

        await self.app(scope, counting_receive, counting_send)


async def _api_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return JSONResponse(exc.body(), exc.status, headers=exc.headers)


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        return _envelope("not_found", f"no such route: {request.method} {request.url.path}", 404)
    if exc.status_code == 405:
        return _envelope("method_not_allowed", f"{request.method} is not allowed on {request.url.path}", 405, exc.headers)
    return _envelope(CODE_FOR_STATUS.get(exc.status_code, "internal"), exc.detail or reason(exc.status_code), exc.status_code)


async def _bug(request: Request, exc: Exception) -> JSONResponse:
    return _envelope("internal", f"internal server error ({type(exc).__name__}); see the server log", 500)


def create_app(state: ServerState) -> ASGIApp:
    """One ASGI app for the API, blob and ``/_local/`` routes of ``state``."""
    routes = [
        Route("/api/v1/vms/list", routes_vms.list_vms, methods=["GET"]),
        Route("/api/v1/vms/fork", routes_vms.fork_by_name, methods=["POST"]),
        Route("/api/v1/vms/{vm_id}/fork", routes_vms.fork_by_id, methods=["POST"]),
        Route("/api/v1/vms/{vm_id}/run", routes_vms.run, methods=["POST"]),
        Route("/api/v1/vms/{vm_id}/sync", routes_sync.sync, methods=["POST"]),
        Route("/api/v1/vms/{vm_id}", routes_vms.delete_vm, methods=["DELETE"]),
        Route("/_blob/{token}", routes_blob.blob_get, methods=["GET"]),
        Route("/_blob/{token}", routes_blob.blob_put, methods=["PUT"]),
        Route("/_local/health", routes_local.health, methods=["GET"]),
        Route("/_local/stats", routes_local.stats, methods=["GET"]),
        Route("/_local/stats/reset", routes_local.reset_stats, methods=["POST"]),
        Route("/_local/faults", routes_local.set_faults, methods=["POST"]),
    ]
    app = Starlette(
        routes=routes,
        exception_handlers={ApiError: _api_error, HTTPException: _http_error, Exception: _bug},
    )
    app.state.server = state
    return Gate(app, state)
