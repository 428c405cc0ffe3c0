"""Where the mount daemon logs and what: the default file, --log-level, --debug, the journal."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from tests.conftest import WRITE_MODES
from tests.mountutil import daemon_command, teardown, wait_for_mount
from tests.test_mount_cli import arkerfs, env_for


def test_detached_mount_logs_to_a_readable_name_in_the_state_dir(server, api, workdir):
    vm = api.fork()
    mnt = os.path.realpath(os.path.join(workdir, "mnt"))
    env = env_for(workdir, server.api_key)  # XDG_STATE_HOME=workdir
    done = arkerfs("mount", "--base-url", server.base_url, vm, mnt, env=env)
    assert done.returncode == 0, done.stderr
    try:
        expected = os.path.join(workdir, "arkerfs", "logs", f"{vm}-mnt.log")
        assert done.stdout.strip().endswith(f"(log: {expected})"), done.stdout
        assert os.stat(expected).st_mode & 0o777 == 0o600
        assert f"mounted VM {vm} at {mnt}" in open(expected).read()
    finally:
        assert arkerfs("umount", mnt, env=env).returncode == 0


def _foreground(server, vm: str, workdir: str, *args: str) -> tuple[subprocess.Popen, str, str]:
    mnt = os.path.realpath(os.path.join(workdir, "mnt"))
    log_path = os.path.join(workdir, "daemon.log")
    proc = subprocess.Popen(daemon_command(vm, mnt, server.base_url, log_path, *args),
                            env=env_for(workdir, server.api_key), stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    wait_for_mount(proc, mnt, log_path)
    return proc, mnt, log_path


@pytest.mark.parametrize("mode", list(WRITE_MODES))
def test_debug_logs_every_api_call_and_fuse_operation_but_never_the_key(server, api, workdir, mode):
    vm = api.fork()
    proc, mnt, log_path = _foreground(server, vm, workdir, "--debug", *WRITE_MODES[mode])
    try:
        with open(os.path.join(mnt, "new.txt"), "w") as f:
            f.write("x" * 1000)
        assert "new.txt" in os.listdir(mnt)
    finally:
        teardown(proc, mnt)
    log = open(log_path).read()
    assert server.api_key not in log
    api_call = re.compile(r" DEBUG arkerfs\.client: POST /api/v1/vms/\S+/\S+ 127\.0\.0\.1:\d+ -> 200, "
                          r"(\d+) bytes sent, (\d+) received in \d+ ms$", re.M)
    calls = api_call.findall(log)
    assert calls and all(int(sent) > 0 and int(received) > 0 for sent, received in calls), log
    assert re.search(r" DEBUG arkerfs\.mount\.ops: create\(.*\) done in \d+\.\d ms$", log, re.M), log
    assert re.search(r" DEBUG arkerfs\.mount\.ops: release\(.*\) done in \d+\.\d ms$", log, re.M), log


def test_log_level_warning_drops_info(server, api, workdir):
    vm = api.fork()
    proc, mnt, log_path = _foreground(server, vm, workdir, "--log-level", "warning")
    try:
        os.listdir(mnt)
    finally:
        teardown(proc, mnt)
    assert proc.returncode == 0
    assert open(log_path).read() == ""  # "mounted VM ..." and "unmounted ..." are INFO


def test_under_journald_lines_carry_syslog_priorities(server, api, workdir):
    vm = api.fork()
    mnt = os.path.realpath(os.path.join(workdir, "mnt"))
    err_path = os.path.join(workdir, "stderr")
    with open(err_path, "w") as err:
        st = os.fstat(err.fileno())
        env = env_for(workdir, server.api_key) | {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}
        proc = subprocess.Popen([sys.executable, "-m", "arkerfs", "mount", "--foreground", "--base-url",
                                 server.base_url, vm, mnt], env=env, stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=err)
    try:
        wait_for_mount(proc, mnt, err_path)
        os.listdir(mnt)
    finally:
        teardown(proc, mnt)
    lines = open(err_path).read().splitlines()
    assert f"<6>arkerfs.mount.daemon: mounted VM {vm} at {mnt}" in lines, lines
    assert all(re.match(r"<[0-7]>", line) for line in lines), lines


def test_foreground_stderr_is_plain_text_outside_the_journal(server, api, workdir):
    vm = api.fork()
    mnt = os.path.realpath(os.path.join(workdir, "mnt"))
    err_path = os.path.join(workdir, "stderr")
    with open(err_path, "w") as err:
        env = env_for(workdir, server.api_key) | {"JOURNAL_STREAM": "1:1"}  # someone else's stream
        proc = subprocess.Popen([sys.executable, "-m", "arkerfs", "mount", "--foreground", "--base-url",
                                 server.base_url, vm, mnt], env=env, stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=err)
    try:
        wait_for_mount(proc, mnt, err_path)
    finally:
        teardown(proc, mnt)
    text = open(err_path).read()
    assert re.search(rf"^\d{{4}}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{{3}} \d+ INFO arkerfs\.mount\.daemon: mounted VM {vm}",
                     text, re.M), text
    assert "<6>" not in text
