"""``vm.sync.write_files``: many files in few sync requests, against the real local server,
under asyncio and trio alike (the pattern of test_client_anyio).

Request counts come from the server's ``/_local/stats``. Two tests wrap httpx's real network
transport in ``Observing``: it passes every request through to the local server and only
watches (bodies sent, PUTs in flight), or, for the per-entry retry test, relabels an entry the
server really wrote as a transient per-entry error, the fault the local server's hooks cannot
inject. The server still does all the work.
"""

from __future__ import annotations

import json
import random

import anyio
import httpx
import pytest

from arkerfs.client import Arker, RetryPolicy, WriteFilesError
from arkerfs.client.batchwrite import PACKED_BODY_BUDGET
from arkerfs.protocol import CHUNK_SIZE

BACKENDS = pytest.mark.parametrize("backend", ["asyncio", "trio"])
FAST = RetryPolicy(base_delay=0.01, max_delay=0.05)
SIX_MIB = 6 * 1024 * 1024


def client(server, **kwargs) -> Arker:
    kwargs.setdefault("retry", FAST)
    return Arker(server.api_key, base_url=server.base_url, list_base_url=server.base_url, **kwargs)


class Observing(httpx.AsyncBaseTransport):
    """httpx's network transport, watched: sync write bodies, PUTs in flight, optional relabel."""

    def __init__(self, relabel_first_write: set[int] = frozenset(), one_result_only: bool = False) -> None:
        self._inner = httpx.AsyncHTTPTransport()
        self.write_bodies: list[dict] = []
        self.write_body_sizes: list[int] = []
        self.puts_in_flight = 0
        self.max_puts_in_flight = 0
        self._relabel = set(relabel_first_write)  # entry indexes of the first write to relabel
        self._one_result_only = one_result_only  # answer like a server that takes one entry

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.method == "PUT":
            self.puts_in_flight += 1
            self.max_puts_in_flight = max(self.max_puts_in_flight, self.puts_in_flight)
            try:
                return await self._inner.handle_async_request(request)
            finally:
                self.puts_in_flight -= 1
        body = json.loads(request.content) if request.url.path.endswith("/sync") else {}
        if body.get("op") != "write":
            return await self._inner.handle_async_request(request)
        self.write_bodies.append(body)
        self.write_body_sizes.append(len(request.content))
        response = await self._inner.handle_async_request(request)
        if not self._relabel and not self._one_result_only:
            return response
        payload = json.loads(await response.aread())
        if self._one_result_only:
            payload["results"] = payload["results"][:1]
        for i in self._relabel:
            payload["results"][i]["error"] = {"code": "internal", "message": "SlowDown: please reduce request rate"}
        self._relabel = set()
        return httpx.Response(response.status_code, json=payload)

    async def aclose(self) -> None:
        await self._inner.aclose()


def small_files(count: int, seed: int, max_size: int = 16 * 1024) -> dict[str, bytes]:
    rng = random.Random(seed)
    return {f"/home/user/many/f{i:03d}.bin": rng.randbytes(rng.randint(1, max_size)) for i in range(count)}


async def assert_files(vm, files: dict[str, bytes]) -> None:
    for path, data in files.items():
        assert await vm.sync.read_file(path) == data, path


@BACKENDS
def test_300_small_files_land_in_at_most_two_requests(backend, server, control, tmp_path):
    files = small_files(300, seed=1)
    entries = []
    for n, (path, data) in enumerate(files.items()):  # every third one from a local file
        if n % 3 == 0:
            local = tmp_path / f"{n}.bin"
            local.write_bytes(data)
            entries.append((path, local))
        else:
            entries.append((path, data))

    async def main():
        async with client(server) as arker:
            vm = await arker.vm("arkuntu").fork()
            try:
                control.reset_stats()
                await vm.sync.write_files(entries)
                calls = control.nonzero_calls()
                assert calls["sync_write"] <= 2, calls
                assert set(calls) == {"sync_write"}
                await assert_files(vm, files)
            finally:
                await vm.delete()

    anyio.run(main, backend=backend)


@BACKENDS
def test_large_files_go_presigned_alongside_packed_small_ones(backend, server, control, tmp_path):
    rng = random.Random(2)
    big_bytes, big_local = rng.randbytes(SIX_MIB), rng.randbytes(SIX_MIB + 1)
    (tmp_path / "big.bin").write_bytes(big_local)
    files = {**small_files(20, seed=3), "/home/user/big1.bin": big_bytes, "/home/user/big2.bin": big_local,
             "/home/user/edge.bin": rng.randbytes(CHUNK_SIZE)}  # exactly 4 MiB: still inline
    entries = {path: (tmp_path / "big.bin" if path == "/home/user/big2.bin" else data) for path, data in files.items()}

    async def main():
        async with client(server) as arker:
            vm = await arker.vm("arkuntu").fork()
            try:
                control.reset_stats()
                await vm.sync.write_files(entries)
                calls = control.nonzero_calls()
                # Packed: the 20 small files, then the 4 MiB one alone (it fills a request by
                # itself); each big file: presign + commit, and one PUT.
                assert calls == {"sync_write": 2 + 2 * 2, "presigned_put": 2}, calls
                await assert_files(vm, files)
            finally:
                await vm.delete()

    anyio.run(main, backend=backend)


@BACKENDS
def test_a_failing_entry_is_reported_by_path_and_the_others_land(backend, server, control):
    files = small_files(10, seed=4)

    async def main():
        async with client(server) as arker:
            vm = await arker.vm("arkuntu").fork()
            try:
                await vm.run("mkdir -p /home/user/many/adir")
                entries = [*files.items(), ("/home/user/many/adir", b"not a file"),
                           ("/home/user/empty.txt", b""), ("/etc/passwd", b"x")]
                control.reset_stats()
                with pytest.raises(WriteFilesError) as caught:
                    await vm.sync.write_files(entries)
                # Only the directory went to the server, in the one request with the others.
                assert control.nonzero_calls() == {"sync_write": 1}
                failed = caught.value.failed
                assert list(failed) == ["/home/user/many/adir", "/home/user/empty.txt", "/etc/passwd"]
                assert {path: e.code for path, e in failed.items()} == {
                    "/home/user/many/adir": "bad_request", "/home/user/empty.txt": "bad_request",
                    "/etc/passwd": "bad_request"}
                assert failed["/home/user/many/adir"].status == 200  # a per-entry error
                assert caught.value.code == "bad_request"
                assert caught.value.written == list(files)
                assert "/home/user/many/adir" in str(caught.value)
                await assert_files(vm, files)
                assert (await vm.run("test -d /home/user/many/adir")).exit_code == 0
            finally:
                await vm.delete()

    anyio.run(main, backend=backend)


@BACKENDS
def test_transient_entry_errors_resend_only_those_entries(backend, server, control):
    files = small_files(8, seed=5)
    observing = Observing(relabel_first_write={2, 5})

    async def main():
        async with client(server, http_transport=observing) as arker:
            vm = await arker.vm("arkuntu").fork()
            try:
                control.reset_stats()
                await vm.sync.write_files(files)
                assert control.nonzero_calls() == {"sync_write": 2}
                first, second = observing.write_bodies
                assert second["writes"] == [first["writes"][2], first["writes"][5]]  # same upload_ids
                await assert_files(vm, files)
            finally:
                await vm.delete()

    anyio.run(main, backend=backend)


def test_a_server_answering_one_entry_per_request_gets_one_per_request(server, control):
    """§10.20: fewer results than entries means the server takes one entry per request; the
    rest is resent singly (replay-safe even if the server had in fact written them)."""
    files = small_files(5, seed=9)
    observing = Observing(one_result_only=True)

    async def main():
        async with client(server, http_transport=observing) as arker:
            vm = await arker.vm("arkuntu").fork()
            try:
                await vm.sync.write_files(files)
                assert [len(body["writes"]) for body in observing.write_bodies] == [5, 1, 1, 1, 1, 1]
                await assert_files(vm, files)
            finally:
                await vm.delete()

    anyio.run(main, backend="trio")


def test_packed_requests_stay_under_the_body_budget(server, control, tmp_path):
    rng = random.Random(6)
    files = {f"/home/user/mb/{i}.bin": rng.randbytes(1024 * 1024 + i) for i in range(12)}
    entries = []
    for n, (path, data) in enumerate(files.items()):
        local = tmp_path / f"{n}.bin"
        local.write_bytes(data)
        entries.append((path, local))
    observing = Observing()

    async def main():
        async with client(server, http_transport=observing) as arker:
            vm = await arker.vm("arkuntu").fork()
            try:
                control.reset_stats()
                await vm.sync.write_files(entries)
                sizes = observing.write_body_sizes
                assert max(sizes) <= PACKED_BODY_BUDGET, sizes
                # 16.8 MB of base64 in all: at least 4 requests, each of several files.
                assert 4 <= control.calls()["sync_write"] == len(sizes) <= 6, sizes
                await assert_files(vm, files)
            finally:
                await vm.delete()

    anyio.run(main, backend="asyncio")


def test_large_uploads_are_bounded_in_parallel(server, control):
    rng = random.Random(7)
    files = {f"/home/user/big/{i}.bin": rng.randbytes(CHUNK_SIZE + 1 + i) for i in range(5)}
    observing = Observing()

    async def main():
        async with client(server, http_transport=observing) as arker:
            vm = await arker.vm("arkuntu").fork()
            try:
                control.set_faults(latency_ms=200)  # every upload takes a while, so they overlap
                await vm.sync.write_files(files, parallel=2)
                control.clear_faults()
                assert observing.max_puts_in_flight == 2
                await assert_files(vm, files)
            finally:
                await vm.delete()

    anyio.run(main, backend="trio")


def test_replayed_packed_request_after_an_ambiguous_failure_lands_once(server, control):
    """The server wrote the files but the answer was lost: the resend (same upload ids) succeeds."""
    files = small_files(30, seed=8)

    async def main():
        async with client(server, retry=RetryPolicy(attempts=12, base_delay=0.01, max_delay=0.05)) as arker:
            vm = await arker.vm("arkuntu").fork()
            try:
                control.reset_stats()
                control.set_faults(fail_rate=0.5, seed=3, after_effect=True)
                await vm.sync.write_files(files)
                control.clear_faults()
                assert control.calls()["sync_write"] >= 2  # at least one answer was replaced
                await assert_files(vm, files)
            finally:
                await vm.delete()

    anyio.run(main, backend="asyncio")


def test_nothing_is_sent_for_a_path_given_twice(server, control):
    async def main():
        async with client(server) as arker:
            vm = arker.vm("01KQBYKEV5WJ7YB010603T1DCT_d8c0")
            control.reset_stats()
            with pytest.raises(ValueError, match="more than once"):
                await vm.sync.write_files([("/home/user/a", b"1"), ("/home/user/a", b"2")])
            assert control.total_calls() == 0

    anyio.run(main, backend="trio")
