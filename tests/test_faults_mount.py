"""Injected faults against real mounts (``/_local/faults``): storms, throttling, busy VMs, runs
that time out, requests that act and then fail, expired presigned URLs, failed uploads.

Every file is checked byte for byte through the API, never only through the mount.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import random
import threading
import time

import pytest

from arkerfs import exitcodes
from arkerfs.server.control import ServerProcess
from conftest import TEST_KEY
from tests.conftest import WRITE_MODES
from tests.mountutil import Api, mounted

MB = 1024 * 1024
# What a mount logs while it retries; an EIO that reaches the application fails the test anyway.
RETRY_NOISE = (r"WARNING arkerfs\.client: .*giving up", r"WARNING arkerfs\.mount\.ops: ",
               r"WARNING arkerfs\.fs\.remote: ")


# the pusher's own retries (write-back)
RETRY_NOISE += (r"WARNING arkerfs\.writeback\.pusher: push failed", r"WARNING arkerfs\.client: ")


def allow(m, *patterns: str) -> None:
    for pattern in patterns:
        m.allow_log(pattern)


def seed_for(rate: float, pattern: list[bool]) -> int:
    """A seed whose first draws hit (True) or miss ``rate`` as ``pattern`` says."""
    for seed in range(1_000_000):
        rng = random.Random(seed)
        if [rng.random() < rate for _ in pattern] == pattern:
            return seed
    raise AssertionError("no seed")


def write(path: str, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)


def read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def errno_of(fn, *args) -> int:
    with pytest.raises(OSError) as info:
        fn(*args)
    return info.value.errno


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@contextlib.contextmanager
def private_server(tmp_path, *extra: str):
    """A server of our own (its faults and restarts touch no other test), always stopped."""
    data = tmp_path / "server-data"
    data.mkdir()
    srv = ServerProcess(data_dir=data, api_key=TEST_KEY, extra_args=list(extra),
                        log_path=tmp_path / "server.log")
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


def workload(m, tag: str, rng: random.Random, *, big: bool = False) -> dict[str, bytes]:
    """Creates, overwrites, (a >4 MiB presigned upload,) mkdir, rename, unlink and reads back
    through the mount; returns {VM path: expected bytes}."""
    expected = {}
    os.mkdir(m.p(tag))
    for i in range(3):
        data = rng.randbytes(rng.randrange(1, 200_000))
        write(m.p(tag, f"f{i}"), data)
        expected[f"/home/user/{tag}/f{i}"] = data
    if big:
        data = rng.randbytes(5 * MB + 17)
        write(m.p(tag, "big"), data)
        expected[f"/home/user/{tag}/big"] = data
    again = rng.randbytes(1000)
    write(m.p(tag, "f0"), again)  # overwrite
    expected[f"/home/user/{tag}/f0"] = again
    os.rename(m.p(tag, "f1"), m.p(tag, "moved"))
    expected[f"/home/user/{tag}/moved"] = expected.pop(f"/home/user/{tag}/f1")
    os.unlink(m.p(tag, "f2"))
    del expected[f"/home/user/{tag}/f2"]
    assert sorted(os.listdir(m.p(tag))) == sorted(p.rsplit("/", 1)[1] for p in expected)
    for path, data in expected.items():
        assert read(m.p(path.removeprefix("/home/user/"))) == data
    return expected


@pytest.mark.parametrize("mode", list(WRITE_MODES))
def test_503_storm_throttling_and_busy_are_ridden_out_byte_exact(server, api, control, mode):
    rng = random.Random(2026)
    expected: dict[str, bytes] = {}
    with mounted(server, "--no-watch", *WRITE_MODES[mode]) as m:
        allow(m, *RETRY_NOISE)
        control.reset_stats()
        control.set_faults(fail_rate=0.3, seed=11)  # 503 storm
        expected |= workload(m, "storm", rng, big=True)
        # throttling, and a VM whose session is busy (vm_busy) a third of the time
        control.set_faults(fail_rate=0.3, fail_status=429, busy_rate=0.3, seed=12)
        expected |= workload(m, "throttled", rng)
        # A burst: every request fails for 2 s. Each request backs off ~5 s before giving up,
        # so the close below blocks through the burst and then succeeds.
        control.set_faults(fail_rate=1.0)
        clear = threading.Timer(2.0, control.clear_faults)
        clear.start()
        started = time.monotonic()
        burst = rng.randbytes(300_000)
        try:
            write(m.p("burst"), burst)
        finally:
            clear.join()
        assert time.monotonic() - started >= 1.5
        expected["/home/user/burst"] = burst
        control.clear_faults()
        retried = m.log().count("retrying in")
    for path, data in expected.items():
        assert digest(api.read_file(m.vm_id, path)) == digest(data), path
    # the faults really fired, and were retried (write-back sends far fewer, batched requests)
    assert retried >= (15 if mode == "write-through" else 2), retried


@pytest.mark.parametrize("mode", list(WRITE_MODES))
def test_run_timeout_is_eio_and_the_mount_stays_alive(server, api, control, mode):
    vm = api.fork()
    api.sh(vm, "mkdir /home/user/d && echo x > /home/user/d/inside")
    with mounted(server, "--no-watch", *WRITE_MODES[mode], "--run-timeout", "1", vm_id=vm) as m:
        allow(m, *RETRY_NOISE, r"ERROR arkerfs\.fs\.remote: run did not complete")
        control.set_faults(run_stall_ms=30_000)  # every command hangs 30 s; the run limit is 1 s
        started = time.monotonic()
        assert errno_of(os.listdir, m.p("d")) == errno.EIO
        if mode == "write-through":
            assert errno_of(os.mkdir, m.p("new")) == errno.EIO
        else:
            os.mkdir(m.p("new"))  # write-back: recorded; pushed once runs complete again
        elapsed = time.monotonic() - started
        assert elapsed < 20, elapsed  # ended by the 1 s run timeout, not the 30 s stall
        control.clear_faults()
        assert os.listdir(m.p("d")) == ["inside"]  # same mount, alive and well
        if mode == "write-through":
            os.mkdir(m.p("new"))
        assert "timed out" in m.log() or "timed_out=True" in m.log()
    assert api.sh(vm, "ls /home/user").split().count("new") == 1


def test_a_batch_that_acted_then_failed_is_sent_again_with_the_same_result(server, api, control):
    """Write-back: the first request of a push acts, then answers 504. The pusher cannot know
    whether the batch ran, so it sends it again; every step checks whether it is done already
    (the file already is that version, the rename already happened), so the VM ends up as if the
    batch had run once."""
    once = seed_for(0.5, [True] + [False] * 12)
    with mounted(server, "--no-watch", "--write-back") as m:
        allow(m, *RETRY_NOISE)
        write(m.p("a"), b"payload")
        api.read_file(m.vm_id, "/home/user/a")  # pushed
        control.reset_stats()
        control.set_faults(fail_rate=0.5, fail_status=504, after_effect=True, seed=once)
        os.rename(m.p("a"), m.p("b"))
        write(m.p("c"), b"c" * 1000)
        assert api.sh(m.vm_id, "cd /home/user && ls a b c 2>&1 | sort") == \
            "b\nc\nls: cannot access 'a': No such file or directory\n"
        control.clear_faults()
        assert control.calls()["run"] >= 2  # the first push failed after acting and went again
    assert api.read_file(m.vm_id, "/home/user/b") == b"payload"
    assert api.read_file(m.vm_id, "/home/user/c") == b"c" * 1000


@pytest.mark.parametrize("mode", ["write-through"])  # write-back: the test above
def test_acted_then_failed_requests_are_reconciled_not_replayed(server, api, control, mode):
    once = seed_for(0.5, [True] + [False] * 12)  # only the first request fails (after acting)
    with mounted(server, "--no-watch", *WRITE_MODES[mode]) as m:
        allow(m, *RETRY_NOISE)
        write(m.p("a"), b"payload")
        os.mkdir(m.p("dir"))
        assert not os.path.exists(m.p("b")) and not os.path.exists(m.p("dir2"))
        control.reset_stats()
        control.set_faults(fail_rate=0.5, fail_status=504, after_effect=True, seed=once)
        os.rename(m.p("a"), m.p("b"))  # mv ran, then 504: a replay would fail with ENOENT
        calls = control.calls()
        control.clear_faults()
        assert calls["run"] == 2, calls  # the rename and one probe; no second mv
        assert "rename: reconciled as done" in m.log()
        control.set_faults(fail_rate=0.5, fail_status=504, after_effect=True, seed=once)
        os.rename(m.p("dir"), m.p("dir2"))
        control.clear_faults()
        # an upload is replay-safe (same upload id): simply sent again; then its install run
        fd = os.open(m.p("c"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        os.write(fd, b"c" * 100_000)
        control.reset_stats()
        control.set_faults(fail_rate=0.5, fail_status=504, after_effect=True, seed=once)
        os.close(fd)
        calls = control.calls()
        control.clear_faults()
        assert (calls["sync_write"], calls["run"]) == (2, 1), calls
        # an install carrying its bytes is repeatable (it finds its own version there): sent again
        fd = os.open(m.p("e"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        os.write(fd, b"e" * 1000)
        control.reset_stats()
        control.set_faults(fail_rate=0.5, fail_status=504, after_effect=True, seed=once)
        os.close(fd)
        calls = control.calls()
        control.clear_faults()
        assert calls["run"] == 2 and "sending the install again" in m.log(), calls
    assert api.read_file(m.vm_id, "/home/user/b") == b"payload"
    assert api.read_file(m.vm_id, "/home/user/c") == b"c" * 100_000
    assert api.read_file(m.vm_id, "/home/user/e") == b"e" * 1000
    listed = api.sh(m.vm_id, "cd /home/user && ls -d a b c dir dir2 e e.conflict-* 2>/dev/null; true").split()
    assert listed == ["b", "c", "dir2", "e"]


@pytest.mark.parametrize("mode", list(WRITE_MODES))
def test_expired_presigned_read_url_is_requested_again(tmp_path, mode):
    with private_server(tmp_path, "--presign-ttl", "2", "--inline-read-limit", "1024") as srv:
        api = Api(srv)
        vm = api.fork()
        data = random.Random(5).randbytes(3 * MB)
        api.write_file(vm, "/home/user/big", data)
        with mounted(srv, "--no-watch", *WRITE_MODES[mode], vm_id=vm) as m:
            with open(m.p("big"), "rb") as f:
                srv.control.reset_stats()
                assert f.read(100) == data[:100]
                assert srv.control.calls()["sync_read"] == 1
                time.sleep(2.5)  # the URL this handle holds has expired (the server says 403)
                f.seek(2 * MB)
                assert f.read(MB) == data[2 * MB:]
                calls = srv.control.calls()
                assert calls["sync_read"] == 2, calls  # a fresh URL for the same version
                f.seek(0)
                assert f.read() == data


@pytest.mark.parametrize("stage", ["put", "commit"])
def test_large_upload_failing_at_close_keeps_old_remote_and_rescues_new(server, api, control, stage):
    old = random.Random(1).randbytes(5 * MB)
    new = random.Random(2).randbytes(6 * MB + 5)
    vm = api.fork()
    api.write_file(vm, "/home/user/doc", old)
    # write-through: close() uploads and reports (write-back: test_mount's upload_failure_in_write_back)
    with mounted(server, "--no-watch", "--write-through", vm_id=vm) as m:
        allow(m, *RETRY_NOISE, r"ERROR arkerfs\.fs\.vfs: unsent data of /home/user/doc saved to ")
        m.expect_exit = exitcodes.PENDING  # the daemon reports the rescued file at unmount
        fd = os.open(m.p("doc"), os.O_WRONLY | os.O_TRUNC)
        for off in range(0, len(new), MB):
            os.write(fd, new[off:off + MB])
        # presign ok, then every PUT attempt fails (or: presign and PUT ok, every commit fails)
        ok = 1 if stage == "put" else 2
        control.reset_stats()
        control.set_faults(fail_rate=0.5, seed=seed_for(0.5, [False] * ok + [True] * 6))
        assert errno_of(os.close, fd) == errno.EIO
        calls = control.calls()
        control.clear_faults()
        assert calls["presigned_put"] == (6 if stage == "put" else 1), calls
        assert calls["sync_write"] == (1 if stage == "put" else 7), calls
        assert digest(api.read_file(vm, "/home/user/doc")) == digest(old)  # never half-written
        rescue_dir = os.path.join(m.spool_dir, "rescue")
        deadline = time.monotonic() + 10
        while not (os.path.isdir(rescue_dir) and os.listdir(rescue_dir)):
            assert time.monotonic() < deadline, "no rescue file"
            time.sleep(0.05)
        (name,) = os.listdir(rescue_dir)
        assert digest(read(os.path.join(rescue_dir, name))) == digest(new)
        assert os.path.join(rescue_dir, name) in m.log()  # the log says where the data is
        assert read(m.p("doc")) == old
