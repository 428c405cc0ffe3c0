"""Wire shapes the local server never produces, served by a tiny listener on 127.0.0.1.

The SDK still talks real HTTP over a real socket here; the listener only answers with canned
bytes, so the envelope rules, retry rules and presigned-host hygiene of PROTOCOL.md §3, §4.6
and §6 can be pinned down exactly, request by request.
"""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Callable

import pytest
import trio

import arkerfs
from arkerfs.client import Arker, ArkerError, PayloadTooLargeError, RateLimitedError, RemoteFile, RetryPolicy
from arkerfs.protocol import CHUNK_SIZE

FAST = RetryPolicy(base_delay=0.01, max_delay=0.05)
VM_ID = "01KQBYKEV5WJ7YB010603T1DCT_d8c0"
KEY = "ark_test_wire_key_0123456789"

Reply = tuple[int, dict, bytes | dict | str]  # status, headers, body (a dict is sent as JSON)


class Listener:
    """Records every request (line, headers, body) and answers ``respond(index, method, target)``."""

    def __init__(self, respond: Callable[[int, str, str], Reply]) -> None:
        self.respond = respond
        self.requests: list[tuple[str, dict[str, str], bytes]] = []
        self.url = ""

    async def serve(self, task_status=trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.url = f"http://127.0.0.1:{listeners[0].socket.getsockname()[1]}"
        task_status.started()
        await trio.serve_listeners(self._handle, listeners)

    @property
    def lines(self) -> list[str]:
        return [line for line, _, _ in self.requests]

    async def _handle(self, stream: trio.SocketStream) -> None:
        buffer = b""
        while b"\r\n\r\n" not in buffer:
            chunk = await stream.receive_some(65536)
            if not chunk:
                return
            buffer += chunk
        head, body = buffer.split(b"\r\n\r\n", 1)
        line, *rest = head.decode("latin-1").split("\r\n")
        headers = {k.strip().lower(): v.strip() for k, v in (h.split(":", 1) for h in rest)}
        while len(body) < int(headers.get("content-length", 0)):
            body += await stream.receive_some(1 << 20)
        method, target, _ = line.split(" ")
        status, reply_headers, reply = self.respond(len(self.requests), method, target)
        self.requests.append((line, headers, body))
        if isinstance(reply, dict):
            reply = json.dumps(reply)
        if isinstance(reply, str):
            reply = reply.encode()
        # A canned content-length larger than the body simulates a connection dropped mid-body.
        fields = {"content-length": str(len(reply)), "connection": "close", **reply_headers}
        head_out = f"HTTP/1.1 {status} X\r\n" + "".join(f"{k}: {v}\r\n" for k, v in fields.items())
        await stream.send_all(head_out.encode() + b"\r\n" + reply)
        await stream.aclose()


def always(status: int, body: bytes | dict | str, headers: dict | None = None) -> Callable:
    return lambda i, method, target: (status, headers or {}, body)


def then(*replies: Reply) -> Callable:
    """Reply ``replies[i]`` to request ``i``; the last one repeats."""
    return lambda i, method, target: replies[min(i, len(replies) - 1)]


def envelope(code: str, message: str = "m", **extra) -> dict:
    return {"ok": False, "error": {"code": code, "message": message, **extra}}


@pytest.fixture
def serve(nursery):
    """``await serve(respond)`` -> a running Listener."""

    async def start(respond: Callable) -> Listener:
        listener = Listener(respond)
        await nursery.start(listener.serve)
        return listener

    return start


def client(listener: Listener, retry: RetryPolicy = FAST) -> Arker:
    return Arker(KEY, base_url=listener.url, list_base_url=listener.url, retry=retry)


async def failure(call) -> ArkerError:
    with pytest.raises(ArkerError) as info:
        await call
    return info.value


# -- envelopes --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "status, body, code, message",
    [
        (200, envelope("conflict", "at 200"), "conflict", "at 200"),  # ok:false wins over 200
        (404, {"error": {"code": "not_found", "message": "gone"}}, "not_found", "gone"),  # later shape
        (400, {"ok": False, "error": {}}, "internal", ""),  # missing code and message
        (500, "<html>" + "x" * 500, "internal", "<html>" + "x" * 194),  # first 200 chars
        (200, "not json", "internal", None),
        (200, "[1, 2]", "internal", None),
    ],
)
async def test_error_envelopes(serve, status, body, code, message):
    listener = await serve(always(status, body))
    async with client(listener) as arker:
        err = await failure(arker.list())
    assert (err.code, err.status) == (code, status)
    if message is not None:
        assert err.message == message
    assert len(listener.requests) == 1


async def test_later_envelope_fields_are_kept_on_the_typed_error(serve):
    later = {"error": {"code": "payload_too_large", "message": "too big", "request_id": "req_4f1c2a",
                       "details": {"maximum_bytes": 10, "request_bytes": 11}, "retry_after_seconds": 0,
                       "timestamp": "2026-02-01T12:00:00Z", "request": {"kind": "matched", "operation_id": "list"}}}
    listener = await serve(then((413, {}, later), (429, {"retry-after": "0"}, envelope("rate_limited")),
                                (503, {"retry-after": "0"}, "busy")))
    async with client(listener, RetryPolicy(attempts=1)) as arker:
        too_big, limited, bare = [await failure(arker.list()) for _ in range(3)]
    assert isinstance(too_big, PayloadTooLargeError) and (too_big.code, too_big.status) == ("payload_too_large", 413)
    assert (too_big.request_id, too_big.details, too_big.retry_after) == (
        "req_4f1c2a", {"maximum_bytes": 10, "request_bytes": 11}, 0.0)
    assert "request_id='req_4f1c2a'" in repr(too_big)
    assert isinstance(limited, RateLimitedError) and (limited.retry_after, limited.request_id) == (0.0, None)
    assert (bare.code, bare.status, bare.retry_after) == ("internal", 503, 0.0)


async def test_empty_success_body_is_an_empty_object(serve):
    listener = await serve(always(200, b""))
    async with client(listener) as arker:
        page = await arker.list()
        await arker.vm(VM_ID).delete()
    assert (page.items, page.total) == ([], 0)


async def test_every_api_request_carries_key_and_json_content_type(serve):
    listener = await serve(always(200, {"ok": True, "items": [], "total": 0}))
    async with client(listener) as arker:
        await arker.list(limit=25, offset=0, q="a b", sort="region")
        await arker.list(limit=7, offset=3)
    (first, h1, body1), (second, _, _) = listener.requests
    assert first in ("GET /api/v1/vms/list?q=a+b&sort=region HTTP/1.1", "GET /api/v1/vms/list?q=a%20b&sort=region HTTP/1.1")
    assert second == "GET /api/v1/vms/list?limit=7&offset=3 HTTP/1.1"
    assert h1["authorization"] == f"Bearer {KEY}" and h1["content-type"] == "application/json"
    assert body1 == b""


async def test_api_and_presigned_requests_name_arkerfs_and_its_version(serve):
    answer = {"ok": True, "items": [], "total": 0}
    listener = await serve(always(200, answer))
    async with client(listener) as arker:
        await arker.list()
        size = len(json.dumps(answer))  # the GET's body is that same answer
        await RemoteFile(arker._transport, path="/home/user/f", size=size, url=f"{listener.url}/blob").read_all()
    for _, headers, _ in listener.requests:
        assert headers["user-agent"].startswith(f"arkerfs/{arkerfs.__version__} (python ")
        assert "httpx" in headers["user-agent"]


# -- which failures are retried ---------------------------------------------------------------


@pytest.mark.parametrize(
    "status, body, run_calls, list_calls",
    [
        (502, "bad gateway", 1, 4),  # ambiguous for a run: it may have executed
        (504, envelope("gateway_timeout"), 1, 4),
        (503, envelope("unavailable"), 1, 4),
        (503, envelope("unavailable", recovery={"work": "not_started"}), 4, 4),
        (503, envelope("unavailable", recovery={"work": "unknown"}), 1, 4),
        (429, envelope("rate_limited"), 4, 4),  # 429: the request was not admitted
        (429, envelope("quota_exceeded"), 1, 1),  # never retried
        (409, envelope("vm_busy"), 4, 4),
        (409, envelope("resource_busy"), 4, 4),
        (500, envelope("internal", "SlowDown: please reduce request rate"), 1, 4),
        (500, envelope("internal", "ThrottlingException"), 1, 4),
        (500, envelope("internal", "boom"), 1, 1),
        (200, envelope("unavailable"), 1, 4),  # an envelope at 200 is still a failure
        (400, envelope("bad_request"), 1, 1),
        (401, envelope("unauthorized"), 1, 1),
    ],
)
async def test_retry_rules_for_run_and_list(serve, status, body, run_calls, list_calls):
    listener = await serve(always(status, body))
    async with client(listener) as arker:
        run_err = await failure(arker.vm(VM_ID).run("true"))
        assert len(listener.requests) == run_calls
        list_err = await failure(arker.list())
        assert len(listener.requests) == run_calls + list_calls
    assert run_err.status == list_err.status == status


async def test_fork_is_not_replayed_after_an_ambiguous_failure(serve):
    listener = await serve(always(503, envelope("unavailable")))
    async with client(listener) as arker:
        await failure(arker.vm("arkuntu").fork(name="x"))
    assert len(listener.requests) == 1


async def test_retry_hints_are_honoured(serve):
    listener = await serve(then(
        (503, {"retry-after": "0.3"}, envelope("unavailable")),
        (503, {}, envelope("unavailable", retry_after_seconds=0.3)),
        (200, {}, {"ok": True, "items": [], "total": 0}),
    ))
    async with client(listener) as arker:
        started = trio.current_time()
        await arker.list()
        assert trio.current_time() - started >= 0.6  # FAST alone would wait about 0.05 s
    assert len(listener.requests) == 3


async def test_retried_delete_treats_404_as_success(serve):
    listener = await serve(then((503, {}, envelope("unavailable")), (404, {}, envelope("not_found"))))
    async with client(listener) as arker:
        await arker.vm(VM_ID).delete()
    assert listener.lines == [f"DELETE /api/v1/vms/{VM_ID} HTTP/1.1"] * 2


async def test_first_delete_404_is_not_found(serve):
    listener = await serve(always(404, envelope("not_found")))
    async with client(listener) as arker:
        err = await failure(arker.vm(VM_ID).delete())
    assert (err.code, err.status) == ("not_found", 404)


# -- response decoding ------------------------------------------------------------------------


async def test_run_request_and_output_decoding(serve):
    listener = await serve(always(200, {
        "stdout": base64.b64encode(b"\xff\x00bin").decode(), "stdout_encoding": "base64",
        "stderr": "not base64!", "stderr_encoding": "base64",  # falls back to the text
        "exit_code": None, "duration_ms": 12, "session_id": 3, "cwd": "/root",
    }))
    async with client(listener) as arker:
        r = await arker.vm(VM_ID).run("cmd", session_id=3, timeout=5)
    assert (r.stdout, r.stderr, r.exit_code) == (b"\xff\x00bin", b"not base64!", None)
    assert (r.session_id, r.duration_ms, r.cwd) == ("3", 12.0, "/root")
    assert not r.ok and not r.completed and not r.timed_out
    line, _, body = listener.requests[0]
    assert line == f"POST /api/v1/vms/{VM_ID}/run HTTP/1.1"
    assert json.loads(body) == {"command": "cmd", "session_id": 3, "timeout": 5}


async def test_fork_routes_and_bodies(serve):
    listener = await serve(always(200, {"ok": True, "vm_id": "01M8BPET9E95TX5RDFRW582EEG_x7k2"}))
    async with client(listener) as arker:
        child = await arker.vm("arkuntu").fork()
        await arker.vm("my-golden").fork(name="n", is_public=True, region="r")
    assert child.id == "01M8BPET9E95TX5RDFRW582EEG_x7k2"
    (line1, _, body1), (line2, _, body2) = listener.requests
    assert line1 == f"POST /api/v1/vms/{VM_ID}/fork HTTP/1.1" and json.loads(body1) == {"is_public": False}
    assert line2 == "POST /api/v1/vms/fork HTTP/1.1"
    assert json.loads(body2) == {"is_public": True, "name": "n", "region": "r", "from": "my-golden"}


async def test_fork_without_vm_id_is_internal(serve):
    listener = await serve(always(200, {"ok": True}))
    async with client(listener) as arker:
        err = await failure(arker.vm(VM_ID).fork())
    assert err.code == "internal"


@pytest.mark.parametrize(
    "body, expected",
    [
        ({"ok": True, "content": "plain text", "encoding": "utf8"}, b"plain text"),
        ({"ok": True, "content": base64.b64encode(b"\x00\x01").decode(), "encoding": "base64"}, b"\x00\x01"),
        ({"ok": True, "content": None, "size": 3}, None),  # neither content nor a URL
        ({"ok": True, "content": "%%%", "encoding": "base64"}, None),  # corrupt base64
    ],
)
async def test_sync_read_forms(serve, body, expected):
    listener = await serve(always(200, body))
    async with client(listener) as arker:
        if expected is None:
            assert (await failure(arker.vm(VM_ID).sync.read_file("/home/user/f"))).code == "internal"
        else:
            assert await arker.vm(VM_ID).sync.read_file("/home/user/f") == expected
    assert json.loads(listener.requests[0][2]) == {"op": "read", "path": "/home/user/f"}


def write_result(error: dict | None = None, **fields) -> dict:
    return {"ok": True, "op": "write", "results": [{"complete": error is None, "written": error is None,
                                                     "error": error, **fields}]}


async def test_transient_entry_error_resends_the_identical_entry(serve):
    listener = await serve(then(
        (200, {}, write_result({"code": "unavailable", "message": "busy disk"})),
        (200, {}, write_result({"code": "internal", "message": "503 Service Unavailable"})),
        (200, {}, write_result()),
    ))
    async with client(listener) as arker:
        await arker.vm(VM_ID).sync.write_file("/home/user/f", b"hello")
    bodies = [body for _, _, body in listener.requests]
    assert len(bodies) == 3 and len(set(bodies)) == 1  # same upload_id every time
    entry = json.loads(bodies[0])["writes"][0]
    assert entry["size"] == entry["end"] == 5 and entry["start"] == 0 and len(entry["upload_id"]) == 26
    assert base64.b64decode(entry["content"]) == b"hello"


async def test_entry_errors_and_result_counts(serve):
    listener = await serve(then(
        (200, {}, write_result({"code": "conflict", "message": "other upload"})),
        (200, {}, {"ok": True, "results": [write_result()["results"][0]] * 2}),
        (200, {}, {"ok": True, "results": [{"complete": True, "written": False, "error": None}]}),
    ))
    async with client(listener) as arker:
        sync = arker.vm(VM_ID).sync
        err = await failure(sync.write_file("/home/user/f", b"x"))
        assert (err.code, err.status, err.message) == ("conflict", 200, "other upload")
        assert (await failure(sync.write_file("/home/user/f", b"x"))).code == "internal"  # 2 results
        assert (await failure(sync.write_file("/home/user/f", b"x"))).code == "internal"  # not written
    assert len(listener.requests) == 3


async def test_presigned_write_restarts_after_403_and_expired(serve):
    size = CHUNK_SIZE + 1

    def granted(n: int) -> dict:
        return {"ok": True, "results": [{"presigned_url": f"{listener.url}/blob/{n}", "upload_id": f"upl{n}",
                                         "complete": False, "written": False, "error": None}]}

    sync_replies = iter([lambda: granted(1), lambda: granted(2),
                         lambda: write_result({"code": "expired", "message": "gone"}),
                         lambda: granted(3), write_result])

    def respond(i, method, target):
        if method == "PUT":
            return (403, {}, "") if target == "/blob/1" else (200, {}, "")
        return (200, {}, next(sync_replies)())

    listener = await serve(respond)
    async with client(listener) as arker:
        await arker.vm(VM_ID).sync.write_file("/home/user/big", b"b" * size)
    kinds = []
    for line, headers, body in listener.requests:
        if line.startswith("PUT"):
            assert "authorization" not in headers and int(headers["content-length"]) == size == len(body)
            kinds.append(line.split()[1])
        else:
            entry = json.loads(body)["writes"][0]
            kinds.append("presign" if entry.get("presigned") else f"commit {entry['upload_id']}")
    assert kinds == ["presign", "/blob/1", "presign", "/blob/2", "commit upl2", "presign", "/blob/3", "commit upl3"]


async def test_commit_answer_without_flags_is_success(serve):
    """Core clients check only ``error`` on a commit (§4.5.5): a service may leave the flags out."""
    answers = iter([{"ok": True, "results": [{"presigned_url": "", "upload_id": "upl1", "error": None}]},
                    {"ok": True, "results": [{"path": "/home/user/big", "error": None}]},
                    {"ok": True, "results": [{"presigned_url": "", "upload_id": "upl2", "error": None}]},
                    {"ok": True, "results": [{"complete": True, "written": False, "error": None}]}])

    def respond(i, method, target):
        if method == "PUT":
            return 200, {}, ""
        answer = next(answers)
        if "presigned_url" in answer["results"][0]:
            answer["results"][0]["presigned_url"] = f"{listener.url}/blob"
        return 200, {}, answer

    listener = await serve(respond)
    async with client(listener) as arker:
        await arker.vm(VM_ID).sync.write_file("/home/user/big", b"b" * (CHUNK_SIZE + 1))
        err = await failure(arker.vm(VM_ID).sync.write_file("/home/user/big", b"b" * (CHUNK_SIZE + 1)))
    assert (err.code, err.status) == ("internal", 200)  # an explicit written=false is not success
    assert [line.split()[0] for line in listener.lines] == ["POST", "PUT", "POST"] * 2


# -- presigned hosts never see the key --------------------------------------------------------


def redirecting(body: bytes) -> Callable:
    """``/redirect...`` answers 307 to ``/blob``; everything else gets ``body``."""
    return lambda i, method, target: (
        (307, {"location": "/blob"}, b"") if target.startswith("/redirect") else (200, {}, body)
    )


async def test_presigned_requests_carry_no_authorization_even_after_redirects(serve):
    store = await serve(redirecting(b"0123456789"))
    async with Arker(KEY, base_url=store.url) as arker:
        transport = arker._transport  # the presigned client this Arker's RemoteFiles use
        f = RemoteFile(transport, path="/home/user/f", size=10, url=f"{store.url}/redirect?sig=abc")
        assert await f.read_range(3, 4) == b"3456"  # the store ignored Range: sliced from a 200
        assert await f.read_all() == b"0123456789"
        await transport.blob_put(f"{store.url}/blob", lambda: b"payload", 7)
        # A PUT is never redirected: its streamed body could not be sent again.
        err = await failure(transport.blob_put(f"{store.url}/redirect", lambda: b"payload", 7))
        assert (err.code, err.status, err.message) == ("internal", 307, "upload PUT failed: 307")
    assert store.lines == ["GET /redirect?sig=abc HTTP/1.1", "GET /blob HTTP/1.1"] * 2 + \
        ["PUT /blob HTTP/1.1", "PUT /redirect HTTP/1.1"]
    assert store.requests[0][1]["range"] == "bytes=3-6"
    for _, headers, _ in store.requests:
        assert "authorization" not in headers
    assert store.requests[4][2] == b"payload"


async def test_api_client_does_not_follow_redirects(serve):
    """A redirecting API host must not walk the key over to wherever it points."""
    api = await serve(redirecting(b"{}"))
    async with Arker(KEY, base_url=api.url + "/redirect", retry=FAST) as arker:
        err = await failure(arker.vm(VM_ID).delete())
    assert (err.code, err.status) == ("internal", 307)
    assert len(api.requests) == 1


async def test_signed_get_failure_is_internal_with_status(serve):
    store = await serve(then((503, {}, ""), (403, {}, "")))
    async with Arker(KEY, base_url=store.url, retry=FAST) as arker:
        f = RemoteFile(arker._transport, path="/home/user/f", size=10, url=f"{store.url}/blob")
        err = await failure(f.read_all())
    assert (err.code, err.status, err.message) == ("internal", 403, "signed GET failed: 403")
    assert len(store.requests) == 2  # 503 retried, 403 final


async def test_read_file_asks_again_once_when_the_store_refuses_the_url(serve):
    def respond(i, method, target):
        if method == "GET":
            return (403, {}, "") if target == "/blob/1" else (200, {}, "fresh")
        n = 1 + sum(line.startswith("POST") for line in listener.lines)
        return (200, {}, {"ok": True, "size": 5, "presigned_url": f"{listener.url}/blob/{n}", "expires_in": 900})

    listener = await serve(respond)
    async with client(listener) as arker:
        assert await arker.vm(VM_ID).sync.read_file("/home/user/f") == b"fresh"
    assert [line.split()[1] for line in listener.lines] == [f"/api/v1/vms/{VM_ID}/sync", "/blob/1",
                                                            f"/api/v1/vms/{VM_ID}/sync", "/blob/2"]


async def test_download_starts_over_after_a_dropped_body(serve):
    store = await serve(then((200, {"content-length": "13"}, "partial"), (200, {}, "complete body")))
    async with Arker(KEY, base_url=store.url, retry=FAST) as arker:
        f = RemoteFile(arker._transport, path="/home/user/f", size=13, url=f"{store.url}/blob")
        out = io.BytesIO()
        out.write(b"prefix:")
        assert await f.download_to(out) == 13
    assert out.getvalue() == b"prefix:complete body"  # the partial first body was rolled back
    assert len(store.requests) == 2
