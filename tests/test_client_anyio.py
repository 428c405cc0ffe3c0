"""The SDK under asyncio and under trio alike, against the real local server.

Each test is a plain function that runs its body with ``anyio.run(..., backend=...)``, so the
same code drives the SDK on both event loops (pytest-trio's trio mode only handles ``async def``
tests; these are not).
"""

from __future__ import annotations

import random

import anyio
import pytest

from arkerfs.client import Arker, NotFoundError, RetryPolicy
from arkerfs.protocol import CHUNK_SIZE

BACKENDS = pytest.mark.parametrize("backend", ["asyncio", "trio"])
FAST = RetryPolicy(base_delay=0.01, max_delay=0.05)


def client(server, **kwargs) -> Arker:
    return Arker(server.api_key, base_url=server.base_url, list_base_url=server.base_url, **kwargs)


@BACKENDS
def test_every_sdk_call_works_on_both_event_loops(backend, server, control, tmp_path):
    small = b"small file\n"
    big = random.Random(1).randbytes(CHUNK_SIZE + 100_000)  # > 4 MiB: presign, PUT, commit
    local = tmp_path / "upload.bin"
    local.write_bytes(big)

    async def main():
        async with client(server, retry=FAST) as arker:
            vm = await arker.vm("arkuntu").fork(name=f"anyio-{backend}")
            try:
                result = await vm.run("echo hello; exit 3")
                assert (result.stdout, result.exit_code) == (b"hello\n", 3)

                control.reset_stats()
                await vm.sync.write_file("/home/user/small.txt", small)  # inline
                await vm.sync.write_file("/home/user/big.bin", local)  # presigned, streamed from disk
                calls = control.calls()
                assert (calls["sync_write"], calls["presigned_put"]) == (3, 1)

                assert await vm.sync.read_file("/home/user/small.txt") == small
                assert await vm.sync.read_file("/home/user/big.bin") == big
                remote = await vm.sync.open_read("/home/user/big.bin")
                assert not remote.inline  # over the server's 64 KiB inline limit
                assert await remote.read_range(CHUNK_SIZE - 10, 30) == big[CHUNK_SIZE - 10:CHUNK_SIZE + 20]
                assert await remote.read_range(len(big) - 5, 100) == big[-5:]
                copy = tmp_path / "copy.bin"
                assert await remote.download_to(copy) == len(big)
                assert copy.read_bytes() == big

                page = await arker.list(q=f"anyio-{backend}")
                assert vm.id in [item.vm_id for item in page.items]
                assert (await arker.resolve(f"anyio-{backend}")).id == vm.id
            finally:
                await vm.delete()
            with pytest.raises(NotFoundError):
                await vm.run("true")

    anyio.run(main, backend=backend)


@BACKENDS
def test_retries_sleep_on_both_event_loops(backend, server, control):
    """Injected 503s force retries, and so the SDK's backoff sleep, on the running loop."""
    patient = RetryPolicy(attempts=12, base_delay=0.01, max_delay=0.05)

    async def main():
        async with client(server, retry=patient) as arker:
            vm = await arker.vm("arkuntu").fork()
            try:
                await vm.sync.write_file("/home/user/r.txt", b"retried")
                control.reset_stats()
                control.set_faults(fail_rate=0.5, seed=3)
                try:
                    for _ in range(6):
                        assert await vm.sync.read_file("/home/user/r.txt") == b"retried"
                finally:
                    control.clear_faults()
                assert control.calls()["sync_read"] > 6  # some reads failed and were retried
            finally:
                await vm.delete()

    anyio.run(main, backend=backend)


@BACKENDS
def test_run_outlasts_a_short_client_read_timeout(backend, server):
    """A run without a timeout waits for the server, not for the client's API read timeout."""

    async def main():
        async with client(server, timeout=1) as arker:
            vm = await arker.vm("arkuntu").fork()
            try:
                result = await vm.run("sleep 2.5; echo finished")
                assert (result.stdout, result.exit_code) == (b"finished\n", 0)
            finally:
                await vm.delete()

    anyio.run(main, backend=backend)


@BACKENDS
def test_self_hosted_base_url_also_serves_listing(backend, server, monkeypatch):
    """No list_base_url and no ARKER_LIST_BASE_URL: a non-Arker-cloud base answers list too."""
    monkeypatch.delenv("ARKER_LIST_BASE_URL", raising=False)
    name = f"selfhosted-{backend}"

    async def main():
        async with Arker(server.api_key, base_url=server.base_url, retry=FAST) as arker:
            assert arker.list_base_url == server.base_url
            vm = await arker.vm("arkuntu").fork(name=name)
            try:
                assert [item.vm_id for item in (await arker.list(q=name)).items] == [vm.id]
                assert (await arker.resolve(name)).id == vm.id
            finally:
                await vm.delete()

    anyio.run(main, backend=backend)
