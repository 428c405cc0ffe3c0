"""The Starlette app: route table, bearer auth, byte accounting and the error envelope.

Every failure a client can see is the core envelope ``{"ok": false, "error": {...}}``, unknown
routes and wrong methods included. A bug becomes a 500 ``internal`` envelope; Starlette's
ServerErrorMiddleware re-raises it afterwards so hypercorn's error log records the traceback.
"""

from __future__ import annotations

import hmac
import json

import trio
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from arkerfs.server import routes_blob, routes_local, routes_sync, routes_vms
from arkerfs.server.bodies import DRAIN_LIMIT
from arkerfs.server.errors import CODE_FOR_STATUS, ApiError, reason
from arkerfs.server.state import FAIL_AFTER_KEY, ServerState

AUTH_PREFIXES = ("/api/", "/_local/")
UNAUTHORIZED_DRAIN_LIMIT = 1024 * 1024  # a refused request's body is read (and dropped) up to this
DRAIN_SECONDS = 5.0  # an unread body is dropped for at most this long, then the connection is closed


async def _discard_body(receive: Receive, limit: int) -> bool:
    """Read and drop the request body; False if it is longer than ``limit``, the client left, or
    it does not arrive within DRAIN_SECONDS."""
    seen = 0
    with trio.move_on_after(DRAIN_SECONDS):
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return False
            seen += len(message.get("body", b""))
            if not message.get("more_body", False):
                return True
            if seen > limit:
                return False
    return False


def _declared_length(scope: Scope) -> int:
    for name, value in scope["headers"]:
        if name == b"content-length":
            return int(value) if value.isdigit() else 0
    return 0


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
            # Read the unwanted body first: a 401 sent over an unread body makes the HTTP layer
            # drop the connection, and a client reusing it would see a transport error instead.
            drained = await _discard_body(receive, UNAUTHORIZED_DRAIN_LIMIT)
            response = _envelope("unauthorized", "missing or invalid API key (authorization: Bearer <key>)", 401,
                                 None if drained else {"connection": "close"})
            await response(scope, receive, send)
            return
        if path.startswith("/_local/"):
            await self.app(scope, receive, send)
            return

        body_done = False

        async def counting_receive() -> Message:
            nonlocal body_done
            message = await receive()
            if message["type"] == "http.request":
                self.state.stats.bytes_in += len(message.get("body", b""))
            body_done = message["type"] != "http.request" or not message.get("more_body", False)
            return message

        async def counting_send(message: Message) -> None:
            failure = scope.get(FAIL_AFTER_KEY)
            if failure is not None:  # after-effect fault: the work is done, the answer is lost
                payload = json.dumps(failure.body()).encode()
                if message["type"] == "http.response.start":
                    message = {"type": "http.response.start", "status": failure.status,
                               "headers": [(b"content-type", b"application/json"),
                                           (b"content-length", str(len(payload)).encode())]}
                elif message["type"] == "http.response.body":
                    if message.get("more_body", False):
                        return
                    message = {"type": "http.response.body", "body": payload, "more_body": False}
            if (message["type"] == "http.response.start" and message["status"] >= 400 and not body_done
                    and scope["method"] in ("POST", "PUT") and (b"connection", b"close") not in message["headers"]):
                # An error before the body was read (route miss, fault, early refusal): read it
                # now, or the HTTP layer drops a connection the client may already be reusing.
                # (Never for GET: a streamed answer has its own task listening for disconnect;
                # nor when the handler closes the connection to stop an oversized body.)
                # The client may still be sending (httpx writes the whole body before reading):
                # unread, the body would stall it until its write timeout.
                if _declared_length(scope) > DRAIN_LIMIT or not await _discard_body(receive, DRAIN_LIMIT):
                    message = {**message, "headers": [*message.get("headers", []), (b"connection", b"close")]}
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
