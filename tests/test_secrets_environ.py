"""The API key is in no process's environment or argv: not the daemon's, not its children's.

``/proc/<pid>/environ`` shows the environment a process was *started* with, whatever it later
removes from ``os.environ``; so a mount started with ``ARKER_API_KEY`` must hand the key over
another way (see arkerfs/mount/keypass.py).
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from pathlib import Path

from arkerfs.mount import runtime
from tests.mountutil import Api, mounted
from tests.test_crash_daemon import arkerfs


def family(pid: int) -> list[int]:
    """``pid`` and all its descendants."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += children.get(p, [])
    return out


def assert_key_nowhere(pid: int, key: str) -> None:
    pids = family(pid)
    for p in pids:
        for what in ("environ", "cmdline"):
            try:
                text = Path(f"/proc/{p}/{what}").read_bytes()
            except OSError:
                continue
            assert key.encode() not in text, (p, what, pids)


def test_foreground_mount_started_with_the_key_in_its_environment(server):
    with mounted(server) as m:  # mountutil passes the key as ARKER_API_KEY
        with open(m.p("x"), "w") as f:
            f.write("works")
        assert_key_nowhere(m.proc.pid, server.api_key)


def test_detached_mount_started_with_the_key_in_its_environment(server):
    vm = Api(server).fork()
    workdir = tempfile.mkdtemp(prefix="arkerfs-environ-")
    mnt = os.path.realpath(os.path.join(workdir, "mnt"))
    os.mkdir(mnt)
    env = {k: v for k, v in os.environ.items() if not k.startswith("ARKER_")}
    env |= {"XDG_RUNTIME_DIR": workdir, "XDG_CACHE_HOME": workdir, "XDG_STATE_HOME": workdir,
            "ARKER_API_KEY": server.api_key}
    try:
        done = arkerfs("mount", "--base-url", server.base_url, vm, mnt, env=env)
        assert done.returncode == 0, done.stderr
        with open(os.path.join(workdir, "arkerfs", f"{runtime.mount_key(mnt)}.json")) as state:
            pid = json.load(state)["pid"]
        with open(os.path.join(mnt, "x"), "w") as f:
            f.write("works")
        assert_key_nowhere(pid, server.api_key)
        assert arkerfs("umount", mnt, env=env).returncode == 0
    finally:
        if runtime.mount_entry(mnt) is not None:
            subprocess.run(["fusermount3", "-u", "-z", mnt])
        subprocess.run(["rm", "-rf", workdir])
    assert runtime.mount_entry(mnt) is None
