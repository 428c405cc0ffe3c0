"""An API that accepts connections but never answers (the server stopped with SIGSTOP).

Nothing may hang on it: operations fail with EIO by ``--outage-timeout`` (a request that gets
no answer counts like a refused connection), ``arkerfs umount --timeout`` returns in time and
says what is still pending without touching the mounted tree, and ``arkerfs umount --force``
gives up: no mount is left and unsent data is in a rescue file it names.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from arkerfs import exitcodes
from arkerfs.mount import runtime
from tests.conftest import WRITE_MODES
from tests.mountutil import Api, mounted
from tests.test_faults_mount import private_server

# Upper bounds that only detect a hang (the old behaviour was 180 s per operation).
HANG = 30.0
NOISE = (r"WARNING arkerfs\.client: ", r"WARNING arkerfs\.fs\.remote: ", r"WARNING arkerfs\.mount\.ops: ",
         r"ERROR arkerfs\.", r"WARNING arkerfs\.fs\.vfs: ")

HOLDER = r"""
import sys
f = open(sys.argv[1], "w")
f.write("precious")
f.flush()  # buffered in the daemon, not uploaded: the file stays open
print("written", flush=True)
sys.stdin.read()
f.close()
"""


@contextlib.contextmanager
def stopped(srv):
    """The server process frozen: the kernel still accepts connections, nothing answers."""
    srv.proc.send_signal(signal.SIGSTOP)
    try:
        yield
    finally:
        srv.proc.send_signal(signal.SIGCONT)


def timed_errno(fn, *args) -> tuple[int | None, float]:
    started = time.monotonic()
    try:
        fn(*args)
    except OSError as exc:
        return exc.errno, time.monotonic() - started
    return None, time.monotonic() - started


def umount(mnt: str, *args: str, env: dict) -> tuple[subprocess.CompletedProcess, float]:
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "arkerfs", "umount", *args, mnt], capture_output=True,
                          text=True, env=env, timeout=120, stdin=subprocess.DEVNULL)
    return done, time.monotonic() - started


@pytest.mark.parametrize("mode", list(WRITE_MODES))
def test_unanswered_requests_fail_with_eio_by_the_outage_deadline(tmp_path, mode):
    with private_server(tmp_path) as srv:
        with mounted(srv, *WRITE_MODES[mode], "--outage-timeout", "5") as m:
            for pattern in NOISE:
                m.allow_log(pattern)
            os.mkdir(m.p("d"))
            Api(srv).run(m.vm_id, "true")  # (write-back: waits until the mkdir is in the VM)
            time.sleep(3.5)  # past --cache-ttl (3 s): nothing below is answered from the cache
            with stopped(srv):
                code, took = timed_errno(os.stat, m.p("never-seen"))
                assert (code, took < HANG) == (errno.EIO, True), (code, took)
                assert took >= 4, took  # it waited out the outage deadline, not less
                code, took = timed_errno(os.listdir, m.p("d"))
                assert (code, took < HANG) == (errno.EIO, True), (code, took)
            # the mount stays up and works again once the API answers
            with open(m.p("after"), "w") as f:
                f.write("back")
            assert {"after", "d"} <= set(os.listdir(m.path))


@pytest.mark.parametrize("mode", list(WRITE_MODES))
def test_umount_with_an_unresponsive_api_times_out_then_force_rescues(tmp_path, mode):
    with private_server(tmp_path) as srv:
        with mounted(srv, *WRITE_MODES[mode]) as m:  # default --outage-timeout 60: the push would wait 60 s
            m.expect_exit = None  # given up on purpose
            for pattern in (*NOISE, r"WARNING arkerfs\.mount\.daemon: SIGUSR2: giving up"):
                m.allow_log(pattern)
            env = {**os.environ, "XDG_RUNTIME_DIR": os.path.dirname(m.path)}
            env.pop("ARKER_API_KEY", None)
            # Another process holds the file open with unsent data (not this one: every process
            # this test starts would close a copy of the descriptor at exec, and close uploads).
            holder = subprocess.Popen([sys.executable, "-c", HOLDER, m.p("unsent")], stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE, text=True)
            assert holder.stdout.readline() == "written\n"
            blocked: list = []
            with stopped(srv):
                time.sleep(1.5)  # past the kernel's attribute timeout of the root
                # an application blocked on the mount (Ctrl-C cannot free it: see docs/MOUNT.md)
                lister = threading.Thread(target=lambda: blocked.append(timed_errno(os.listdir, m.p("x"))))
                lister.start()
                done, took = umount(m.path, "--timeout", "3", env=env)
                assert took < HANG, took
                open("/tmp/hanglog", "w").write(m.log() + done.stderr)
                assert done.returncode == exitcodes.PENDING, done
                assert "still pushing" in done.stderr and "unsent" in done.stderr, done.stderr
                assert "--force" in done.stderr, done.stderr
                assert runtime.mount_entry(m.path) is not None  # nothing was forced

                done, took = umount(m.path, "--force", "--timeout", "3", env=env)
                assert took < HANG, took
                assert runtime.mount_entry(m.path) is None, done
                assert done.returncode == exitcodes.PENDING, done
                assert "data kept in: " in done.stderr, (done.stderr, m.log())
                if mode == "write-through":
                    rescue = done.stderr.split("data kept in: ")[1].splitlines()[0].split(",")[0].strip()
                    with open(rescue) as saved:
                        assert saved.read() == "precious"
                else:  # SIGTERM's push had put it in the journal: kept there for the next mount
                    assert "write-back journal: " in done.stderr, done.stderr
                m.proc.wait(HANG)  # the daemon is gone
                lister.join(HANG)
                assert not lister.is_alive()  # the blocked application was freed
            holder.stdin.close()
            assert holder.wait(HANG) != 0  # its close failed: the mount is gone
            if mode == "write-back":  # the next mount of the VM pushes what the journal kept
                with mounted(srv, *WRITE_MODES[mode], vm_id=m.vm_id, state_home=os.path.dirname(m.path)):
                    pass
                assert Api(srv).read_file(m.vm_id, "/home/user/unsent") == b"precious"
