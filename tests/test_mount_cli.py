"""``arkerfs mount`` / ``umount`` / ``--local`` end to end, failure paths, and the test teardown helper."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import pytest

from arkerfs import exitcodes
from arkerfs.mount import runtime
from tests.conftest import WRITE_MODES
from tests.mountutil import daemon_command, log_problems, mounted, teardown, wait_for_mount


def arkerfs(*args: str, env: dict | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "arkerfs", *args], capture_output=True, text=True,
                          env=env, timeout=timeout, stdin=subprocess.DEVNULL)


def env_for(workdir: str, key: str | None) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ARKER_")}
    env |= {"XDG_RUNTIME_DIR": workdir, "XDG_CACHE_HOME": workdir, "XDG_STATE_HOME": workdir,
            "XDG_DATA_HOME": os.path.join(workdir, "data")}
    if key is not None:
        env["ARKER_API_KEY"] = key
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def assert_one_line_failure(done: subprocess.CompletedProcess, *needles: str) -> None:
    assert done.returncode == exitcodes.MOUNT_FAILED, (done.returncode, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("arkerfs mount: ")
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.mark.parametrize("case", ["wrong key", "unknown vm", "dead server"])
def test_mount_failures_are_one_line_and_leave_no_mount(server, api, workdir, case):
    mnt = os.path.join(workdir, "mnt")
    vm, key, url = api.fork(), server.api_key, server.base_url
    if case == "wrong key":
        key, needle = "ark_wrong_key_000000000", "API key was refused"
    elif case == "unknown vm":
        vm, needle = "no-such-vm-name", "no VM is named 'no-such-vm-name'"
    else:
        url, needle = f"http://127.0.0.1:{free_port()}", "cannot connect"
    done = arkerfs("mount", "--base-url", url, vm, mnt, env=env_for(workdir, key))  # detached
    assert_one_line_failure(done, needle)
    assert runtime.mount_entry(mnt) is None
    assert key not in done.stderr


def test_mountpoint_and_key_file_checks(server, workdir):
    env = env_for(workdir, server.api_key)
    mnt = os.path.join(workdir, "mnt")
    assert_one_line_failure(arkerfs("mount", "vm", os.path.join(workdir, "nope"), env=env), "does not exist")
    open(os.path.join(mnt, "stuff"), "w").close()
    assert_one_line_failure(arkerfs("mount", "vm", mnt, env=env), "not empty")
    os.unlink(os.path.join(mnt, "stuff"))
    key_file = os.path.join(workdir, "key")
    with open(key_file, "w") as f:
        f.write(server.api_key)
    os.chmod(key_file, 0o644)
    assert_one_line_failure(arkerfs("mount", "--api-key-file", key_file, "vm", mnt, env=env_for(workdir, None)),
                            "readable by group or others")
    assert_one_line_failure(arkerfs("mount", "vm", mnt, env=env_for(workdir, None)), "no API key")


@pytest.mark.parametrize("mode", list(WRITE_MODES))
def test_detached_mount_and_umount_round_trip(server, api, workdir, mode):
    vm = api.fork()
    mnt = os.path.realpath(os.path.join(workdir, "mnt"))
    env = env_for(workdir, server.api_key)
    done = arkerfs("mount", *WRITE_MODES[mode], "--base-url", server.base_url, vm, mnt, env=env)
    assert done.returncode == 0, done.stderr
    assert runtime.mount_entry(mnt) == (f"arkerfs:{vm}", "fuse.arkerfs")  # live when mount returned
    state = runtime_state(workdir, mnt)
    assert server.api_key not in open(f"/proc/{state.pid}/cmdline").read()
    again = arkerfs("mount", "--base-url", server.base_url, vm, mnt, env=env)
    assert_one_line_failure(again, "already mounted")
    with open(os.path.join(mnt, "kept.txt"), "w") as f:
        f.write("pushed")
    done = arkerfs("umount", mnt, env=env)  # write-back: exits 0 only once kept.txt is in the VM
    assert done.returncode == 0, done.stderr
    assert runtime.mount_entry(mnt) is None
    assert not os.path.exists(f"/proc/{state.pid}") or _zombie(state.pid)
    assert api.read_file(vm, "/home/user/kept.txt") == b"pushed"
    log = open(state.log_file).read()
    assert server.api_key not in log
    assert log_problems(log, []) == []
    assert arkerfs("umount", mnt, env=env).returncode != 0  # nothing mounted any more


@pytest.mark.parametrize("mode", list(WRITE_MODES))
def test_sigterm_pushes_and_unmounts_cleanly(server, api, workdir, mode):
    vm = api.fork()
    mnt = os.path.realpath(os.path.join(workdir, "mnt"))
    log_path = os.path.join(workdir, "daemon.log")
    proc = subprocess.Popen(daemon_command(vm, mnt, server.base_url, log_path, *WRITE_MODES[mode]),
                            env=env_for(workdir, server.api_key),
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        wait_for_mount(proc, mnt, log_path)
        f = open(os.path.join(mnt, "open-at-exit"), "w")
        f.write("pending")
        f.flush()  # still open: only the daemon's shutdown push can land it
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        assert runtime.mount_entry(mnt) is None
        assert api.read_file(vm, "/home/user/open-at-exit") == b"pending"
        with pytest.raises(OSError):
            f.close()  # the mount is gone under it
    finally:
        teardown(proc, mnt)
    assert log_problems(open(log_path).read(), []) == []


def test_umount_reports_data_it_could_not_push(server, api, control, workdir):
    """Write-through: what could not be pushed goes to a rescue file (write-back: the journal
    keeps it, the test below)."""
    vm = api.fork()
    mnt = os.path.realpath(os.path.join(workdir, "mnt"))
    env = env_for(workdir, server.api_key)
    assert arkerfs("mount", "--write-through", "--base-url", server.base_url, vm, mnt, env=env).returncode == 0
    f = open(os.path.join(mnt, "unsaved"), "w")
    f.write("precious")
    f.flush()  # in the buffer, not uploaded: the file is still open
    control.set_faults(fail_rate=1.0)
    done = arkerfs("umount", mnt, env=env)
    control.clear_faults()
    assert done.returncode == exitcodes.PENDING
    assert "could not be pushed" in done.stderr and "data kept in: " in done.stderr
    rescue = done.stderr.strip().split("data kept in: ")[1]
    with open(rescue) as saved:
        assert saved.read() == "precious"
    assert runtime.mount_entry(mnt) is None
    with pytest.raises(OSError):
        f.close()


def test_umount_in_write_back_keeps_what_it_could_not_push_in_the_journal(server, api, control, workdir):
    """umount exits 7 naming the journal; nothing is lost: the next mount of the VM pushes it."""
    vm = api.fork()
    mnt = os.path.realpath(os.path.join(workdir, "mnt"))
    env = env_for(workdir, server.api_key)
    assert arkerfs("mount", "--write-back", "--base-url", server.base_url, vm, mnt, env=env).returncode == 0
    with open(os.path.join(mnt, "closed"), "w") as closed:
        closed.write("in the journal")
    f = open(os.path.join(mnt, "unsaved"), "w")
    f.write("precious")
    f.flush()  # in the buffer: the file is still open
    control.set_faults(fail_rate=1.0, fail_status=403)  # a refusal: not retried, so umount ends soon
    done = arkerfs("umount", mnt, env=env)
    control.clear_faults()
    assert done.returncode == exitcodes.PENDING, (done.returncode, done.stderr)
    assert "could not be pushed" in done.stderr, done.stderr
    assert f"data kept in: {os.path.join(workdir, 'arkerfs', vm)} (write-back journal: " in done.stderr, done.stderr
    assert runtime.mount_entry(mnt) is None
    with pytest.raises(OSError):
        f.close()
    assert arkerfs("mount", "--write-back", "--base-url", server.base_url, vm, mnt, env=env).returncode == 0
    assert arkerfs("umount", mnt, env=env).returncode == 0  # replayed, pushed
    assert api.read_file(vm, "/home/user/closed") == b"in the journal"
    assert api.read_file(vm, "/home/user/unsaved") == b"precious"


@pytest.mark.parametrize("mode", list(WRITE_MODES))
def test_stale_mount_is_cleaned_by_umount(server, api, workdir, mode):
    vm = api.fork()
    mnt = os.path.realpath(os.path.join(workdir, "mnt"))
    env = env_for(workdir, server.api_key)
    assert arkerfs("mount", *WRITE_MODES[mode], "--base-url", server.base_url, vm, mnt, env=env).returncode == 0
    os.kill(runtime_state(workdir, mnt).pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while not _enotconn(mnt):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    done = arkerfs("umount", mnt, env=env)
    assert done.returncode == 0 and "stale mount" in done.stdout
    assert runtime.mount_entry(mnt) is None


@pytest.mark.parametrize("mode", list(WRITE_MODES))
def test_local_mode_creates_the_vm_and_mounts(workdir, mode):
    mnt = os.path.realpath(os.path.join(workdir, "mnt"))
    env = env_for(workdir, None)
    done = arkerfs("mount", *WRITE_MODES[mode], "--local", "mine", mnt, env=env, timeout=90)
    assert done.returncode == 0, done.stderr
    try:
        assert "README.md" in os.listdir(mnt)  # a fork of arkuntu
        with open(os.path.join(mnt, "local.txt"), "w") as f:
            f.write("here")
    finally:
        done = arkerfs("umount", mnt, env=env)
    assert done.returncode == 0, done.stderr
    # the data lives in the embedded server's data dir; a second mount sees it
    assert arkerfs("mount", *WRITE_MODES[mode], "--local", "mine", mnt, env=env, timeout=90).returncode == 0
    try:
        with open(os.path.join(mnt, "local.txt")) as f:
            assert f.read() == "here"
    finally:
        assert arkerfs("umount", mnt, env=env).returncode == 0
    key_file = os.path.join(workdir, "data", "arkerfs", "server", "api-key")
    assert os.stat(key_file).st_mode & 0o077 == 0


def test_teardown_helper_cleans_up_after_a_crashed_daemon(server):
    with pytest.raises(pytest.fail.Exception, match="daemon exit status -9"):
        with mounted(server) as m:
            m.proc.kill()  # SIGKILL: the mount is left dead (ENOTCONN)
            m.proc.wait()
    assert runtime.mount_entry(m.path) is None


def test_teardown_helper_reports_unexpected_log_lines(server):
    with pytest.raises(pytest.fail.Exception, match="log: .*WARNING"):
        with mounted(server) as m:
            os.listdir(m.path)
            with open(m.log_path, "a") as log:  # as if the daemon had warned
                log.write("2026-01-01 00:00:00.000 1 WARNING arkerfs.test: something odd\n")
    assert runtime.mount_entry(m.path) is None
    assert log_problems("x WARNING arkerfs.test: fine\n", [re.compile("fine")]) == []


def runtime_state(workdir: str, mnt: str) -> runtime.MountState:
    path = os.path.join(workdir, "arkerfs", f"{runtime.mount_key(mnt)}.json")  # XDG_RUNTIME_DIR=workdir
    with open(path) as f:
        return runtime.MountState(**json.load(f))


def _zombie(pid: int) -> bool:
    try:
        return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def _enotconn(path: str) -> bool:
    try:
        os.stat(path)
    except OSError as exc:
        return exc.errno == 107
    return False
