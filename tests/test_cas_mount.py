"""Compare-and-swap of pushed contents, through real mounts in both write modes: a change made
inside the VM while the mount had the file open (or pending) is never overwritten.

Each push names the VM's version its content was based on (what the mount saw when it loaded,
opened or created the file). If the VM changed the file since, the VM's version stays under the
name and the mount's goes beside it as ``NAME.conflict-<UTC stamp>`` (same mode), or under
``~/arkerfs-recovered/<stamp>/`` when its directory is gone; close() still returns 0, the
conflict is logged at WARNING with both paths, counted by ``arkerfs status`` and shown as
``user.arkerfs.state`` = ``conflict``.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time

import pytest
import trio

from arkerfs.client import Arker
from tests.conftest import WRITE_MODES
from tests.mountutil import mounted

HOME = "/home/user"
BOTH_MODES = pytest.mark.parametrize("mode", list(WRITE_MODES))


def in_vm(server, vm: str, command: str) -> None:
    """A change made inside the VM now, behind the mount's back (``Api.sh`` would first push
    what a write-back mount holds, as ``arkerfs sync`` does)."""
    async def main():
        async with Arker(server.api_key, base_url=server.base_url, list_base_url=server.base_url) as arker:
            return await arker.vm(vm).run(command, session_id=3, timeout=60)

    result = trio.run(main)
    assert result.exit_code == 0, (command, result.stderr)


def status(mnt: str) -> dict:
    env = {**os.environ, "XDG_RUNTIME_DIR": os.path.dirname(mnt)}  # where mountutil puts the socket
    done = subprocess.run([sys.executable, "-m", "arkerfs", "status", mnt, "--json"], env=env,
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads(done.stdout)


def conflict_copies(api, vm: str, directory: str, name: str) -> list[str]:
    listed = api.sh(vm, f"ls -A {directory}").split("\n")
    return [n for n in listed if n.startswith(name + ".conflict-")]


def assert_one_conflict(m, api, name: str, vm_content: bytes, local_content: bytes, mode: int) -> None:
    """The VM's version stayed, the mount's is beside it (same mode), and the mount reports it."""
    vm = m.vm_id
    assert api.read_file(vm, f"{HOME}/{name}") == vm_content
    copies = conflict_copies(api, vm, HOME, name)
    assert len(copies) == 1, copies
    assert api.read_file(vm, f"{HOME}/{copies[0]}") == local_content
    assert api.sh(vm, f"stat -c %a {HOME}/{copies[0]}") == f"{mode:o}\n"
    assert os.getxattr(m.p(name), "user.arkerfs.state") == b"conflict"
    found = status(m.path)["conflicts"]
    assert found["count"] == 1
    assert found["recent"][0]["path"] == f"{HOME}/{name}"
    assert found["recent"][0]["kept"] == f"{HOME}/{copies[0]}"
    warnings = [line for line in m.log().splitlines() if " WARNING " in line and "conflict" in line]
    assert len(warnings) == 1 and f"{HOME}/{name}" in warnings[0] and copies[0] in warnings[0], warnings
    # the mount shows the VM's version once it looks again (the copy too)
    with open(m.p(name), "rb") as f:
        assert f.read() == vm_content
    assert copies[0] in os.listdir(m.path)


@BOTH_MODES
def test_an_append_handle_never_overwrites_a_line_the_vm_appended(server, api, mode):
    """(a) O_RDWR|O_APPEND writes a line, the VM appends its own, 5 s later (every cache entry
    has expired and been refreshed meanwhile) close() returns 0 and the VM keeps its line."""
    vm = api.fork()
    api.sh(vm, f"printf 'line-1\\n' > {HOME}/log.txt && chmod 640 {HOME}/log.txt")
    with mounted(server, *WRITE_MODES[mode], "--cache-ttl", "1", vm_id=vm) as m:
        m.allow_log("conflict")
        fd = os.open(m.p("log.txt"), os.O_RDWR | os.O_APPEND)
        try:
            os.write(fd, b"local-line-2\n")
            in_vm(server, vm, f"printf 'vm-line-2\\n' >> {HOME}/log.txt")
            time.sleep(2.5)
            os.stat(m.p("log.txt"))  # refreshes the expired entry: the mount now sees the VM's version
            time.sleep(2.5)
        finally:
            os.close(fd)  # returns 0: the local version is safe in the conflict copy
        assert_one_conflict(m, api, "log.txt", b"line-1\nvm-line-2\n", b"line-1\nlocal-line-2\n", 0o640)


@BOTH_MODES
def test_a_patch_on_a_stale_cached_copy_never_overwrites_the_vms_change(server, api, mode):
    """(b) Inside the TTL the mount still shows (and patches) the version it cached; the VM's
    newer version stays."""
    vm = api.fork()
    api.sh(vm, f"printf 'abcdef\\n' > {HOME}/f.txt")
    with mounted(server, *WRITE_MODES[mode], "--cache-ttl", "600", vm_id=vm) as m:
        m.allow_log("conflict")
        with open(m.p("f.txt"), "rb") as f:
            assert f.read() == b"abcdef\n"
        in_vm(server, vm, f"printf 'VM-CHANGED\\n' > {HOME}/f.txt")
        with open(m.p("f.txt"), "r+b") as f:
            f.seek(1)
            f.write(b"X")
        assert_one_conflict(m, api, "f.txt", b"VM-CHANGED\n", b"aXcdef\n", 0o644)


@BOTH_MODES
def test_a_hard_linked_file_rewritten_in_place_is_still_a_compare_and_swap(server, api, mode):
    """A file with two names is rewritten through its own inode (both names see the bytes), and
    that rewrite too keeps a change the VM made meanwhile; the mount's own edits, a utimens
    among them, never conflict."""
    vm = api.fork()
    api.sh(vm, f"printf 'abcdef\\n' > {HOME}/f.txt && ln {HOME}/f.txt {HOME}/twin.txt")
    with mounted(server, *WRITE_MODES[mode], "--cache-ttl", "600", vm_id=vm) as m:
        m.allow_log("conflict")
        with open(m.p("f.txt"), "r+b") as f:
            f.write(b"A")
        os.utime(m.p("twin.txt"), ns=(1_600_000_000_000_000_000, 1_500_000_000_000_000_000))
        with open(m.p("f.txt"), "r+b") as f:
            f.seek(1)
            f.write(b"B")
        assert api.read_file(vm, f"{HOME}/twin.txt") == b"ABcdef\n"
        assert api.sh(vm, f"stat -c %h {HOME}/f.txt") == "2\n"
        assert conflict_copies(api, vm, HOME, "f.txt") == []
        in_vm(server, vm, f"printf 'VM-CHANGED\\n' > {HOME}/f.txt")
        with open(m.p("f.txt"), "r+b") as f:
            f.seek(2)
            f.write(b"C")
        assert_one_conflict(m, api, "f.txt", b"VM-CHANGED\n", b"ABCdef\n", 0o644)
        assert api.read_file(vm, f"{HOME}/twin.txt") == b"VM-CHANGED\n"


@BOTH_MODES
def test_a_file_the_vm_wrote_while_the_mount_created_it_is_a_conflict(server, api, mode):
    vm = api.fork()
    with mounted(server, *WRITE_MODES[mode], "--cache-ttl", "600", vm_id=vm) as m:
        m.allow_log("conflict")
        fd = os.open(m.p("new.txt"), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, b"mount's\n")
            in_vm(server, vm, f"printf 'vm made it\\n' > {HOME}/new.txt")
        finally:
            os.close(fd)
        assert_one_conflict(m, api, "new.txt", b"vm made it\n", b"mount's\n", 0o600)


@BOTH_MODES
def test_a_file_whose_directory_the_vm_removed_goes_to_the_recovery_directory(server, api, mode):
    vm = api.fork()
    api.sh(vm, f"mkdir {HOME}/d && printf 'old\\n' > {HOME}/d/f.txt && chmod 600 {HOME}/d/f.txt")
    with mounted(server, *WRITE_MODES[mode], "--cache-ttl", "600", vm_id=vm) as m:
        m.allow_log("conflict")
        with open(m.p("d", "f.txt"), "ab") as f:
            f.write(b"new\n")
            f.flush()  # in the mount's buffer (the old bytes loaded), not yet pushed
            in_vm(server, vm, f"rm -r {HOME}/d")
        recovered = api.sh(vm, f"cd {HOME}/arkerfs-recovered && find . -type f").split()
        assert len(recovered) == 1 and recovered[0].endswith("/d/f.txt"), recovered
        where = f"{HOME}/arkerfs-recovered/{recovered[0][2:]}"
        assert api.read_file(vm, where) == b"old\nnew\n"
        assert api.sh(vm, f"stat -c %a {where}") == "600\n"
        assert api.sh(vm, f"test -e {HOME}/d && echo there || echo gone") == "gone\n"
        found = status(m.path)["conflicts"]
        assert found["count"] == 1 and found["recent"][0]["kept"] == where


@BOTH_MODES
def test_the_mounts_own_changes_never_conflict(server, api, mode):
    """Writes, utimens, chmod and truncates made through the mount (across cache expiry, with
    handles held open) are the mount's own versions: no conflict, exact content and mode."""
    vm = api.fork()
    api.sh(vm, f"printf 'one\\n' > {HOME}/a.txt")
    with mounted(server, *WRITE_MODES[mode], "--cache-ttl", "1", vm_id=vm) as m:
        with open(m.p("a.txt"), "ab") as f:
            f.write(b"two\n")
            f.flush()  # no close yet: the buffer is still held
            os.utime(m.p("a.txt"), ns=(1_600_000_000_000_000_000, 1_500_000_000_000_000_000))
            os.chmod(m.p("a.txt"), 0o755)
            time.sleep(1.5)
            os.stat(m.p("a.txt"))
            f.write(b"three\n")
        fd = os.open(m.p("a.txt"), os.O_RDWR)
        try:
            os.write(fd, b"ONE")
            os.fsync(fd)
            time.sleep(1.5)
            os.utime(fd, ns=(1_600_000_000_000_000_000, 1_500_000_000_000_000_005))  # nothing pending: at once
            os.ftruncate(fd, 8)
            os.utime(fd, ns=(1_600_000_000_000_000_000, 1_500_000_000_000_000_007))
        finally:
            os.close(fd)
        with open(m.p("b.txt"), "wb") as f:
            f.write(b"created\n")
        with open(m.p("b.txt"), "ab") as f:
            f.write(b"appended\n")
        assert api.read_file(vm, f"{HOME}/a.txt") == b"ONE\ntwo\n"
        assert api.sh(vm, f"stat -c '%a %.9Y' {HOME}/a.txt") == "755 1500000000.000000007\n"
        assert api.read_file(vm, f"{HOME}/b.txt") == b"created\nappended\n"
        assert api.sh(vm, f"ls -A {HOME} | grep -c conflict || true") == "0\n"
        assert os.getxattr(m.p("a.txt"), "user.arkerfs.state") == b"clean"
        assert status(m.path)["conflicts"]["count"] == 0


def test_write_through_close_is_one_install_run_that_sets_mode_and_times(server, api, control):
    """The version check rides on the run that installs the content: a small file costs one
    run at close, mode and futimens included; a large one one upload plus that run."""
    with mounted(server, "--write-through", "--cache-ttl", "600", "--no-watch") as m:
        fd = os.open(m.p("x.sh"), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        control.reset_stats()
        try:
            os.write(fd, b"#!/bin/sh\n")
            os.utime(fd, ns=(1_600_000_000_000_000_001, 1_500_000_000_000_000_002))
            os.fchmod(fd, 0o755)
        finally:
            os.close(fd)
        assert control.nonzero_calls() == {"run": 1}
        assert api.sh(m.vm_id, f"stat -c '%a %.9Y %.9X' {HOME}/x.sh") == \
            "755 1500000000.000000002 1600000000.000000001\n"
        big = os.urandom(300_000)
        control.reset_stats()
        with open(m.p("big.bin"), "wb") as f:
            f.write(big)
        assert control.nonzero_calls() == {"run": 2, "sync_write": 1}  # create, upload, install
        assert api.read_file(m.vm_id, f"{HOME}/big.bin") == big
        assert api.sh(m.vm_id, f"ls -A {HOME}/.arkerfs/staging") == ""
        assert stat.S_IMODE(os.stat(m.p("big.bin")).st_mode) == 0o644
