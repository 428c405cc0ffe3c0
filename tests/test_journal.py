"""The write-back journal on its own: ordering, durability across kill -9, acknowledgement,
orphan rescue, locking and VM ownership. Real files, real SQLite, real processes."""

from __future__ import annotations

import json
import os
import random
import signal
import stat
import subprocess
import sys
import textwrap
import time

import pytest

from arkerfs.writeback.journal import Journal, JournalError

VM = "01KQBYKEV5WJ7YB010603T1DCT_d8c0"


def test_changes_come_back_in_order_with_their_contents(tmp_path):
    with Journal.for_vm(VM, tmp_path) as j:
        j.append("mkdir", {"path": "d", "mode": 0o755})
        content = j.store_content(b"hello")
        j.append("write", {"path": "d/f", "mode": 0o644}, content)
        j.append("rename", {"old": "d/f", "new": "d/g"})
        j.commit()
    with Journal.for_vm(VM, tmp_path) as j:
        changes = j.pending()
        assert [(c.op, c.args) for c in changes] == [
            ("mkdir", {"path": "d", "mode": 0o755}),
            ("write", {"path": "d/f", "mode": 0o644}),
            ("rename", {"old": "d/f", "new": "d/g"}),
        ]
        assert j.content_path(changes[1]).read_bytes() == b"hello" and changes[1].size == 5
        assert j.summary()["changes"] == 3 and j.summary()["bytes"] == 5


def test_private_directories_keyed_by_vm(tmp_path):
    with Journal.for_vm(VM, tmp_path) as j:
        assert j.directory == tmp_path / VM
        for path in (tmp_path, j.directory, j.spool):
            assert stat.S_IMODE(os.stat(path).st_mode) == 0o700
    for bad in ("", "../x", "a/b", ".."):
        with pytest.raises(JournalError):
            Journal.for_vm(bad, tmp_path)


def test_a_journal_is_never_used_for_another_vm(tmp_path):
    Journal(tmp_path / "j", VM).close()
    with pytest.raises(JournalError, match="belongs to VM"):
        Journal(tmp_path / "j", "another-vm")


def test_one_daemon_at_a_time(tmp_path):
    first = Journal.for_vm(VM, tmp_path)
    with pytest.raises(JournalError, match="in use"):
        Journal.for_vm(VM, tmp_path)
    first.close()
    Journal.for_vm(VM, tmp_path).close()  # released with the first


def test_acknowledged_changes_and_their_spool_files_go(tmp_path):
    with Journal.for_vm(VM, tmp_path) as j:
        a = j.append("write", {"path": "a"}, j.store_content(b"A" * 1000))
        b = j.append("write", {"path": "b"}, j.store_content(b"B"))
        j.commit()
        spooled = sorted(p.name for p in j.spool.iterdir())
        assert len(spooled) == 2
        j.acknowledge([a])
        assert [c.seq for c in j.pending()] == [b]
        assert len(list(j.spool.iterdir())) == 1
        j.acknowledge([b])
        assert j.pending() == [] and list(j.spool.iterdir()) == []


def test_rewrite_and_failed_attempts_are_kept(tmp_path):
    with Journal.for_vm(VM, tmp_path) as j:
        seq = j.append("write", {"path": "old"}, j.store_content(b"x"))
        j.rewrite(seq, {"path": "new"})
        j.commit()
        j.note_attempt(seq, "ENOSPC in the VM", failed=True)
    with Journal.for_vm(VM, tmp_path) as j:
        [change] = j.pending()
        assert change.args == {"path": "new"} and change.attempts == 1 and change.failed == "ENOSPC in the VM"
        assert j.summary()["failed"] == 1


def test_content_from_a_descriptor(tmp_path):
    data = random.Random(1).randbytes(5 * 1024 * 1024 + 3)
    source = tmp_path / "buffer"
    source.write_bytes(data)
    with Journal.for_vm(VM, tmp_path / "state") as j:
        fd = os.open(source, os.O_RDONLY)
        try:
            name, size = j.store_content(fd, len(data))
        finally:
            os.close(fd)
        assert size == len(data) and (j.spool / name).read_bytes() == data


WRITER = textwrap.dedent("""
    import sys
    from pathlib import Path
    from arkerfs.writeback.journal import Journal
    j = Journal.for_vm(sys.argv[2], Path(sys.argv[1]))
    i = 0
    while True:
        i += 1
        body = (b"%d:" % i) * (i % 50 + 1)
        seq = j.append("write", {"path": "f%d" % i}, j.store_content(body))
        if i % 3 == 0:
            j.append("chmod", {"path": "f%d" % i, "mode": 0o600})
        j.commit()  # the point where close() would return
        print(seq, i, flush=True)
        # the next content is written but its change never committed when the kill lands here
        j.store_content(b"unrecorded")
""")


@pytest.mark.parametrize("seed", range(3))
def test_kill_9_keeps_every_committed_change_and_rescues_the_rest(tmp_path, seed):
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path), VM],
                            stdout=subprocess.PIPE, text=True)
    time.sleep(random.Random(seed).uniform(0.3, 1.2))
    os.kill(proc.pid, signal.SIGKILL)
    out, _ = proc.communicate()
    acknowledged = {int(seq): int(i) for seq, i in (line.split() for line in out.splitlines())}
    assert acknowledged, "the writer never got going"
    with Journal.for_vm(VM, tmp_path) as j:
        writes = {c.seq: c for c in j.pending() if c.op == "write"}
        for seq, i in acknowledged.items():  # nothing acknowledged is lost, byte for byte
            change = writes[seq]
            assert change.args == {"path": f"f{i}"}
            assert j.content_path(change).read_bytes() == (b"%d:" % i) * (i % 50 + 1)
        assert not [p for p in j.spool.iterdir() if p.name.startswith(".")]  # no half-written temp
        for path in j.rescued:  # content with no committed change: kept aside, not deleted
            assert path.parent == j.rescue_dir and path.read_bytes() in (b"unrecorded",) + tuple(
                (b"%d:" % k) * (k % 50 + 1) for k in range(1, max(acknowledged.values()) + 2))
        named = {c.content for c in j.pending() if c.content}
        assert {p.name for p in j.spool.iterdir()} == named


def test_a_crash_after_acknowledging_never_rescues_pushed_content(tmp_path):
    """The exact crash point: the drop of the changes is committed, their files not unlinked."""
    j = Journal.for_vm(VM, tmp_path)
    seqs = [j.append("write", {"path": f"f{i}"}, j.store_content(b"pushed")) for i in range(3)]
    j.commit()
    files = {p: p.read_bytes() for p in j.spool.iterdir()}
    j.acknowledge(seqs)
    for path, data in files.items():  # the kill landed before the unlinks: the files are still there
        path.write_bytes(data)
    j._db.close()  # no orderly close: nothing more is committed
    os.close(j._lock_fd)
    with Journal.for_vm(VM, tmp_path) as again:
        assert again.rescued == [] and again.pending() == []
        assert list(again.spool.iterdir()) == []


def test_held_bytes_follow_appends_acknowledgements_and_reopening(tmp_path):
    """What --journal-max-bytes bounds, counted without a scan on every close()."""
    with Journal.for_vm(VM, tmp_path) as j:
        seqs = [j.append("write", {"path": f"f{i}"}, j.store_content(b"x" * (100 + i))) for i in range(4)]
        j.append("mkdir", {"path": "d", "mode": 0o755})
        j.commit()
        assert j.held_bytes() == j.summary()["bytes"] == 406
        j.acknowledge(seqs[:2])
        assert j.held_bytes() == j.summary()["bytes"] == 205
    with Journal.for_vm(VM, tmp_path) as j:
        assert j.held_bytes() == 205
