"""Cold walks through real mounts, in both write modes: the first listing of a directory takes
its subtree (``VFS._list``, ``shell.list_tree``), a lookup in a directory never listed lists
it. Calls counted on the server (``/_local/stats``) on a fresh mount."""

from __future__ import annotations

import os
import subprocess

import pytest

from tests.conftest import WRITE_MODES
from tests.mountutil import mounted

# nothing expires during a measurement, and nothing but the workload calls (no change watcher)
LONG_TTL = ("--cache-ttl", "600", "--no-watch")
MODES = pytest.mark.parametrize("mode", list(WRITE_MODES))
GIT_ENV = ("GIT_CONFIG_NOSYSTEM=1 GIT_CONFIG_GLOBAL=/dev/null GIT_AUTHOR_NAME=t GIT_AUTHOR_EMAIL=t@t "
           "GIT_COMMITTER_NAME=t GIT_COMMITTER_EMAIL=t@t")


def sh(*cmd: str, cwd: str | None = None) -> str:
    return subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=cwd,
                          env={"PATH": "/usr/bin:/bin", "GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": "/dev/null",
                               "GIT_CONFIG_COUNT": "1", "GIT_CONFIG_KEY_0": "safe.directory",
                               "GIT_CONFIG_VALUE_0": "*"}).stdout


def calls(control) -> int:
    return sum(control.nonzero_calls().values())


@MODES
def test_find_ls_over_2000_files_in_100_directories(server, api, control, mode):
    vm = api.fork()
    api.sh(vm, "cd /home/user && for d in $(seq -w 1 100); do mkdir -p t/d$d; "
               "for f in $(seq -w 1 20); do : > t/d$d/f$f; done; done")
    with mounted(server, *WRITE_MODES[mode], *LONG_TTL, vm_id=vm) as m:
        control.reset_stats()
        listed = sh("find", m.p("t"), "-ls").splitlines()
        assert len(listed) == 2101  # t, 100 directories, 2000 files
        assert calls(control) <= 3, control.nonzero_calls()


@MODES
def test_cold_git_status_of_a_500_file_repository(server, api, control, mode):
    vm = api.fork()
    api.sh(vm, f"cd /home/user && mkdir repo && cd repo && git init -q && for d in $(seq -w 1 20); do mkdir d$d; "
               "for f in $(seq -w 1 25); do echo \"$d $f\" > d$d/f$f; done; done && "
               f"{GIT_ENV} git add -A && {GIT_ENV} git commit -qm init")
    with mounted(server, *WRITE_MODES[mode], *LONG_TTL, vm_id=vm) as m:
        control.reset_stats()
        assert sh("git", "status", "--porcelain", cwd=m.p("repo")) == ""
        assert calls(control) <= 8, control.nonzero_calls()


@MODES
def test_a_directory_of_100000_entries_lists_whole_in_pages(server, api, control, mode):
    vm = api.fork()
    api.sh(vm, "mkdir /home/user/big && cd /home/user/big && "
               "python3 -c 'import os\nfor i in range(100000): os.close(os.open(\"f%06d\" % i, os.O_CREAT|os.O_WRONLY))'")
    with mounted(server, *WRITE_MODES[mode], *LONG_TTL, vm_id=vm) as m:
        control.reset_stats()
        names = os.listdir(m.p("big"))
        assert len(names) == 100000 and set(names) == {"f%06d" % i for i in range(100000)}
        # the subtree listing gives way (1), then a first run and 13 pages of at most 8,000
        assert calls(control) <= 16, control.nonzero_calls()
        assert os.stat(m.p("big", "f099999")).st_size == 0  # from the listing: no call
        assert calls(control) <= 16
