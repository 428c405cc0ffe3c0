"""`arkerfs sync`: everything pending reaches the VM, or the command names what did not.

Pending data is made the way an application makes it: another process keeps a file open for
writing with data the daemon holds but has not uploaded (a close, or any flush, would upload it;
that is why the holder is not this process, whose children would close a copy at exec).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from arkerfs import exitcodes
from tests.conftest import WRITE_MODES
from tests.mountutil import fsync_dir, mounted

# Writes each line it reads to FILE (kept open, flushed into the daemon, never closed) and
# answers "written"; closes FILE at EOF.
HOLDER = r"""
import sys
f = open(sys.argv[1], "w")
for line in sys.stdin:
    f.write(line.rstrip("\n"))
    f.flush()
    print("written", flush=True)
f.close()
"""


def sync(m, *args: str, runtime_dir: str | None = None) -> subprocess.CompletedProcess:
    """`arkerfs sync` as the user who made the mount would run it (same runtime dir)."""
    env = {**os.environ, "XDG_RUNTIME_DIR": runtime_dir or os.path.dirname(m.path)}
    env.pop("ARKER_API_KEY", None)
    return subprocess.run([sys.executable, "-m", "arkerfs", "sync", *args], env=env, stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=120)


class Holder:
    def __init__(self, path: str) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", HOLDER, path], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)

    def write(self, text: str) -> None:
        self.proc.stdin.write(text + "\n")
        self.proc.stdin.flush()
        assert self.proc.stdout.readline() == "written\n"

    def close(self) -> None:
        self.proc.stdin.close()
        assert self.proc.wait(60) == 0


def in_the_vm(server, m, name: str) -> bytes | None:
    """The VM's file as the server holds it, read without an `arkerfs sync` first (which
    ``Api`` does for write-back mounts); None if it is not there."""
    try:
        with open(server.data_dir / "vms" / m.vm_id / "home" / name, "rb") as f:
            return f.read()
    except FileNotFoundError:
        return None


@pytest.mark.parametrize("mode", list(WRITE_MODES))
def test_sync_pushes_a_file_still_open_for_writing(server, control, api, mode):
    with mounted(server, *WRITE_MODES[mode]) as m:
        path = m.p("open.txt")
        holder = Holder(path)
        try:
            holder.write("precious")
            # created (write-back: maybe not yet); the data waits
            assert in_the_vm(server, m, "open.txt") in ((b"", None) if m.write_back else (b"",))
            assert os.getxattr(path, "user.arkerfs.state") == b"pending"
            # every call takes 1.5 s: the push outlasts the first progress look (0.5 s), so the
            # drain is shown from status answers given while the sync request is in progress
            control.set_faults(latency_ms=1500)
            done = sync(m, m.path)
            control.clear_faults()
            assert done.returncode == exitcodes.OK, done.stderr
            assert f"everything pending on {m.path} is in the VM" in done.stdout
            assert f"arkerfs sync: {m.path}: 1 file(s), 8 B pending" in done.stderr, done.stderr
            assert api.read_file(m.vm_id, "/home/user/open.txt") == b"precious"  # still open here
            assert os.getxattr(path, "user.arkerfs.state") == b"clean"

            holder.write(" and more")
            done = sync(m)  # no mount point: every live mount of this user
            assert done.returncode == exitcodes.OK, done.stderr
            assert api.read_file(m.vm_id, "/home/user/open.txt") == b"precious and more"
        finally:
            holder.close()


@pytest.mark.parametrize("mode", list(WRITE_MODES))
def test_sync_names_what_it_could_not_push_and_a_later_sync_pushes_it(server, control, api, mode):
    with mounted(server, *WRITE_MODES[mode]) as m:
        m.allow_log("could not push|giving up|failed|refused|forbidden")
        os.mkdir(m.p("dir"))
        fsync_dir(m.path)  # write-back: the mkdir is in the VM before the refusals start
        holder = Holder(m.p("dir", "stuck.txt"))
        try:
            holder.write("precious")
            control.set_faults(fail_rate=1.0, fail_status=403)  # a refusal: never retried
            done = sync(m, m.path)
            control.clear_faults()
            assert done.returncode == exitcodes.PENDING, (done.returncode, done.stdout, done.stderr)
            # write-back names the journal's operation too ("write: EACCES ...")
            assert re.search(f"could not push {re.escape(m.p('dir', 'stuck.txt'))}: ((create|write): )?EACCES",
                             done.stderr), done.stderr
            assert "1 file(s)" in done.stderr and "could not be pushed" in done.stderr
            assert os.getxattr(m.p("dir", "stuck.txt"), "user.arkerfs.state") == b"failed"  # kept

            done = sync(m, m.path)
            assert done.returncode == exitcodes.OK, done.stderr
            assert api.read_file(m.vm_id, "/home/user/dir/stuck.txt") == b"precious"
        finally:
            holder.close()


def test_sync_of_something_not_mounted_fails(tmp_path):
    done = sync(None, str(tmp_path), runtime_dir=str(tmp_path))
    assert done.returncode == exitcodes.FAILED and "not mounted" in done.stderr
    done = sync(None, runtime_dir=str(tmp_path))  # no live mount: nothing is pending anywhere
    assert done.returncode == exitcodes.OK and "no arkerfs mount is running" in done.stderr
