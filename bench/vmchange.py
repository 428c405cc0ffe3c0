""""Change in the VM -> visible in the mount": how long a change made on the remote side takes
to show through a mount that has the directory and the file cached.

On a fresh mount that has listed the directory and read ``notes.txt`` (the workload's warm-up),
four changes are made on the remote side, one at a time, each straight to the backend and never
through the mount or its proxy (arkerfs: a ``run`` on the local server; sshfs: a shell on the
exported directory): a file created, ``notes.txt`` rewritten (another size), a file renamed, a
file removed. After each the mount is polled every 20 ms, as an application would see it (a
listing, a stat, a read), until the change shows; the clock starts once the change is made. The
sample is the slowest of the four; one not visible within ``TIMEOUT`` seconds fails the sample.
"""

from __future__ import annotations

import os
import shlex
import time
from pathlib import Path

TIMEOUT = 30.0  # sshfs keeps names and attributes 20 s by default (its cache_timeout)


def _read(path: Path) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def _changes(d: Path) -> list[tuple[str, str, object]]:
    """(label, shell run in the remote directory ``{dir}``, the check that it shows in ``d``)."""
    return [
        ("create", "echo new > {dir}/created.txt",
         lambda: "created.txt" in os.listdir(d) and _read(d / "created.txt") == b"new\n"),
        ("modify", "echo 'second version, longer' > {dir}/notes.txt",
         lambda: _read(d / "notes.txt") == b"second version, longer\n"),
        ("rename", "mv {dir}/other0.txt {dir}/renamed.txt",
         lambda: not os.path.exists(d / "other0.txt") and "renamed.txt" in os.listdir(d)),
        ("remove", "rm {dir}/other1.txt",
         lambda: not os.path.exists(d / "other1.txt") and "other1.txt" not in os.listdir(d)),
    ]


def measure(target, mnt: Path, remote_dir: str) -> dict:
    """The sample for one run: ``wall_s`` (the slowest change), ``changes`` (label -> seconds) and
    ``calls``, the mount's own (the server's count less what the changes themselves cost)."""
    seconds: dict[str, float] = {}
    made = 0
    sample: dict = {}
    for label, command, visible in _changes(mnt / remote_dir):
        target.vm_shell(command.format(dir=shlex.quote(target.vm_path(remote_dir))))
        made += 1
        start = time.perf_counter()
        while True:
            try:
                if visible():
                    break
            except OSError:
                pass
            if time.perf_counter() - start > TIMEOUT:
                sample["error"] = f"{label}: not visible within {TIMEOUT:g} s"
                break
            time.sleep(0.02)
        if "error" in sample:
            break
        seconds[label] = time.perf_counter() - start
    calls = target.calls()
    for route, count in target.vm_shell_calls.items():
        calls[route] = calls.get(route, 0) - made * count
    sample.update(wall_s=TIMEOUT if "error" in sample else max(seconds.values()), changes=seconds,
                  calls={route: count for route, count in calls.items() if count})
    return sample


MEASURES = {"vm-change": measure}
