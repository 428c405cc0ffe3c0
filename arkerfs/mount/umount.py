"""``arkerfs umount MOUNTPOINT``: push everything pending, unmount, wait for the daemon.

The daemon is found through its state file and sent SIGTERM, which makes it push pending writes,
unmount and exit; we wait for it and report from the result file it leaves. A pid whose
``/proc/<pid>/cmdline`` is not the daemon's is never signalled. A mount whose daemon is gone
(ENOTCONN) is cleaned with ``fusermount3 -u -z``.

Exit status: 0 unmounted with everything pushed; 1 otherwise, with the reason on stderr (and the
paths of rescue files holding data that could not be pushed).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time

EXIT_FAILED = 1


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("mountpoint", metavar="MOUNTPOINT")
    parser.add_argument("--timeout", type=float, default=900.0, metavar="SECONDS",
                        help="how long to wait for pending writes to be pushed (default 900)")


def run(args: argparse.Namespace) -> int:
    mountpoint = os.path.realpath(args.mountpoint)
    ok, message = unmount(mountpoint, timeout=args.timeout)
    print(f"arkerfs umount: {message}", file=sys.stdout if ok else sys.stderr)
    return 0 if ok else EXIT_FAILED


def unmount(mountpoint: str, *, timeout: float = 900.0) -> tuple[bool, str]:
    """Returns (success, one-line message)."""
    from arkerfs.mount import runtime

    state = runtime.read_state(mountpoint)
    entry = runtime.mount_entry(mountpoint)
    if state is not None and runtime.daemon_alive(state):
        os.kill(state.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while runtime.daemon_alive(state):
            if time.monotonic() > deadline:
                return False, f"the daemon (pid {state.pid}) is still pushing after {timeout:.0f} s; log: {state.log_file}"
            time.sleep(0.05)
        result = runtime.take_result(mountpoint)
        if runtime.mount_entry(mountpoint) is not None:
            return False, f"{mountpoint} is still mounted (busy?); log: {state.log_file}"
        if result is None:
            return False, f"the daemon exited without reporting; log: {state.log_file}"
        if result.rescued:
            paths = ", ".join(result.rescued)
            return False, f"unmounted, but {len(result.rescued)} file(s) could not be pushed; data kept in: {paths}"
        if not result.clean:
            return False, f"unmounted after an error; log: {state.log_file}"
        return True, f"unmounted {mountpoint}"
    if entry is None:
        runtime.remove_state(mountpoint)
        return False, f"{mountpoint} is not mounted"
    if entry[1] != "fuse.arkerfs":
        return False, f"{mountpoint} is not an arkerfs mount ({entry[1]})"
    done = runtime.lazy_unmount(mountpoint)
    runtime.remove_state(mountpoint)
    if done.returncode != 0:
        return False, f"the daemon is gone and fusermount3 -u -z failed: {done.stderr.strip()}"
    return True, f"the daemon was not running; removed the stale mount at {mountpoint} (writes not pushed before it died are lost)"
