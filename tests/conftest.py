"""Shared fixtures: a real local server over a socket (never a mock of the HTTP layer)."""

from __future__ import annotations

import pytest

from arkerfs.server.control import ServerProcess

TEST_KEY = "ark_test_0123456789abcdef"
# Low inline-read limit so presigned reads are exercised with small files.
TEST_INLINE_READ_LIMIT = 64 * 1024


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    """One `arkerfs serve` for the whole session; tests isolate themselves by forking VMs."""
    data = tmp_path_factory.mktemp("server-data")
    proc = ServerProcess(
        data_dir=data,
        api_key=TEST_KEY,
        extra_args=["--inline-read-limit", str(TEST_INLINE_READ_LIMIT)],
        log_path=data.parent / "server.log",
    )
    proc.start()
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture
def control(server):
    """The /_local/ hooks, with faults cleared before and after each test."""
    ctl = server.control
    ctl.clear_faults()
    yield ctl
    ctl.clear_faults()
