"""Freshness through real mounts, in both write modes: a change made inside the VM (through
``run``, as the user's program or an agent would) shows up in the mount within 1.5 s while the
change watcher is live, and within the TTL + 1 s with ``--no-watch``; the mount's own changes
never come back as conflicts; an idle watcher costs at most 2 calls a minute.

"Visible" is polled the way an application would see it: a stat, a listing, a read."""

from __future__ import annotations

import os
import time

import pytest

from tests.conftest import WRITE_MODES
from tests.mountutil import Api, mounted
from tests.test_faults_mount import private_server
from tests.test_faults_outage import restart
from tests.test_status import status, status_json

MODES = pytest.mark.parametrize("mode", list(WRITE_MODES))
WATCH_DEADLINE = 1.5  # seconds from the change's run returning to the mount showing it


def wait_live(m, timeout: float = 20.0, times: int = 1) -> None:
    """Until the daemon logged that its watcher went live (its first answer has come), ``times``
    times."""
    deadline = time.monotonic() + timeout
    while m.log().count("watcher: live") < times:
        assert time.monotonic() < deadline, f"the watcher never went live:\n{m.log()}"
        time.sleep(0.05)


def seen_within(check, seconds: float) -> float:
    """Poll ``check()`` every 20 ms until it is true; how long that took (fails past ``seconds``)."""
    start = time.monotonic()
    while True:
        try:
            if check():
                return time.monotonic() - start
        except OSError:
            pass
        assert time.monotonic() - start < seconds, f"not visible within {seconds} s"
        time.sleep(0.02)


def read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def four_changes(api, vm, m, deadline: float) -> list[float]:
    """Create, change, rename and remove a file inside the VM while the mount has the directory
    and the file cached; returns the seconds each took to show up."""
    d = m.p("w")
    assert sorted(os.listdir(d)) == ["keep.txt", "old.txt"]
    assert read(m.p("w", "keep.txt")) == b"first\n"
    assert os.path.exists(m.p("w", "old.txt"))
    took = []
    api.sh(vm, "echo new > /home/user/w/new.txt")
    took.append(seen_within(lambda: "new.txt" in os.listdir(d) and read(m.p("w", "new.txt")) == b"new\n", deadline))
    api.sh(vm, "echo 'second version' > /home/user/w/keep.txt")
    took.append(seen_within(lambda: read(m.p("w", "keep.txt")) == b"second version\n"
                            and os.stat(m.p("w", "keep.txt")).st_size == 15, deadline))
    api.sh(vm, "mv /home/user/w/old.txt /home/user/w/moved.txt")
    took.append(seen_within(lambda: not os.path.exists(m.p("w", "old.txt"))
                            and "moved.txt" in os.listdir(d), deadline))
    api.sh(vm, "rm /home/user/w/new.txt")
    took.append(seen_within(lambda: not os.path.exists(m.p("w", "new.txt"))
                            and "new.txt" not in os.listdir(d), deadline))
    return took


def seeded(api) -> str:
    vm = api.fork()
    api.sh(vm, "mkdir /home/user/w && echo first > /home/user/w/keep.txt && : > /home/user/w/old.txt")
    return vm


@MODES
def test_changes_made_in_the_vm_show_up_within_a_second_and_a_half(server, api, mode):
    vm = seeded(api)
    with mounted(server, *WRITE_MODES[mode], vm_id=vm, watch=True) as m:
        wait_live(m)
        watcher = status_json(m)["watcher"]
        assert (watcher["state"], watcher["mode"], watcher["ttl_s"]) == ("live", "inotify", 60)
        four_changes(api, vm, m, WATCH_DEADLINE)
        assert status_json(m)["watcher"]["changes"] >= 4
        # a whole directory made in the VM, and one renamed there, with what they hold
        api.sh(vm, "mkdir -p /home/user/w/tree/sub && echo deep > /home/user/w/tree/sub/f")
        seen_within(lambda: read(m.p("w", "tree", "sub", "f")) == b"deep\n", WATCH_DEADLINE)
        api.sh(vm, "mv /home/user/w/tree /home/user/w/tree2 && echo deeper > /home/user/w/tree2/sub/f")
        seen_within(lambda: not os.path.exists(m.p("w", "tree"))
                    and read(m.p("w", "tree2", "sub", "f")) == b"deeper\n", WATCH_DEADLINE)


@MODES
def test_without_the_watcher_changes_show_up_within_the_ttl(server, api, mode):
    vm = seeded(api)
    with mounted(server, *WRITE_MODES[mode], "--no-watch", "--cache-ttl", "2", vm_id=vm) as m:
        took = four_changes(api, vm, m, 2 + 1)
        # and not through a watcher: nothing reported it, the entries expired
        assert "watcher" not in m.log()
        assert max(took) > 0.2, took
        assert "watcher    off (--no-watch); entries kept 2 s" in status(m, m.path).stdout


@MODES
def test_the_mounts_own_changes_never_come_back_as_conflicts(server, api, mode):
    vm = seeded(api)
    with mounted(server, *WRITE_MODES[mode], vm_id=vm, watch=True) as m:
        wait_live(m)
        for i in range(5):  # rewrite, append, rename over: each reported back by the watcher
            with open(m.p("w", "keep.txt"), "w") as f:
                f.write(f"version {i}\n")
            with open(m.p("w", "keep.txt"), "a") as f:
                f.write("more\n")
            with open(m.p("w", "tmp"), "w") as f:
                f.write(f"replaced {i}\n")
            os.rename(m.p("w", "tmp"), m.p("w", "old.txt"))
            time.sleep(0.3)  # let the watcher's report of it arrive before the next round
        assert read(m.p("w", "keep.txt")) == b"version 4\nmore\n"
        assert api.read_file(vm, "/home/user/w/keep.txt") == b"version 4\nmore\n"
        assert api.read_file(vm, "/home/user/w/old.txt") == b"replaced 4\n"
        assert sorted(os.listdir(m.p("w"))) == ["keep.txt", "old.txt"]
        assert sorted(api.sh(vm, "ls -A /home/user/w").split()) == ["keep.txt", "old.txt"]
        assert "conflict" not in m.log()


def test_an_idle_watcher_makes_at_most_two_calls_a_minute(server, api, control):
    vm = seeded(api)
    with mounted(server, vm_id=vm, watch=True) as m:
        wait_live(m)
        time.sleep(1)  # the first long poll is on its way
        control.reset_stats()
        time.sleep(35)  # nothing while one run waits: at most one run per 45 s, < 2 a minute
        assert sum(control.nonzero_calls().values()) == 0, control.nonzero_calls()
        # and it still answers at once afterwards
        api.sh(vm, "echo later > /home/user/w/keep.txt")
        seen_within(lambda: read(m.p("w", "keep.txt")) == b"later\n", WATCH_DEADLINE)


def test_the_watcher_survives_a_server_restart(tmp_path):
    with private_server(tmp_path) as srv:
        api = Api(srv)
        vm = seeded(api)
        with mounted(srv, vm_id=vm, watch=True) as m:
            m.allow_log(r"WARNING|ERROR")  # the outage itself may be logged by the file operations
            wait_live(m)
            assert read(m.p("w", "keep.txt")) == b"first\n"
            srv.kill()
            restart(srv, 1.0)
            wait_live(m, times=2)  # it came back by itself, from where it was
            api.sh(vm, "echo after > /home/user/w/keep.txt")
            seen_within(lambda: read(m.p("w", "keep.txt")) == b"after\n", WATCH_DEADLINE)
