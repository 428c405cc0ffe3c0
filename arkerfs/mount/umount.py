"""``arkerfs umount [--timeout S] [--force] MOUNTPOINT``: push everything pending, unmount, wait.

Never touches the mounted tree (a stat there would wait on an API that may not answer): the
mount point is found in the mount table and the daemon through its state file (pid + cmdline, so
a reused pid is never signalled). SIGTERM makes the daemon push pending writes, unmount and
exit; we wait up to ``--timeout`` and report from the result file it leaves. On timeout we say
which files it is still pushing and exit 7, leaving the mount alone — unless ``--force``:
then the mount is detached at once (``fusermount3 -u -z``), the daemon is told to give up
(SIGUSR2: it saves every unsent buffer to a rescue file and exits) and, if it has not exited
``GIVE_UP_WAIT`` s later, killed; what it left in its spool becomes rescue files too
(arkerfs/mount/leftovers.py). A mount whose daemon is gone (ENOTCONN) is cleaned the same way.

Exit status (arkerfs/exitcodes.py): 0 unmounted with everything pushed; 7 data left pending (kept
in rescue files, named on stderr; still pushing at ``--timeout``; or lost to ``--force``); 1 any
other failure (not mounted, still busy, no report from the daemon), with the reason on stderr.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time

from arkerfs import exitcodes

GIVE_UP_WAIT = 10.0  # seconds a forced daemon gets to save its buffers before SIGKILL


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("mountpoint", metavar="MOUNTPOINT")
    parser.add_argument("--timeout", type=float, default=900.0, metavar="SECONDS",
                        help="how long to wait for pending writes to be pushed (default 900)")
    parser.add_argument("--force", action="store_true",
                        help="after --timeout, detach the mount (fusermount3 -u -z) and stop the daemon; "
                             "unsent data goes to rescue files")


def run(args: argparse.Namespace) -> int:
    from arkerfs.mount import runtime

    mountpoint = runtime.resolve_mountpoint(args.mountpoint)
    code, message = unmount(mountpoint, timeout=args.timeout, force=args.force)
    print(f"arkerfs umount: {message}", file=sys.stdout if code == exitcodes.OK else sys.stderr)
    return code


def unmount(mountpoint: str, *, timeout: float = 900.0, force: bool = False) -> tuple[int, str]:
    """Returns (exit status, message: one line, plus one about crash leftovers if any)."""
    from arkerfs.mount import runtime

    state = runtime.read_state(mountpoint)
    entry = runtime.mount_entry(mountpoint)
    if state is not None and runtime.daemon_alive(state):
        return _stop_daemon(mountpoint, state, timeout, force)
    if entry is None:
        runtime.remove_state(mountpoint)
        return exitcodes.FAILED, f"{mountpoint} is not mounted"
    if entry[1] != "fuse.arkerfs":
        return exitcodes.FAILED, f"{mountpoint} is not an arkerfs mount ({entry[1]})"
    done = runtime.lazy_unmount(mountpoint)
    runtime.remove_state(mountpoint)
    runtime.clear_pending(mountpoint)
    note = _leftovers(state, mountpoint)
    if done.returncode != 0:
        return exitcodes.FAILED, f"the daemon is gone and fusermount3 -u -z failed: {done.stderr.strip()}" + note
    return exitcodes.OK, (f"the daemon was not running; removed the stale mount at {mountpoint} "
                  "(writes no close() had returned for are lost; a write-back journal is pushed by "
                  "the next mount of that VM)") + note


def _stop_daemon(mountpoint: str, state, timeout: float, force: bool) -> tuple[int, str]:
    from arkerfs.mount import runtime

    os.kill(state.pid, signal.SIGTERM)
    if not _wait_gone(state, timeout, show_drain=mountpoint):
        pending = runtime.read_pending(mountpoint)
        waiting = (f"{len(pending)} file(s) not pushed yet: {', '.join(pending)}" if pending
                   else "it has not finished unmounting")
        if not force:
            code = exitcodes.PENDING if pending else exitcodes.FAILED
            return code, (f"the daemon (pid {state.pid}) is still pushing after {timeout:g} s: {waiting}; "
                           f"log: {state.log_file}; to give up and keep unsent data in rescue files: "
                           f"arkerfs umount --force {mountpoint}")
        return _force(mountpoint, state, waiting)
    return _report(mountpoint, state, runtime.take_result(mountpoint))


def _force(mountpoint: str, state, waiting: str) -> tuple[int, str]:
    from arkerfs.mount import runtime

    detached = runtime.lazy_unmount(mountpoint)  # new accesses no longer reach the daemon
    os.kill(state.pid, signal.SIGUSR2)  # give up pushing: rescue every buffer, then exit
    killed = not _wait_gone(state, GIVE_UP_WAIT)
    if killed:
        os.kill(state.pid, signal.SIGKILL)
        _wait_gone(state, GIVE_UP_WAIT)
    runtime.remove_state(mountpoint)
    runtime.clear_pending(mountpoint)
    result = runtime.take_result(mountpoint)
    note = _leftovers(state, mountpoint)
    if runtime.mount_entry(mountpoint) is not None:
        return exitcodes.FAILED, f"forced: {mountpoint} is still mounted (fusermount3 -u -z: {detached.stderr.strip()})" + note
    if killed or result is None:
        return exitcodes.PENDING, (f"forced: detached {mountpoint} and killed the daemon (pid {state.pid}) while {waiting}; "
                       f"data it held in memory is lost; log: {state.log_file}") + note
    code, message = _report(mountpoint, state, result)
    return (exitcodes.FAILED if code == exitcodes.OK else code), f"forced: {message}"


def _report(mountpoint: str, state, result) -> tuple[int, str]:
    from arkerfs.mount import runtime

    if runtime.mount_entry(mountpoint) is not None:
        return exitcodes.FAILED, f"{mountpoint} is still mounted (busy?); log: {state.log_file}"
    if result is None:
        return exitcodes.FAILED, f"the daemon exited without reporting; log: {state.log_file}"
    if result.rescued:
        paths = ", ".join(result.rescued)
        return exitcodes.PENDING, f"unmounted, but {len(result.rescued)} file(s) could not be pushed; data kept in: {paths}"
    if not result.clean:
        return exitcodes.FAILED, f"unmounted after an error; log: {state.log_file}"
    return exitcodes.OK, f"unmounted {mountpoint}"


def _wait_gone(state, timeout: float, *, show_drain: str | None = None) -> bool:
    """Wait for the daemon to exit; with ``show_drain`` (its mount point), show its pending
    pushes draining (asked of its status socket, see ``progress``) so a long wait never looks hung."""
    from arkerfs.mount import runtime
    from arkerfs.mount.progress import follow, pending_of

    deadline = time.monotonic() + timeout

    def over() -> bool:
        return not runtime.daemon_alive(state) or time.monotonic() > deadline

    if show_drain is None:
        while not over():
            time.sleep(0.05)
    else:
        follow(pending_of(show_drain), over, "arkerfs umount: pushing")
    return not runtime.daemon_alive(state)


def _leftovers(state, mountpoint: str) -> str:
    """The dead daemon's spool, scanned: one more line if it left something."""
    from arkerfs.mount import leftovers, runtime

    spool = state.spool_dir if state is not None else str(runtime.default_spool_dir(mountpoint))
    note = leftovers.collect(spool)
    return f"\narkerfs umount: {note}" if note else ""
