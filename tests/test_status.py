"""`arkerfs status` and the `user.arkerfs.state` attribute, through real mounts.

The status numbers come from the daemon's own bookkeeping (no API call); they must agree with
what the local server counted on `/_local/stats`.
"""

from __future__ import annotations

import errno
import io
import json
import os
import subprocess
import sys

import pytest

from arkerfs.mount.progress import DrainProgress
from arkerfs.mount.status import query
from tests.conftest import WRITE_MODES
from tests.mountutil import mounted


def status(m, *args: str) -> subprocess.CompletedProcess:
    """`arkerfs status` as the user who made the mount would run it (same runtime dir)."""
    env = {**os.environ, "XDG_RUNTIME_DIR": os.path.dirname(m.path)}
    return subprocess.run([sys.executable, "-m", "arkerfs", "status", *args], env=env,
                          capture_output=True, text=True, timeout=30)


def status_json(m) -> dict:
    done = status(m, m.path, "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def sync(m) -> None:
    """`arkerfs sync MOUNTPOINT`: write-back's pushes done, so no call is in flight."""
    env = {**os.environ, "XDG_RUNTIME_DIR": os.path.dirname(m.path)}
    done = subprocess.run([sys.executable, "-m", "arkerfs", "sync", m.path], env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def status_now(m, monkeypatch) -> dict:
    """In-process query: a child process would inherit (and at exec close) open files, and on
    FUSE every close of a descriptor is a flush that pushes them."""
    monkeypatch.setenv("XDG_RUNTIME_DIR", os.path.dirname(m.path))
    return query(m.path)


@pytest.mark.parametrize("mode", list(WRITE_MODES))
def test_calls_match_the_servers_stats(server, control, api, mode):
    vm = api.fork()
    control.reset_stats()  # from here on, every call the server sees is the mount's
    with mounted(server, *WRITE_MODES[mode], "--no-watch", vm_id=vm) as m:
        os.mkdir(m.p("d"))
        for i in range(5):
            with open(m.p("d", f"f{i}"), "wb") as f:
                f.write(b"x" * (i + 1) * 1000)
        with open(m.p("big"), "wb") as f:  # over the 64 KiB inline limit of the test server
            f.write(os.urandom(300_000))
        assert sorted(os.listdir(m.p("d"))) == [f"f{i}" for i in range(5)]
        with open(m.p("big"), "rb") as f:
            assert len(f.read()) == 300_000
        os.rename(m.p("d", "f0"), m.p("d", "g0"))
        sync(m)

        snap = status_json(m)
        served = control.nonzero_calls()
        reported = {kind: v["calls"] for kind, v in snap["api"]["calls"].items()}
        assert reported == served
        assert snap["api"]["total"] == control.total_calls()
        for v in snap["api"]["calls"].values():
            assert 0 < v["p50_ms"] <= v["p95_ms"] <= v["p99_ms"]
        assert snap["vm_id"] == vm and snap["mode"] == mode and snap["state"] == "serving"
        assert snap["pending"]["files"] == 0 and snap["last_error"] is None
        assert snap["caches"]["metadata"]["hits"] > 0


@pytest.mark.parametrize("mode", list(WRITE_MODES))
def test_human_status_lists_every_live_mount(server, control, mode):
    with mounted(server, *WRITE_MODES[mode]) as m:
        done = status(m)  # no mountpoint: every live mount in this runtime dir
        assert done.returncode == 0, done.stderr
        assert m.path in done.stdout and m.vm_id in done.stdout
        assert mode in done.stdout and "api calls" in done.stdout
    gone = status(m, m.path)
    assert gone.returncode == 1 and "not mounted" in gone.stderr


def test_state_attribute_follows_a_file_through_pending_failed_and_clean(server, control, monkeypatch):
    """Write-through: fsync and close push (write-back: the test below)."""
    with mounted(server, "--write-through", "--outage-timeout", "0") as m:
        m.allow_log("giving up|failed|could not|no answer from the API")
        path = m.p("notes.txt")
        with open(path, "wb", buffering=0) as f:
            assert os.getxattr(path, "user.arkerfs.state") == b"clean"  # empty new file: nothing to push
            f.write(b"draft")
            assert os.getxattr(path, "user.arkerfs.state") == b"pending"
            pending = status_now(m, monkeypatch)["pending"]
            assert pending["files"] == 1 and pending["bytes"] == 5 and pending["oldest_age_s"] >= 0
            control.set_faults(fail_rate=1.0, fail_status=503)
            with pytest.raises(OSError) as failed:
                os.fsync(f.fileno())
            assert failed.value.errno == errno.EIO
            snap = status_now(m, monkeypatch)  # asks the daemon, not the API
            assert snap["pending"]["failed"] == 1
            assert snap["last_error"] is not None and snap["last_error"]["level"] in ("WARNING", "ERROR")
            control.clear_faults()  # (the kernel checks attributes before a getxattr)
            assert os.getxattr(f.fileno(), "user.arkerfs.state") == b"failed"  # until the next push
        assert os.getxattr(path, "user.arkerfs.state") == b"clean"  # close pushed it
        assert status_json(m)["pending"]["files"] == 0


def test_state_attribute_in_write_back_stays_failed_until_arkerfs_sync_pushes_it(server, control, monkeypatch):
    """Write-back: the file is pending from its creation until a push lands; a push the VM
    refuses fails fsync (EIO), marks the file failed, and keeps it (closing it changes nothing);
    `arkerfs sync` tries again and the file is clean."""
    with mounted(server, "--write-back") as m:
        m.allow_log("could not push|gave up|failed|refused|forbidden")
        path = m.p("notes.txt")
        with open(path, "wb", buffering=0) as f:
            assert os.getxattr(path, "user.arkerfs.state") == b"pending"  # the create is not in the VM yet
            f.write(b"draft")
            assert os.getxattr(path, "user.arkerfs.state") == b"pending"
            assert status_now(m, monkeypatch)["pending"]["bytes"] == 5
            control.set_faults(fail_rate=1.0, fail_status=403)  # a refusal: not retried
            with pytest.raises(OSError) as failed:
                os.fsync(f.fileno())
            assert failed.value.errno == errno.EIO
            snap = status_now(m, monkeypatch)
            assert snap["pending"]["failed"] == 1 and snap["pending"]["bytes"] == 5
            assert snap["last_error"] is not None and "notes.txt" in snap["last_error"]["message"]
            control.clear_faults()
            assert os.getxattr(f.fileno(), "user.arkerfs.state") == b"failed"
        assert os.getxattr(path, "user.arkerfs.state") == b"failed"  # kept in the journal
        sync(m)
        assert os.getxattr(path, "user.arkerfs.state") == b"clean"
        assert status_json(m)["pending"] == {"files": 0, "bytes": 0, "oldest_age_s": None, "pushing": 0,
                                             "failed": 0}


def test_pending_counts_files_in_write_back(server, control, monkeypatch):
    with mounted(server, "--write-back") as m:
        with open(m.p("one"), "wb", buffering=0) as f:
            f.write(b"draft")
            assert status_now(m, monkeypatch)["pending"]["files"] == 1


@pytest.mark.parametrize("mode", list(WRITE_MODES))
def test_state_attribute_is_never_stored_or_listed(server, control, mode):
    with mounted(server, *WRITE_MODES[mode]) as m:
        path = m.p("a")
        with open(path, "wb") as f:
            f.write(b"1")
        assert "user.arkerfs.state" not in os.listxattr(path)  # cp -a / rsync -X never copy it
        for change in (lambda: os.setxattr(path, "user.arkerfs.state", b"clean"),
                       lambda: os.removexattr(path, "user.arkerfs.state")):
            with pytest.raises(OSError) as refused:
                change()
            assert refused.value.errno == errno.EPERM
        if m.write_back:
            sync(m)  # until then the home is pending too: its new entry is not in the VM yet
        assert os.getxattr(m.path, "user.arkerfs.state") == b"clean"  # directories too


def test_plain_progress_lines_show_a_drain_to_zero():
    out = io.StringIO()  # not a terminal: plain lines, one per change (rate-limited), the last at 0
    progress = DrainProgress("pushing", out)
    for files in (3, 3, 2, 0):
        progress.update({"files": files, "bytes": files * 1024, "oldest_age_s": 1.0, "pushing": 0, "failed": 0})
    progress.close()
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("pushing: 3 file(s), 3.0 KiB pending")
    assert lines[-1].startswith("pushing: 0 file(s)")
