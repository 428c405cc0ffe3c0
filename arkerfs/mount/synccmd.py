"""``arkerfs sync [MOUNTPOINT]``: wait until everything pending is in the VM.

Asks each daemon (one mount, or every live mount of this user) over its private socket to push
everything pending now (``sync``, see ``status``), and waits, showing the pending pushes draining
(``progress``: a bar on a terminal, plain lines otherwise) from the daemon's ``status`` answers.
Never touches the mounted tree. Ctrl-C stops waiting, not the pushes the daemon started.

Without a MOUNTPOINT it also names each write-back journal of a VM no daemon has mounted that
still holds changes (a crash left them): those cannot be pushed from here, only by the next
mount of that VM.

Exit status (arkerfs/exitcodes.py): 0 once everything pending is in the VM (also when no mount is
running and no journal holds changes: nothing is pending); 7 when something could not be pushed
(each file, or each unmounted VM's journal, named on stderr, with why; it stays pending, and is
retried by the next sync, its next close, the unmount or the VM's next mount); 1 when a mount is
not there or its daemon does not answer.
"""

from __future__ import annotations

import argparse
import os
import sys

from arkerfs import exitcodes


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("mountpoint", metavar="MOUNTPOINT", nargs="?",
                        help="one mount (default: every live arkerfs mount of this user)")


def run(args: argparse.Namespace) -> int:
    from arkerfs.mount import runtime
    from arkerfs.mount.status import StatusUnavailable, SyncRequest
    from arkerfs.mount.statuscmd import live_mountpoints

    if args.mountpoint:
        mountpoints = [os.path.realpath(args.mountpoint)]
        if runtime.mount_entry(mountpoints[0]) is None:
            print(f"arkerfs sync: {mountpoints[0]} is not mounted", file=sys.stderr)
            return exitcodes.FAILED
    else:
        mountpoints = live_mountpoints()
    left = exitcodes.OK if args.mountpoint else _left_journals()
    if not mountpoints:  # (and no MOUNTPOINT named)
        if left == exitcodes.OK:
            print("arkerfs sync: no arkerfs mount is running; nothing is pending", file=sys.stderr)
        return left
    codes = [left]
    requests = []
    try:
        for mountpoint in mountpoints:  # all daemons push at once; we then wait for each in turn
            try:
                requests.append(SyncRequest(mountpoint))
            except StatusUnavailable as exc:
                print(f"arkerfs sync: {exc}", file=sys.stderr)
                codes.append(exitcodes.FAILED)
        for request in requests:
            codes.append(_wait(request))
    finally:
        for request in requests:
            request.close()
    return max(codes, key=_severity, default=exitcodes.OK)


def _left_journals() -> int:
    """Name each journal of a VM no daemon has mounted that still holds changes: they cannot be
    pushed from here (PENDING); the next mount of that VM pushes them."""
    from arkerfs.mount.statuscmd import journal_line, left_journals

    journals = left_journals()
    for journal in journals:
        print(f"arkerfs sync: {journal_line(journal)}", file=sys.stderr)
    return exitcodes.PENDING if journals else exitcodes.OK


def _severity(code: int) -> int:
    """Data left pending says more than a mount that could not be asked."""
    return {exitcodes.OK: 0, exitcodes.FAILED: 1, exitcodes.PENDING: 2}[code]


def _wait(request) -> int:
    """Wait for one daemon's answer, showing its pushes draining; print the outcome."""
    from arkerfs.mount.progress import follow, pending_of
    from arkerfs.mount.status import StatusUnavailable

    mountpoint = request.mountpoint
    answered: list[dict] = []

    def done() -> bool:
        answer = request.answer(wait=0.1)
        if answer is not None:
            answered.append(answer)
        return bool(answered)

    try:
        follow(pending_of(mountpoint), done, f"arkerfs sync: {mountpoint}", check_every=0.0)
    except StatusUnavailable as exc:
        print(f"arkerfs sync: {exc}; what it had pending may not be in the VM", file=sys.stderr)
        return exitcodes.FAILED
    answer = answered[0]
    if answer.get("ok"):
        print(f"arkerfs sync: everything pending on {mountpoint} is in the VM")
        return exitcodes.OK
    failed = answer.get("failed") or []
    for item in failed:
        print(f"arkerfs sync: could not push {local_path(mountpoint, item['path'])}: {item['error']}",
              file=sys.stderr)
    print(f"arkerfs sync: {len(failed)} file(s) on {mountpoint} could not be pushed; they stay pending "
          "(retried by the next sync, their next close and the unmount)", file=sys.stderr)
    return exitcodes.PENDING


def local_path(mountpoint: str, vm_path: str) -> str:
    """``/home/user/a/b`` → ``MOUNTPOINT/a/b``; anything else (a file no longer reachable by
    name) as the daemon said it."""
    from arkerfs.protocol import HOME

    if vm_path == HOME:
        return mountpoint
    if vm_path.startswith(HOME + "/"):
        return os.path.join(mountpoint, vm_path[len(HOME) + 1:])
    return vm_path
