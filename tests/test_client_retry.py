"""Retries, error mapping and key hygiene, against the real server and its fault injection."""

from __future__ import annotations

import logging
import socket
import traceback
import uuid
from contextlib import contextmanager

import pytest
import trio

from arkerfs.client import Arker, ArkerError, RetryPolicy

FAST = RetryPolicy(base_delay=0.01, max_delay=0.05)  # 4 attempts, short waits


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
async def arker(server):
    async with Arker(server.api_key, base_url=server.base_url, list_base_url=server.base_url, retry=FAST) as client:
        yield client


@contextmanager
def faults(control, **settings):
    """Faults on for the block only: async fixture teardown (VM delete) runs before ``control``'s."""
    control.set_faults(**settings)
    try:
        yield
    finally:
        control.clear_faults()


# -- retry policy -----------------------------------------------------------------------------


def test_retry_policy_delays():
    policy = RetryPolicy()
    assert 0.2 <= policy.delay(0) <= 0.25 and 0.4 <= policy.delay(1) <= 0.45
    assert 2.0 <= policy.delay(10) <= 2.05  # capped at max_delay
    assert policy.delay(0, hint=3) == 3 and policy.delay(0, hint=99) == 10  # hint, capped
    with pytest.raises(ValueError):
        RetryPolicy(attempts=0)


async def test_half_the_calls_failing_still_succeeds(server, control):
    patient = RetryPolicy(attempts=12, base_delay=0.01, max_delay=0.05)
    async with Arker(server.api_key, base_url=server.base_url, list_base_url=server.base_url, retry=patient) as arker:
        vm = await arker.vm("arkuntu").fork()
        try:
            big = bytes(range(256)) * 20_000  # 5,120,000 bytes: presigned write and read
            control.reset_stats()
            with faults(control, fail_rate=0.5, seed=7):
                for i in range(4):
                    await vm.sync.write_file(f"/home/user/f{i}.txt", f"content {i}")
                    assert await vm.sync.read_file(f"/home/user/f{i}.txt") == f"content {i}".encode()
                    assert (await vm.run(f"cat /home/user/f{i}.txt")).stdout == f"content {i}".encode()
                await vm.sync.write_file("/home/user/big.bin", big)
                assert await vm.sync.read_file("/home/user/big.bin") == big
                assert (await arker.list()).total >= 1
            # 12 small calls, presign + PUT + commit, read + GET, list: 18 without any failure.
            assert control.total_calls() > 18
        finally:
            await vm.delete()


async def test_sync_read_gives_up_after_four_attempts(vm, control):
    await vm.sync.write_file("/home/user/x.txt", b"x")
    control.reset_stats()
    with faults(control, fail_rate=1.0), pytest.raises(ArkerError) as info:
        await vm.sync.read_file("/home/user/x.txt")
    assert (info.value.code, info.value.status) == ("unavailable", 503)
    assert control.calls().get("sync_read") == 4


async def test_run_is_retried_only_because_the_envelope_says_not_started(vm, control):
    control.reset_stats()
    with faults(control, fail_rate=1.0), pytest.raises(ArkerError) as info:
        await vm.run("echo never")
    assert (info.value.code, info.value.status) == ("unavailable", 503)
    assert control.calls().get("run") == 4


async def test_injected_vm_busy_is_retried_then_raised(vm, control):
    control.reset_stats()
    with faults(control, busy_rate=1.0), pytest.raises(ArkerError) as info:
        await vm.run("echo hi")
    assert (info.value.code, info.value.status) == ("vm_busy", 409)
    assert control.calls().get("run") == 4


async def test_real_vm_busy_on_one_session(server, vm):
    # Default policy: four attempts over about 1.5 s, well inside the first run's 3 s.
    async with Arker(server.api_key, base_url=server.base_url, list_base_url=server.base_url) as arker:
        same = arker.vm(vm.id)
        outcome = {}

        async def long_run():
            outcome["first"] = await same.run("sleep 3; echo done", session_id=4)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(long_run)
            await trio.sleep(0.5)
            with pytest.raises(ArkerError) as info:
                await same.run("echo second", session_id=4)
        assert info.value.code == "vm_busy"
        assert outcome["first"].stdout == b"done\n"


async def test_read_timeout_on_fork_is_outcome_unknown_and_not_replayed(server, control):
    # (A run without a timeout waits for the server, not the read timeout: test_client_anyio.)
    name = f"slow-fork-{uuid.uuid4().hex[:8]}"
    async with Arker(server.api_key, base_url=server.base_url, list_base_url=server.base_url, timeout=1) as arker:
        control.reset_stats()
        with faults(control, latency_ms=2000), pytest.raises(ArkerError) as info:
            await arker.vm("arkuntu").fork(name=name)
        assert (info.value.code, info.value.status, info.value.outcome_unknown) == ("unavailable", 0, True)
        assert "outcome is unknown" in info.value.message
        assert control.calls().get("fork") == 1
        await trio.sleep(1.5)  # the server still forks after its injected latency: clean that up
        for item in (await arker.list(q=name)).items:
            await arker.vm(item.vm_id).delete()


async def test_wrong_key_is_unauthorized_without_retry(server, caplog):
    # The server's stats count only authenticated calls, so the SDK's own retry log is the
    # witness here; test_client_wire counts the requests of a 401 exactly.
    caplog.set_level(logging.INFO, logger="arkerfs.client")
    async with Arker("ark_wrong_key", base_url=server.base_url, list_base_url=server.base_url, retry=FAST) as arker:
        with pytest.raises(ArkerError) as info:
            await arker.list()
    assert (info.value.code, info.value.status) == ("unauthorized", 401)
    assert not [r for r in caplog.records if "retrying" in r.getMessage()]


async def test_dead_server_is_unavailable(server):
    port = closed_port()
    dead_url = f"http://127.0.0.1:{port}"
    async with Arker(server.api_key, base_url=dead_url, list_base_url=dead_url, retry=FAST) as arker:
        with pytest.raises(ArkerError) as info:
            await arker.vm("01KQBYKEV5WJ7YB010603T1DCT_d8c0").run("true")
    err = info.value
    assert (err.code, err.status, err.outcome_unknown) == ("unavailable", 0, False)
    assert f"127.0.0.1:{port}" in err.message and "cannot connect" in err.message
    assert server.api_key not in str(err)


def test_missing_key_says_how_to_set_it(monkeypatch):
    monkeypatch.delenv("ARKER_API_KEY", raising=False)
    with pytest.raises(ArkerError) as info:
        Arker(base_url="http://127.0.0.1:1")
    assert (info.value.code, info.value.status) == ("unauthorized", 0)
    assert "ARKER_API_KEY" in info.value.message


def test_settings_come_from_arguments_then_environment(monkeypatch):
    monkeypatch.setenv("ARKER_API_KEY", "ark_env_key")
    monkeypatch.setenv("ARKER_BASE_URL", "http://base.example//")
    monkeypatch.delenv("ARKER_LIST_BASE_URL", raising=False)
    arker = Arker()
    assert (arker.base_url, arker.list_base_url) == ("http://base.example", "http://base.example")
    monkeypatch.setenv("ARKER_LIST_BASE_URL", "http://list.example/")
    assert Arker().list_base_url == "http://list.example"
    explicit = Arker("ark_arg", base_url="http://arg.example/", list_base_url="http://arglist.example")
    assert (explicit.base_url, explicit.list_base_url) == ("http://arg.example", "http://arglist.example")
    monkeypatch.delenv("ARKER_BASE_URL")
    monkeypatch.delenv("ARKER_LIST_BASE_URL")
    defaults = Arker()
    assert (defaults.base_url, defaults.list_base_url) == ("https://aws-us-west-2.burst.arker.ai", "https://arker.ai")


# -- key hygiene ------------------------------------------------------------------------------


def traceback_with_locals(info: pytest.ExceptionInfo) -> str:
    """The full chained traceback with every frame's locals, minus the test's own frame."""
    error = info.value
    tb = info.tb.tb_next
    return "".join(traceback.TracebackException(type(error), error, tb, capture_locals=True).format(chain=True))


async def test_key_never_in_repr_errors_or_debug_logs(server, vm, caplog):
    caplog.set_level(logging.DEBUG)
    key = server.api_key
    seen: list[str] = []
    async with Arker(key, base_url=server.base_url, list_base_url=server.base_url, retry=FAST) as arker:
        handle = arker.vm(vm.id)
        seen += [repr(arker), str(arker), repr(handle), repr(handle.sync)]
        await handle.run("echo hi")
        await handle.sync.write_file("/home/user/big.bin", b"z" * (5 * 1024 * 1024))
        f = await handle.sync.open_read("/home/user/big.bin")
        seen.append(repr(f))
        await f.read_range(0, 10)
        for failing in (handle.sync.read_file("/home/user/missing"), handle.run("x", session_id=[1]),
                        arker.vm("01KQBYKEV5WJ7YB010603T1DC0_zz99").fork()):
            with pytest.raises(ArkerError) as info:
                await failing
            seen += [str(info.value), repr(info.value), info.exconly()]
    dead_url = f"http://127.0.0.1:{closed_port()}"
    async with Arker(key, base_url=dead_url, list_base_url=dead_url, retry=FAST) as dead:
        with pytest.raises(ArkerError) as info:
            await dead.list()
        seen += [str(info.value), repr(info.value), traceback_with_locals(info)]
    assert any("cannot connect" in s for s in seen)
    assert caplog.records, "the run above must have logged at DEBUG"
    for text in [*seen, caplog.text]:
        assert key not in text
