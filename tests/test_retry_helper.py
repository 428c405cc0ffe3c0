"""The one retry loop (``retry.retrying``) shared by the transport, sync-write entries and RemoteFS.

The helper's own rules are pinned directly, on both event loops (attempt counts, hint capping,
failures that are not retried, cancellation); then, against the real local server, the
replay-safety rules of PROTOCOL.md §6.3 as the loops built on it apply them, counted on
``/_local/stats``.
"""

from __future__ import annotations

import errno as E

import anyio
import pytest

from arkerfs.client import Arker, ArkerError, RetryPolicy
from arkerfs.client.retry import AttemptFailed, Retry, retrying
from arkerfs.fs.errors import FsError
from arkerfs.fs.remote import BUSY_RETRIES, RemoteFS

BACKENDS = pytest.mark.parametrize("backend", ["asyncio", "trio"])
TINY = RetryPolicy(attempts=4, base_delay=0.001, max_delay=0.004, hint_cap=0.002, jitter=0.0)


class Flaky(Exception):
    """A failure the tests classify."""

    def __init__(self, hint: float | None = None) -> None:
        super().__init__(hint)
        self.hint = hint


class Recorder:
    """An attempt function failing ``failures`` times (then returning ``"done"``) that records
    what the loop did: the ``tries`` it was called with, and each retry's delay and number."""

    def __init__(self, failures: int, make=lambda: Flaky()) -> None:
        self.failures = failures
        self.make = make
        self.tries: list[int] = []
        self.retries: list[tuple[float, int]] = []
        self.gave_up: list[Exception] = []

    async def attempt(self, tries: int) -> str:
        self.tries.append(tries)
        if len(self.tries) <= self.failures:
            raise self.make()
        return "done"

    def on_retry(self, exc: Exception, delay: float, number: int) -> None:
        self.retries.append((delay, number))

    def on_give_up(self, exc: Exception) -> None:
        self.gave_up.append(exc)

    async def run(self, policy: RetryPolicy = TINY, classify=lambda exc: Retry(exc.hint), catch=Flaky):
        return await retrying(policy, self.attempt, classify=classify, catch=catch,
                              on_retry=self.on_retry, on_give_up=self.on_give_up)


@BACKENDS
def test_succeeds_after_transient_failures_with_backoff(backend):
    rec = Recorder(failures=3)
    assert anyio.run(rec.run, backend=backend) == "done"
    assert rec.tries == [0, 1, 2, 3]
    assert rec.retries == [(0.001, 2), (0.002, 3), (0.004, 4)]  # base · 2ⁿ, capped at max_delay
    assert rec.gave_up == []


@BACKENDS
def test_gives_up_after_the_policy_attempts_with_the_last_failure(backend):
    failures: list[Flaky] = []

    def make() -> Flaky:
        failures.append(Flaky())
        return failures[-1]

    rec = Recorder(failures=100, make=make)
    with pytest.raises(Flaky) as info:
        anyio.run(rec.run, backend=backend)
    assert rec.tries == [0, 1, 2, 3]  # attempts counts the first try
    assert [number for _, number in rec.retries] == [2, 3, 4]
    assert info.value is failures[-1] and rec.gave_up == [failures[-1]]


@BACKENDS
def test_one_attempt_means_no_retry(backend):
    rec = Recorder(failures=100)
    with pytest.raises(Flaky):
        anyio.run(rec.run, RetryPolicy(attempts=1), backend=backend)
    assert rec.tries == [0] and rec.retries == [] and len(rec.gave_up) == 1


@BACKENDS
def test_a_server_hint_replaces_the_backoff_capped_at_hint_cap(backend):
    hints = iter([0.0015, 99.0, 0.0])
    rec = Recorder(failures=3, make=lambda: Flaky(next(hints)))
    assert anyio.run(rec.run, backend=backend) == "done"
    assert rec.retries == [(0.0015, 2), (0.002, 3), (0.0, 4)]  # 99 s capped at hint_cap


@BACKENDS
def test_a_failure_classify_refuses_is_raised_at_once(backend):
    rec = Recorder(failures=100)
    with pytest.raises(Flaky):
        anyio.run(rec.run, TINY, lambda exc: None, backend=backend)
    assert rec.tries == [0] and rec.retries == [] and rec.gave_up == []


@BACKENDS
def test_errors_outside_catch_pass_through_unclassified(backend):
    classified: list[Exception] = []

    def classify(exc):
        classified.append(exc)
        return Retry()

    rec = Recorder(failures=100, make=lambda: KeyError("not ours"))
    with pytest.raises(KeyError):
        anyio.run(rec.run, TINY, classify, backend=backend)
    assert rec.tries == [0] and classified == []


@BACKENDS
def test_uncounted_retries_do_not_use_up_attempts(backend):
    # Outage mode's shape: three failures wait without counting, then the policy's 2 attempts.
    kinds = iter(["outage"] * 3 + ["counted"] * 10)
    rec = Recorder(failures=100, make=lambda: Flaky(next(kinds)))

    def classify(exc: Flaky) -> Retry:
        return Retry.uncounted(0.001) if exc.hint == "outage" else Retry()

    with pytest.raises(Flaky):
        anyio.run(rec.run, RetryPolicy(attempts=2, base_delay=0.001, jitter=0.0), classify, backend=backend)
    assert rec.tries == [0, 1, 2, 3, 4]
    assert [number for _, number in rec.retries] == [2]  # on_retry: counted retries only


@BACKENDS
def test_cancellation_during_the_backoff_is_not_swallowed(backend):
    rec = Recorder(failures=100)

    async def main():
        with anyio.CancelScope() as scope:
            rec.on_retry = lambda exc, delay, number: scope.cancel()  # cancel the coming sleep
            await rec.run(RetryPolicy(attempts=4, base_delay=30.0, max_delay=30.0))
        return scope.cancelled_caught

    assert anyio.run(main, backend=backend) is True
    assert rec.tries == [0]  # no attempt after the cancelled sleep


@BACKENDS
def test_cancellation_inside_an_attempt_is_never_classified(backend):
    classified: list[BaseException] = []

    async def attempt(tries: int) -> None:
        scope.cancel()
        await anyio.sleep(0)  # the checkpoint raises the cancellation

    def classify(exc):
        classified.append(exc)
        return Retry()

    async def main():
        nonlocal scope
        with anyio.CancelScope() as scope:
            await retrying(TINY, attempt, classify=classify)  # catch defaults to Exception
        return scope.cancelled_caught

    scope = None
    assert anyio.run(main, backend=backend) is True
    assert classified == []


async def test_attempt_failed_carries_its_error_and_hint():
    error = ArkerError("unavailable", "disk busy", 200)
    failure = AttemptFailed(error, 1.5)
    assert failure.error is error and failure.hint == 1.5


# -- the loops built on it, against the real server ------------------------------------------


@pytest.fixture
async def patient(server):
    """A client with the default four attempts and short waits."""
    policy = RetryPolicy(base_delay=0.01, max_delay=0.05)
    async with Arker(server.api_key, base_url=server.base_url, list_base_url=server.base_url, retry=policy) as arker:
        vm = await arker.vm("arkuntu").fork()
        try:
            yield vm
        finally:
            await vm.delete()


async def test_a_run_that_may_have_executed_is_not_replayed_but_a_read_is(patient, control):
    vm = patient
    await vm.sync.write_file("/home/user/r", b"r")
    control.set_faults(fail_rate=1.0, fail_status=504, after_effect=True)
    control.reset_stats()
    with pytest.raises(ArkerError) as info:
        await vm.run("echo ran >> /home/user/log", session_id=3)
    assert (info.value.code, info.value.never_started) == ("gateway_timeout", False)
    with pytest.raises(ArkerError):
        await vm.sync.read_file("/home/user/r")  # replay-safe: all four attempts
    calls = control.calls()
    control.clear_faults()
    assert (calls.get("run"), calls.get("sync_read")) == (1, 4)
    assert await vm.sync.read_file("/home/user/log") == b"ran\n"  # executed exactly once


async def test_never_started_runs_are_retried_by_the_transport_then_by_remotefs(server, control):
    """vm_busy: the transport's attempts, times RemoteFS's own busy attempts, then EBUSY."""
    policy = RetryPolicy(attempts=2, base_delay=0.001, max_delay=0.001)
    async with Arker(server.api_key, base_url=server.base_url, list_base_url=server.base_url, retry=policy) as arker:
        vm = await arker.vm("arkuntu").fork()
        try:
            fs = RemoteFS(vm)
            control.set_faults(busy_rate=1.0)
            control.reset_stats()
            with pytest.raises(FsError) as info:
                await fs.lstat(b"/home/user")
            calls = control.calls()
            control.clear_faults()
            assert info.value.errno == E.EBUSY
            assert calls.get("run") == 2 * (BUSY_RETRIES + 1)
            assert fs.pool.limit == 4  # one run at a time: not a VM-wide busy
        finally:
            await vm.delete()
