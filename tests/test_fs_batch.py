"""Batches and compare-and-swap installs, run through a local ``bash`` in a temp dir (no server)."""

from __future__ import annotations

import errno as E
import os
import stat
import subprocess

import pytest

from arkerfs.fs import batch as B
from arkerfs.fs import shell as S
from arkerfs.fs.errors import FsError
from tests.test_fs_shell import NAMES

STAMP = "20261128T091500Z"
MTIME = 1_700_000_000_123_456_789


# Every test runs each way an install can go: a fragment of its own (the shell _inst), a run of
# installs in one python3 process (_pi), and _pi on a VM without python3 (each line via _inst).
INSTALL_PATHS = ("shell", "python", "no-python")
HIDE_PYTHON = 'command() { [ "$2" = python3 ] && return 1; builtin command "$@"; }\n'


SCRIPT_PREFIX = ""  # HIDE_PYTHON for the no-python path


@pytest.fixture(params=INSTALL_PATHS, autouse=True)
def install_path(request, monkeypatch) -> str:
    if request.param != "shell":
        monkeypatch.setattr(S, "PY_INSTALL_MIN", 1)
    if request.param == "no-python":
        monkeypatch.setitem(globals(), "SCRIPT_PREFIX", HIDE_PYTHON)
    return request.param


def run_batch(fragments) -> tuple[list[S.Outcome], int]:
    proc = subprocess.run(["bash", "-c", SCRIPT_PREFIX + B.batch_script(fragments)], capture_output=True, timeout=30)
    return S.parse_output(proc.stdout), proc.returncode


@pytest.fixture
def home(tmp_path) -> bytes:
    (tmp_path / "home").mkdir()
    (tmp_path / "staging").mkdir()
    return os.fsencode(tmp_path / "home")


def stage(home: bytes, name: bytes, data: bytes) -> bytes:
    path = os.path.dirname(home) + b"/staging/" + name
    with open(path, "wb") as f:
        f.write(data)
    return path


def install(home, staged, rel, *, base, mode=0o640, mtime_ns=MTIME):
    return B.install(staged, home + b"/" + rel, mode=mode, mtime_ns=mtime_ns, base=base, stamp=STAMP,
                     recovery=home + b"/arkerfs-recovered", home=home)


def test_a_batch_stops_at_the_first_failure_and_reports_each_outcome(home):
    frags = [S.mkdir(home + b"/a", 0o755), S.mkdir(home + b"/a", 0o755), S.mkdir(home + b"/b", 0o755)]
    outcomes, code = run_batch(frags)
    assert [o.status for o in outcomes] == [0, E.EEXIST] and code == E.EEXIST
    assert S.check_result(frags[0], outcomes[0]).is_dir
    with pytest.raises(FsError) as failed:
        S.check_result(frags[1], outcomes[1])
    assert failed.value.errno == E.EEXIST
    assert not os.path.exists(home + b"/b")  # never ran: nothing applied out of order


def test_install_of_a_new_file_sets_mode_and_exact_times_and_leaves_no_staging_name(home):
    staged = stage(home, b"01", b"new content")
    frags = [S.mkdir(home + b"/d", 0o755), install(home, staged, b"d/f", base=None)]
    outcomes, code = run_batch(frags)
    assert code == 0
    done = S.check_result(frags[1], outcomes[1])
    assert done.conflict is None
    assert done.attrs.size == 11 and stat.S_IMODE(done.attrs.mode) == 0o640
    assert done.attrs.mtime_ns == MTIME == os.lstat(home + b"/d/f").st_mtime_ns
    assert open(home + b"/d/f", "rb").read() == b"new content"
    assert not os.path.exists(staged)


def test_install_over_the_version_it_was_based_on_replaces_it_atomically(home):
    target = home + b"/f"
    with open(target, "wb") as f:
        f.write(b"old")
    seen = S.parse_attrs(S.only(run_one(S.lstat(target)).records, b"A"))
    inode_before = os.lstat(target).st_ino
    frag = install(home, stage(home, b"02", b"newer"), b"f", base=B.Version.of(seen))
    done = S.check_result(frag, run_one(frag))
    assert done.conflict is None and open(target, "rb").read() == b"newer"
    assert os.lstat(target).st_ino != inode_before  # a rename into place, never a rewrite


def run_one(fragment) -> S.Outcome:
    outcomes, _ = run_batch([fragment])
    return outcomes[0]


@pytest.mark.parametrize("change_in_vm", ["append", "replace_same_size", "remove"])
def test_a_change_made_in_the_vm_is_never_overwritten(home, change_in_vm):
    target = home + b"/notes.txt"
    with open(target, "wb") as f:
        f.write(b"line-1\n")
    seen = B.Version.of(S.parse_attrs(S.only(run_one(S.lstat(target)).records, b"A")))
    if change_in_vm == "append":  # e.g. the O_APPEND case of the issue: vm-line-2
        with open(target, "ab") as f:
            f.write(b"vm-line-2\n")
    elif change_in_vm == "replace_same_size":  # same size and mtime, another inode
        other = home + b"/tmp"
        with open(other, "wb") as f:
            f.write(b"line-X\n")
        st = os.lstat(target)
        os.utime(other, ns=(st.st_atime_ns, st.st_mtime_ns))
        os.rename(other, target)
    else:
        os.unlink(target)
    frag = install(home, stage(home, b"03", b"line-1\nlocal-line-2\n"), b"notes.txt", base=seen)
    done = S.check_result(frag, run_one(frag))
    kept = home + b"/notes.txt.conflict-" + STAMP.encode()
    assert done.attrs is None and done.conflict == kept
    assert open(kept, "rb").read() == b"line-1\nlocal-line-2\n"  # the local version survives
    assert stat.S_IMODE(os.lstat(kept).st_mode) == 0o640
    if change_in_vm == "append":
        assert open(target, "rb").read() == b"line-1\nvm-line-2\n"  # and so does the VM's


def test_a_name_the_vm_created_meanwhile_is_a_conflict_too(home):
    with open(home + b"/f", "wb") as f:
        f.write(b"made in the VM")
    frag = install(home, stage(home, b"04", b"made here"), b"f", base=None)
    done = S.check_result(frag, run_one(frag))
    assert done.conflict.endswith(b"f.conflict-" + STAMP.encode())
    assert open(home + b"/f", "rb").read() == b"made in the VM"


def test_a_file_whose_directory_was_removed_in_the_vm_goes_to_the_recovery_directory(home):
    frag = install(home, stage(home, b"05", b"orphan"), b"gone/sub/f", base=None)
    done = S.check_result(frag, run_one(frag))
    assert done.conflict == home + b"/arkerfs-recovered/" + STAMP.encode() + b"/gone/sub/f"
    assert open(done.conflict, "rb").read() == b"orphan"


def test_hostile_names_install_and_conflict_exactly(home):
    for i, name in enumerate(NAMES[:12]):
        name = name[:200]
        frag = install(home, stage(home, b"h%d" % i, name), name, base=None)
        done = S.check_result(frag, run_one(frag))
        assert done.conflict is None and open(home + b"/" + name, "rb").read() == name
    assert sorted(os.listdir(home)) == sorted(n[:200] for n in NAMES[:12])


def test_an_in_place_install_keeps_the_inode_so_every_hard_link_sees_it(home):
    target = home + b"/f"
    with open(target, "wb") as f:
        f.write(b"old")
    os.link(target, home + b"/twin")
    seen = os.lstat(target)
    frag = B.install(stage(home, b"06", b"new bytes"), target, mode=None, mtime_ns=MTIME,
                     base=B.Version(seen.st_ino, seen.st_size, seen.st_mtime_ns), stamp=STAMP, recovery=home + b"/arkerfs-recovered", home=home, in_place=True)
    done = S.check_result(frag, run_one(frag))
    assert done.conflict is None and done.attrs.nlink == 2
    assert open(home + b"/twin", "rb").read() == b"new bytes"
    assert os.lstat(home + b"/twin").st_mtime_ns == MTIME
    assert stat.S_IMODE(os.lstat(target).st_mode) == 0o644  # mode None: the file's own


def test_a_batch_sent_again_finds_its_own_installs_and_makes_no_conflict_copy(home):
    """The answer of a batch was lost and the pusher sends it again: every install finds the
    version it made (size, ns mtime), drops the staged copy and reports the file."""
    def batch(tag: bytes):
        return [B.install(stage(home, tag + b"%d" % i, b"v%d" % i), home + b"/f%d" % i, mode=0o600,
                          mtime_ns=MTIME + i, base=None, stamp=STAMP, recovery=home + b"/arkerfs-recovered",
                          home=home, size=2) for i in range(5)]
    first, again = batch(b"a"), batch(b"b")
    assert [o.status for o in run_batch(first)[0]] == [0] * 5
    outcomes, code = run_batch(again)
    assert code == 0
    for i, (frag, outcome) in enumerate(zip(again, outcomes)):
        done = S.check_result(frag, outcome)
        assert done.conflict is None and done.attrs.mtime_ns == MTIME + i and done.attrs.size == 2
    assert sorted(os.listdir(home)) == [b"f%d" % i for i in range(5)]
    assert os.listdir(os.path.dirname(home) + b"/staging") == []


def test_file_renames_in_a_batch_replace_repeat_and_refuse_like_rename(home):
    """rsync publishes each file by renaming its temporary name over the old one."""
    for name, data in ((b".f.tmp", b"new"), (b"f", b"old"), (b".g.tmp", b"g"), (b"h", b"h")):
        with open(home + b"/" + name, "wb") as f:
            f.write(data)
    frags = [B.rename(home + b"/.f.tmp", home + b"/f"), B.rename(home + b"/.g.tmp", home + b"/g"),
             B.rename(home + b"/missing", home + b"/m")]
    outcomes, code = run_batch(frags)
    assert [o.status for o in outcomes] == [0, 0, E.ENOENT] and code == E.ENOENT
    assert open(home + b"/f", "rb").read() == b"new" and open(home + b"/g", "rb").read() == b"g"
    outcomes, code = run_batch(frags[:2])  # sent again: done already
    assert [o.status for o in outcomes] == [0, 0] and code == 0
    refused = B.rename(home + b"/g", home + b"/h", S.RENAME_NOREPLACE)
    outcomes, code = run_batch([refused])
    assert outcomes[0].status == E.EEXIST and open(home + b"/h", "rb").read() == b"h"
    assert sorted(os.listdir(home)) == [b"f", b"g", b"h"]
