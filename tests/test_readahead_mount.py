"""Small-file read-ahead through real mounts, in both write modes: budgets of tree walks on a
fresh mount (calls counted on the server, ``/_local/stats``) and correctness of what is read.

A fresh mount knows nothing: the first listing of a directory takes its subtree too (bounded,
``VFS._list``), a lookup in a directory never listed lists it, and the first read of a small
file brings its directory's and its parent subtree's small files in one run
(``arkerfs.fs.readahead``): a walk of a tree costs a few calls in all.
"""

from __future__ import annotations

import errno
import os
import subprocess
import time

import pytest

from tests.conftest import WRITE_MODES
from tests.mountutil import errno_of, mounted

# nothing expires during a measurement, and nothing but the workload calls (no change watcher)
LONG_TTL = ("--cache-ttl", "600", "--no-watch")
MODES = pytest.mark.parametrize("mode", list(WRITE_MODES))


def sh(*cmd: str) -> str:
    return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout


def vm_with_tree(api, dirs: int, files: int) -> str:
    vm = api.fork()
    api.sh(vm, f"cd /home/user && for d in $(seq -w 1 {dirs}); do mkdir -p t/d$d; for f in $(seq -w 1 {files}); "
               "do printf 'line %s needle-%s\\n' $d $f > t/d$d/f$f; done; done")
    return vm


def calls(control) -> dict:
    measured = control.nonzero_calls()
    print("calls:", measured)  # per kind, shown with -rP
    return measured


@MODES
def test_cat_of_200_small_files_in_one_directory(server, api, control, mode):
    vm = vm_with_tree(api, 1, 200)
    with mounted(server, *WRITE_MODES[mode], *LONG_TTL, vm_id=vm) as m:
        control.reset_stats()
        out = subprocess.run(f"cat {m.p('t/d1')}/*", shell=True, check=True, capture_output=True).stdout
        assert out.count(b"needle-") == 200
        measured = calls(control)
        assert sum(measured.values()) <= 5, measured
        control.reset_stats()
        assert sh("cat", m.p("t/d1/f007")) == "line 1 needle-007\n"  # unchanged, within the TTL
        assert calls(control) == {}


# Contents cost one run for the whole tree (read-ahead), listings one for the subtree.
@MODES
def test_grep_r_over_300_files_in_20_directories(server, api, control, mode):
    vm = vm_with_tree(api, 20, 15)
    with mounted(server, *WRITE_MODES[mode], *LONG_TTL, vm_id=vm) as m:
        control.reset_stats()
        assert len(sh("grep", "-r", "needle", m.p("t")).splitlines()) == 300
        measured = calls(control)
        assert sum(measured.values()) <= 10, measured


@MODES
def test_cp_r_out_of_300_files_in_20_directories(server, api, control, mode, tmp_path):
    vm = vm_with_tree(api, 20, 15)
    with mounted(server, *WRITE_MODES[mode], *LONG_TTL, vm_id=vm) as m:
        control.reset_stats()
        sh("cp", "-r", m.p("t"), str(tmp_path / "out"))
        measured = calls(control)
        assert sum(measured.values()) <= 10, measured
    assert sh("grep", "-rc", "needle", str(tmp_path / "out")).count(":1") == 300


@MODES
def test_cp_a_out_and_rsync_checksum_dry_run_of_an_unchanged_300_file_tree(server, api, control, mode, tmp_path):
    vm = vm_with_tree(api, 20, 15)
    api.sh(vm, "python3 -c \"import os; os.setxattr('/home/user/t/d01/f01', 'user.tag', b'kept')\"")
    with mounted(server, *WRITE_MODES[mode], *LONG_TTL, vm_id=vm) as m:
        control.reset_stats()
        sh("cp", "-a", m.p("t"), str(tmp_path / "copy"))  # asks every file for its xattr names too
        measured = calls(control)
        assert sum(measured.values()) <= 10, measured
    assert os.getxattr(tmp_path / "copy" / "d01" / "f01", "user.tag") == b"kept"
    assert os.listxattr(tmp_path / "copy" / "d01" / "f02") == []
    with mounted(server, *WRITE_MODES[mode], *LONG_TTL, vm_id=vm) as m:  # fresh: nothing cached
        control.reset_stats()
        out = sh("rsync", "-a", "--checksum", "--dry-run", "-i", str(tmp_path / "copy") + "/", m.p("t/"))
        assert out.strip() == ""  # nothing differs
        measured = calls(control)
        assert sum(measured.values()) <= 10, measured


@MODES
def test_a_file_changed_in_the_vm_is_never_served_stale_once_its_version_differs(server, api, mode):
    vm = api.fork()
    hostile = ["-rf", "a\nb", "q'uote\"", "$(touch pwned)", " sp "]
    for i, name in enumerate(["a", "b", *hostile]):
        api.write_file(vm, "/home/user/d/" + name, f"old {i}".encode())
    api.sh(vm, "printf 'not utf-8' > /home/user/d/$(printf 'x\\377y')")  # no sync path can name it
    with mounted(server, *WRITE_MODES[mode], "--cache-ttl", "1", vm_id=vm) as m:
        assert sh("cat", m.p("d/a")) == "old 0"  # b and the hostile names come with it
        api.sh(vm, "printf 'new 1' > /home/user/d/b && touch -d @2000000000 /home/user/d/b")
        time.sleep(2.5)  # past the mount's TTL (and the kernel's)
        assert sh("cat", m.p("d/b")) == "new 1"
        for i, name in enumerate(hostile, start=2):
            with open(os.path.join(m.p("d"), name), "rb") as f:
                assert f.read() == f"old {i}".encode()
        with open(os.path.join(os.fsencode(m.p("d")), b"x\xffy"), "rb") as f:
            assert f.read() == b"not utf-8"
        assert api.sh(vm, "ls /home/user/pwned 2>/dev/null || true") == ""


@MODES
def test_xattr_names_a_listing_gave_follow_the_mounts_own_changes(server, api, control, mode):
    vm = api.fork()
    api.sh(vm, "mkdir /home/user/xd && : > /home/user/xd/f && python3 -c "
               "\"import os; os.setxattr('/home/user/xd/f', 'user.old', b'1')\"")
    with mounted(server, *WRITE_MODES[mode], *LONG_TTL, vm_id=vm) as m:
        assert os.listdir(m.p("xd")) == ["f"]  # the listing says which names f has
        control.reset_stats()
        assert os.listxattr(m.p("xd/f")) == ["user.old"]
        assert errno_of(os.getxattr, m.p("xd/f"), "user.none") == errno.ENODATA
        assert calls(control) == {}
        os.setxattr(m.p("xd/f"), "user.new", b"2")
        assert sorted(os.listxattr(m.p("xd/f"))) == ["user.new", "user.old"]
        os.removexattr(m.p("xd/f"), "user.old")
        assert os.listxattr(m.p("xd/f")) == ["user.new"]
        assert errno_of(os.getxattr, m.p("xd/f"), "user.old") == errno.ENODATA
