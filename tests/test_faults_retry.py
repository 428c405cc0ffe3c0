"""SDK side of the reliability policy: outage mode of ``RetryPolicy``, ``ArkerError.never_started``,
and the server's opt-in fault modes (``after_effect``, ``run_stall_ms``)."""

from __future__ import annotations

import socket
import time

import httpx
import pytest
import trio

from arkerfs.client import Arker, ArkerError
from arkerfs.client.retry import RetryPolicy
from arkerfs.server.control import ServerProcess
from conftest import TEST_KEY

FAST = dict(base_delay=0.05, max_delay=0.2, jitter=0.0)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_outage_deadline_must_not_be_negative():
    with pytest.raises(ValueError):
        RetryPolicy(outage_deadline=-1)


async def test_without_outage_mode_a_refused_connection_uses_up_the_attempts():
    url = f"http://127.0.0.1:{closed_port()}"
    async with Arker(TEST_KEY, base_url=url, list_base_url=url, retry=RetryPolicy(attempts=3, **FAST)) as arker:
        started = time.monotonic()
        with pytest.raises(ArkerError) as info:
            await arker.vm("01M8AAAAAAAAAAAAAAAAAAAAAA_0000").run("true", session_id=3)
    assert time.monotonic() - started < 3.0  # 3 attempts, 0.05 + 0.1 s of backoff
    err = info.value
    assert (err.code, err.status, err.never_started, err.outcome_unknown) == ("unavailable", 0, True, False)


async def test_outage_mode_waits_until_the_deadline_then_fails_never_started():
    url = f"http://127.0.0.1:{closed_port()}"
    policy = RetryPolicy(attempts=2, outage_deadline=1.5, **FAST)
    async with Arker(TEST_KEY, base_url=url, list_base_url=url, retry=policy) as arker:
        started = time.monotonic()
        with pytest.raises(ArkerError) as info:
            await arker.vm("01M8AAAAAAAAAAAAAAAAAAAAAA_0000").run("true", session_id=3)
        elapsed = time.monotonic() - started
    assert 1.5 <= elapsed < 4.0, elapsed  # far more than 2 attempts' worth, but not past the deadline
    assert info.value.never_started and "cannot connect" in info.value.message


async def test_outage_mode_completes_a_run_once_the_server_is_back(tmp_path):
    """A fork and a run issued while nothing listens are sent once the server is up, once each."""
    port = closed_port()
    url = f"http://127.0.0.1:{port}"
    (tmp_path / "data").mkdir()
    srv = ServerProcess(data_dir=tmp_path / "data", api_key=TEST_KEY, port=port, log_path=tmp_path / "log")
    policy = RetryPolicy(outage_deadline=30, **FAST)

    async def start_later():
        await trio.sleep(1.0)
        await trio.to_thread.run_sync(srv.start)

    try:
        async with Arker(TEST_KEY, base_url=url, list_base_url=url, retry=policy) as arker:
            started = time.monotonic()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(start_later)
                vm = await arker.vm("arkuntu").fork()  # not replay-safe, yet provably never sent
                result = await vm.run("echo x >> /home/user/count; wc -l < /home/user/count", session_id=3)
            assert time.monotonic() - started >= 1.0
            assert result.exit_code == 0 and result.stdout == b"1\n"
            assert (await arker.list()).total == 1  # the fork happened once
    finally:
        srv.stop()


async def test_never_started_and_after_effect_faults(server, control):
    async with Arker(server.api_key, base_url=server.base_url, list_base_url=server.base_url,
                     retry=RetryPolicy(attempts=1)) as arker:
        vm = await arker.vm("arkuntu").fork()
        control.set_faults(fail_rate=1.0, fail_status=504)
        with pytest.raises(ArkerError) as info:
            await vm.run("echo ran >> /home/user/log", session_id=3)
        assert (info.value.status, info.value.never_started) == (504, True)  # recovery: not_started
        control.set_faults(fail_rate=1.0, fail_status=504, after_effect=True)
        with pytest.raises(ArkerError) as info:
            await vm.run("echo ran >> /home/user/log", session_id=3)
        assert (info.value.code, info.value.status, info.value.never_started) == ("gateway_timeout", 504, False)
        with pytest.raises(ArkerError) as info:
            await vm.sync.write_file("/home/user/w", b"acted")
        control.clear_faults()
        assert await vm.sync.read_file("/home/user/log") == b"ran\n"  # the acted-then-failed run, once
        assert await vm.sync.read_file("/home/user/w") == b"acted"


def test_fault_fields_are_validated_and_echoed(server, control):
    with httpx.Client(base_url=server.base_url, headers={"authorization": f"Bearer {server.api_key}"}) as c:
        r = c.post("/_local/faults", json={"after_effect": "yes"})
        assert r.status_code == 400 and "after_effect" in r.json()["error"]["message"]
        r = c.post("/_local/faults", json={"run_stall_ms": -1})
        assert r.status_code == 400
        r = c.post("/_local/faults", json={"after_effect": True, "run_stall_ms": 250, "fail_rate": 0.5})
        assert r.json()["faults"]["after_effect"] is True and r.json()["faults"]["run_stall_ms"] == 250


async def test_run_stall_counts_against_the_run_timeout(server, control):
    async with Arker(server.api_key, base_url=server.base_url, list_base_url=server.base_url) as arker:
        vm = await arker.vm("arkuntu").fork()
        control.set_faults(run_stall_ms=20_000)
        started = time.monotonic()
        result = await vm.run("echo hi", session_id=3, timeout=0.5)
        assert result.timed_out and not result.completed and time.monotonic() - started < 10
        control.clear_faults()
        assert (await vm.run("echo hi", session_id=3, timeout=5)).stdout == b"hi\n"


class _DropFirstTouch:
    """A real VM whose first ``touch`` run is lost in flight without executing (outcome unknown)."""

    def __init__(self, vm) -> None:
        self._vm, self.sync, self.commands = vm, vm.sync, []

    async def run(self, command, session_id=0, timeout=None):
        self.commands.append(command)
        if "touch" in command and sum("touch" in c for c in self.commands) == 1:
            raise ArkerError("unavailable", "connection dropped after sending", 0, outcome_unknown=True)
        return await self._vm.run(command, session_id=session_id, timeout=timeout)


async def test_ambiguous_setattr_not_applied_is_reissued_once(server):
    from arkerfs.fs.remote import RemoteFS

    async with Arker(server.api_key, base_url=server.base_url, list_base_url=server.base_url) as arker:
        real = await arker.vm("arkuntu").fork()
        vm = _DropFirstTouch(real)
        attrs = await RemoteFS(vm).setattr(b"/home/user/hello.py", mode=0o640, mtime_ns=1_234_567_890_123_456_789)
        assert (attrs.mtime_ns, attrs.mode & 0o7777) == (1_234_567_890_123_456_789, 0o640)
        assert len(vm.commands) == 3  # the lost run, the probe (not applied), the re-issue
        out = await real.run("stat -c '%a %.9Y' /home/user/hello.py", session_id=3)
        assert out.stdout == b"640 1234567890.123456789\n"
