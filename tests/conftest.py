"""Shared fixtures: a real local server over a socket (never a mock of the HTTP layer)."""

from __future__ import annotations

import os
import subprocess
import tempfile

import pytest

from arkerfs.client import Arker
from arkerfs.mount import runtime
from arkerfs.server.control import ServerProcess
from tests.mountutil import Api, mounted

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


@pytest.fixture(scope="session")
def api(server):
    """Synchronous access to the VM's truth, to check what a mount claims (stateless)."""
    return Api(server)


# Both flags named, so neither mode depends on which one is the default (write-back).
WRITE_MODES = {"write-through": ("--write-through",), "write-back": ("--write-back",)}
# For a test of what only one mode promises (close() failing with the upload's errno is
# write-through; the journal outliving a failure is write-back): ``@WRITE_THROUGH_ONLY``.
WRITE_THROUGH_ONLY = pytest.mark.parametrize("m", ["write-through"], indirect=True)
WRITE_BACK_ONLY = pytest.mark.parametrize("m", ["write-back"], indirect=True)
# For a test that counts calls with the ``m`` fixture: its mount has no change watcher, whose
# long poll would land in the count at a moment no test controls.
NO_WATCH = pytest.mark.no_watch


@pytest.fixture(params=list(WRITE_MODES))
def m(server, control, request):
    """A fresh fork mounted for one test (always unmounted in teardown), in each write mode:
    tests using it run twice (ids ``write-through`` and ``write-back``)."""
    no_watch = ("--no-watch",) if request.node.get_closest_marker("no_watch") else ()
    with mounted(server, *WRITE_MODES[request.param], *no_watch) as mount:
        yield mount


@pytest.fixture
async def arker(server):
    """An SDK client for the session server (every route on one origin)."""
    async with Arker(server.api_key, base_url=server.base_url, list_base_url=server.base_url) as client:
        yield client


@pytest.fixture
async def vm(arker):
    """A fresh fork of arkuntu, deleted after the test."""
    child = await arker.vm("arkuntu").fork()
    yield child
    await child.delete()


@pytest.fixture
def workdir():
    """A temp dir with an empty ``mnt`` for mount-command tests; fails if a mount is left."""
    path = tempfile.mkdtemp(prefix="arkerfs-cli-")
    os.mkdir(os.path.join(path, "mnt"))
    yield path
    mnt = os.path.join(path, "mnt")
    if runtime.mount_entry(mnt) is not None:  # never leave a mount behind, whatever happened
        subprocess.run(["fusermount3", "-u", "-z", mnt])
        pytest.fail(f"test left {mnt} mounted")
    subprocess.run(["rm", "-rf", path])
