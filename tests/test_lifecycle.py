"""The daemon's lifecycle (arkerfs/mount/lifecycle.py) seen from outside: SIGTERM drains while
the mount still answers, and a mount refused at a late step leaves nothing behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from arkerfs.mount import runtime, status
import pytest

from tests.conftest import WRITE_MODES
from tests.mountutil import Api, fsync_dir, mounted
from tests.test_faults_mount import private_server
from tests.test_hang import HOLDER, NOISE, stopped
from tests.test_mount_cli import arkerfs, assert_one_line_failure, env_for


def wait_until(predicate, what: str, timeout: float = 30.0) -> None:
    """Poll ``predicate``; the timeout only detects a hang."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"waited {timeout:g} s for {what}"
        time.sleep(0.05)


@pytest.mark.parametrize("mode", list(WRITE_MODES))
def test_sigterm_drains_while_the_mount_still_answers(tmp_path, monkeypatch, mode):
    with private_server(tmp_path) as srv:
        # a long cache TTL: while the API is frozen the mount answers from what it knows
        with mounted(srv, *WRITE_MODES[mode], "--cache-ttl", "600") as m:
            monkeypatch.setenv("XDG_RUNTIME_DIR", os.path.dirname(m.path))  # the daemon's
            for pattern in NOISE:
                m.allow_log(pattern)
            os.mkdir(m.p("dir"))
            open(m.p("unsent"), "w").close()
            fsync_dir(m.path)  # write-back: both names in the VM, so only unsent's data is pending
            # Another process holds a file open with data only the daemon has (see test_hang).
            holder = subprocess.Popen([sys.executable, "-c", HOLDER, m.p("unsent")], stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
            try:
                assert holder.stdout.readline() == "written\n"
                with stopped(srv):  # the push cannot finish until the API answers again
                    m.proc.send_signal(signal.SIGTERM)
                    wait_until(lambda: runtime.read_pending(m.path) == ["/home/user/unsent"],
                               "the daemon to start pushing")
                    # pushing, and still serving: the kernel mount answers, so does the status socket
                    assert runtime.mount_entry(m.path) is not None
                    assert {"dir", "unsent"} <= set(os.listdir(m.path))
                    assert os.stat(m.p("unsent")).st_size == len("precious")
                    snapshot = status.query(m.path)
                    assert (snapshot["state"], snapshot["pending"]["files"]) == ("serving", 1), snapshot
                    assert m.proc.poll() is None
                # the API answers again: the push lands, then the daemon unmounts and exits cleanly
                assert m.proc.wait(60) == 0
                assert runtime.mount_entry(m.path) is None
            finally:
                holder.stdin.close()
                holder.wait(30)  # its close() fails: the mount is gone under it
            assert Api(srv).read_file(m.vm_id, "/home/user/unsent") == b"precious"


def test_a_mount_the_kernel_refuses_fails_in_one_line_and_leaves_nothing(server, api, workdir):
    mnt = os.path.realpath(os.path.join(workdir, "mnt"))
    env = env_for(workdir, server.api_key)
    done = arkerfs("mount", "--base-url", server.base_url, "-o", "no_such_fuse_option", api.fork(), mnt, env=env)
    assert_one_line_failure(done, "the kernel refused the mount")
    assert runtime.mount_entry(mnt) is None
    key = runtime.mount_key(mnt)
    left = [name for name in os.listdir(os.path.join(workdir, "arkerfs")) if name.startswith(key)]
    assert [name for name in left if not name.endswith(".log")] == []  # no state file, no status socket


def test_a_second_write_back_mount_of_the_same_vm_is_refused_in_one_line(server, api, workdir):
    vm = api.fork()
    first = os.path.realpath(os.path.join(workdir, "mnt"))
    second = os.path.join(workdir, "second")
    os.mkdir(second)
    env = env_for(workdir, server.api_key)
    assert arkerfs("mount", "--write-back", "--base-url", server.base_url, vm, first, env=env).returncode == 0
    try:
        done = arkerfs("mount", "--write-back", "--base-url", server.base_url, vm, second, env=env)
        assert_one_line_failure(done, "cannot use the write-back journal", "in use by another arkerfs daemon")
        assert runtime.mount_entry(second) is None
        with open(os.path.join(first, "still.txt"), "w") as f:  # the first mount is untouched
            f.write("here")
    finally:
        assert arkerfs("umount", first, env=env).returncode == 0
    assert api.read_file(vm, "/home/user/still.txt") == b"here"
