"""Crash safety of the mount daemon: ``kill -9`` at random points while files are written.

Writes are buffered locally and each close uploads the complete file as one atomic replace,
so whatever moment the daemon dies at, every remote file holds its old or its new content,
never a mix. The dead mount (ENOTCONN) is cleaned by ``arkerfs umount`` or by the next
``arkerfs mount`` on the same mount point.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time

import pytest

from arkerfs.mount import runtime
from tests.conftest import WRITE_MODES
from tests.mountutil import Api, mounted

MB = 1024 * 1024
SIZES = [10_000, 300_000, MB + 3, 5 * MB + 7, 7 * MB]  # inline and presigned uploads
WRITER = r"""
import os, sys, time
src, dst, names = sys.argv[1], sys.argv[2], sys.argv[3:]
for name in names:
    with open(os.path.join(src, name), "rb") as f:
        data = f.read()
    with open(os.path.join(dst, name), "wb") as out:
        for off in range(0, len(data), 256 * 1024):
            out.write(data[off:off + 256 * 1024])
            time.sleep(0.02)  # about a second in all: the kill lands mid-way (write-back is fast)
    print("closed", name, flush=True)
"""


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def arkerfs(*args: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "arkerfs", *args], capture_output=True, text=True,
                          env=env, timeout=60, stdin=subprocess.DEVNULL)


def wait_enotconn(path: str) -> None:
    deadline = time.monotonic() + 10
    while True:
        try:
            os.stat(path)
        except OSError as exc:
            if exc.errno == 107:
                return
        assert time.monotonic() < deadline, f"{path} did not go stale"
        time.sleep(0.05)


@pytest.mark.parametrize("mode", list(WRITE_MODES))
def test_kill_9_during_writes_leaves_every_file_old_or_new(server, tmp_path, mode):
    """Write-back: what a close() returned for is in the journal; the next mount of the VM
    replays it (here a mount that only pushes and unmounts)."""
    api = Api(server)
    state = str(tmp_path / "state")  # the journal outlives the killed daemon
    vm = api.fork()
    rng = random.Random(99)
    names = [f"f{i}" for i in range(len(SIZES))]
    current = {name: rng.randbytes(size) for name, size in zip(names, SIZES)}
    for name, data in current.items():
        api.write_file(vm, f"/home/user/{name}", data)
    src = tmp_path / "new"
    src.mkdir()
    outcomes = []
    for iteration in range(4):
        new = {name: rng.randbytes(size + iteration) for name, size in zip(names, SIZES)}
        for name, data in new.items():
            (src / name).write_bytes(data)
        order = names[:]
        rng.shuffle(order)
        with mounted(server, *WRITE_MODES[mode], vm_id=vm, state_home=state) as m:
            m.expect_exit = None  # killed on purpose
            writer = subprocess.Popen([sys.executable, "-c", WRITER, str(src), m.path, *order],
                                      stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
            time.sleep(rng.uniform(0.1, 1.2))
            m.proc.send_signal(signal.SIGKILL)
            m.proc.wait()
            out, _ = writer.communicate(timeout=30)  # its pending syscalls fail with ENOTCONN
            wait_enotconn(m.path)
            env = {**os.environ, "XDG_RUNTIME_DIR": os.path.dirname(m.path)}
            done = arkerfs("umount", m.path, env=env)
            assert done.returncode == 0 and "stale mount" in done.stdout, done
            assert runtime.mount_entry(m.path) is None
        if mode == "write-back":
            with mounted(server, *WRITE_MODES[mode], vm_id=vm, state_home=state):
                pass  # replayed before serving; the unmount pushes everything
        closed = [line.split()[1] for line in out.splitlines()]
        became_new = []
        for name in names:
            got = digest(api.read_file(vm, f"/home/user/{name}"))
            assert got in (digest(current[name]), digest(new[name])), (iteration, name, "torn")
            if got == digest(new[name]):
                became_new.append(name)
                current[name] = new[name]
        # a close that returned had uploaded: acknowledged data is never lost
        assert set(closed) <= set(became_new), (closed, became_new)
        outcomes.append((len(closed), len(became_new), writer.returncode))
    # the kills landed mid-way at least once (some files new, some old, writer cut off)
    assert any(0 < n < len(names) and rc != 0 for _, n, rc in outcomes), outcomes
    assert api.sh(vm, "find /home/user -name '.arkerfs-tmp-*' | wc -l").strip() == "0"
    with mounted(server, vm_id=vm) as m:  # a fresh mount reads exactly what the API holds
        for name in names:
            with open(m.p(name), "rb") as f:
                assert digest(f.read()) == digest(current[name])


@pytest.mark.parametrize("mode", list(WRITE_MODES))
def test_next_mount_cleans_a_stale_mount_with_a_clear_message(server, mode):
    """Write-back: the file closed before the kill is in the journal; the next mount replays it."""
    api = Api(server)
    vm = api.fork()
    workdir = tempfile.mkdtemp(prefix="arkerfs-crash-")
    mnt = os.path.realpath(os.path.join(workdir, "mnt"))
    os.mkdir(mnt)
    env = {k: v for k, v in os.environ.items() if not k.startswith("ARKER_")}
    env |= {"XDG_RUNTIME_DIR": workdir, "XDG_CACHE_HOME": workdir, "XDG_STATE_HOME": workdir,
            "ARKER_API_KEY": server.api_key}
    try:
        done = arkerfs("mount", *WRITE_MODES[mode], "--base-url", server.base_url, vm, mnt, env=env)
        assert done.returncode == 0, done.stderr
        with open(os.path.join(mnt, "before"), "w") as f:
            f.write("pushed before the crash")
        with open(os.path.join(workdir, "arkerfs", f"{runtime.mount_key(mnt)}.json")) as f:
            pid = json.load(f)["pid"]
        os.kill(pid, signal.SIGKILL)
        wait_enotconn(mnt)
        done = arkerfs("mount", *WRITE_MODES[mode], "--base-url", server.base_url, vm, mnt, env=env)
        assert done.returncode == 0, done.stderr
        assert f"removed a stale mount at {mnt}" in done.stderr and "daemon had died" in done.stderr
        assert runtime.mount_entry(mnt) == (f"arkerfs:{vm}", "fuse.arkerfs")
        with open(os.path.join(mnt, "before")) as f:
            assert f.read() == "pushed before the crash"
        done = arkerfs("umount", mnt, env=env)
        assert done.returncode == 0, done.stderr
        assert api.read_file(vm, "/home/user/before") == b"pushed before the crash"
    finally:
        if runtime.mount_entry(mnt) is not None:
            subprocess.run(["fusermount3", "-u", "-z", mnt])
        subprocess.run(["rm", "-rf", workdir])
    assert runtime.mount_entry(mnt) is None
