"""What a crashed daemon leaves in its spool is found, kept as a rescue file, and reported.

A write of more than 4 MiB spills into a named ``spool/<hash>/write-*`` file; ``kill -9``
leaves it behind. ``arkerfs umount`` of the stale mount, or the next ``arkerfs mount``, moves
it to ``<spool>/rescue/`` and says so in one line; a live daemon's spool is never touched.
Write-back keeps a file's writes in the same spool until its close() records them in the journal,
so the same holds there.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import tempfile

import pytest

from arkerfs.mount import runtime
from tests.conftest import WRITE_MODES
from tests.mountutil import Api
from tests.test_crash_daemon import arkerfs, wait_enotconn

MB = 1024 * 1024


def spool_files(spool: str) -> list[str]:
    return sorted(n for n in os.listdir(spool) if n.startswith("write-"))


# write-back once (the spool is the same; its next mount also replays the journal), to keep it lean
@pytest.mark.parametrize("cleaner,mode", [("umount", "write-through"), ("next mount", "write-through"),
                                          ("next mount", "write-back")])
def test_a_killed_daemon_s_spool_file_becomes_a_reported_rescue_file(server, cleaner, mode):
    api = Api(server)
    vm = api.fork()
    other_vm = api.fork()  # a VM has one write-back journal: one daemon at a time
    api.write_file(vm, "/home/user/existing", b"old content\n")
    workdir = tempfile.mkdtemp(prefix="arkerfs-leftovers-")
    mnt = os.path.realpath(os.path.join(workdir, "mnt"))
    os.mkdir(mnt)
    other = os.path.realpath(os.path.join(workdir, "other"))
    os.mkdir(other)
    env = {k: v for k, v in os.environ.items() if not k.startswith("ARKER_")}
    env |= {"XDG_RUNTIME_DIR": workdir, "XDG_CACHE_HOME": workdir, "XDG_STATE_HOME": workdir,
            "ARKER_API_KEY": server.api_key}
    spool = os.path.join(workdir, "arkerfs", "spool", runtime.mount_key(mnt))
    data = random.Random(5).randbytes(28 * MB)
    try:
        done = arkerfs("mount", *WRITE_MODES[mode], "--base-url", server.base_url, vm, mnt, env=env)
        assert done.returncode == 0, done.stderr
        # a second, live mount sharing that spool, with a pending write: never touched
        done = arkerfs("mount", *WRITE_MODES[mode], "--base-url", server.base_url, "--spool-dir", spool,
                       other_vm, other, env=env)
        assert done.returncode == 0, done.stderr
        live = open(os.path.join(other, "live-pending"), "wb")
        live.write(os.urandom(5 * MB))
        live.flush()
        (live_file,) = spool_files(spool)

        f = open(os.path.join(mnt, "existing"), "r+b")
        f.write(data)
        f.flush()  # 28 MB in the daemon's spool, not uploaded: the file is still open
        with open(os.path.join(workdir, "arkerfs", f"{runtime.mount_key(mnt)}.json")) as state:
            pid = json.load(state)["pid"]
        (crash_file,) = set(spool_files(spool)) - {live_file}
        os.kill(pid, signal.SIGKILL)
        wait_enotconn(mnt)
        try:
            f.close()
        except OSError:
            pass
        assert spool_files(spool) == sorted([live_file, crash_file])  # the crash left its file

        if cleaner == "umount":
            done = arkerfs("umount", mnt, env=env)
            out = done.stdout + done.stderr
        else:
            done = arkerfs("mount", *WRITE_MODES[mode], "--base-url", server.base_url, vm, mnt, env=env)
            out = done.stderr
            assert done.returncode == 0, done.stderr
        lines = [line for line in out.splitlines() if "spool" in line]
        assert len(lines) == 1, out
        assert "crashed" in lines[0] and "rescue" in lines[0], lines[0]
        assert spool_files(spool) == [live_file]  # the live mount's spool file is intact
        rescued = os.listdir(os.path.join(spool, "rescue"))
        assert len(rescued) == 1 and rescued[0] in lines[0], (rescued, lines[0])
        assert rescued[0].startswith(crash_file), rescued  # named after what it was
        with open(os.path.join(spool, "rescue", rescued[0]), "rb") as saved:
            assert saved.read() == data
        live.close()
        assert api.read_file(vm, "/home/user/existing") == b"old content\n"
        if cleaner == "next mount":
            assert arkerfs("umount", mnt, env=env).returncode == 0
        assert arkerfs("umount", other, env=env).returncode == 0
    finally:
        for path in (mnt, other):
            if runtime.mount_entry(path) is not None:
                subprocess.run(["fusermount3", "-u", "-z", path])
        subprocess.run(["rm", "-rf", workdir])
    assert runtime.mount_entry(mnt) is None and runtime.mount_entry(other) is None
