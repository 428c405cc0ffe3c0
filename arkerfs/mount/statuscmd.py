"""``arkerfs status [MOUNTPOINT] [--json] [--watch]``: what each live mount is doing.

Reads the daemons' private status sockets (``status``); never touches a mounted tree and never
calls the API, so it answers at once even when a VM does not. Without a MOUNTPOINT it also
lists the write-back journals of VMs no daemon has mounted that still hold changes (left by a
crash or by an unmount that gave up), one line each (not in ``--json``).

Exit status: 0 with at least one answer; 1 when a named mount (or, without one, every mount)
could not be asked.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from arkerfs import exitcodes
from arkerfs.mount.progress import human_bytes, pending_line

EXIT_FAILED = exitcodes.FAILED


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("mountpoint", metavar="MOUNTPOINT", nargs="?",
                        help="one mount (default: every live arkerfs mount of this user)")
    parser.add_argument("--json", action="store_true", help="print the raw snapshots as JSON")
    parser.add_argument("--watch", nargs="?", type=float, const=1.0, metavar="SECONDS",
                        help="refresh every SECONDS (default 1) until interrupted")


def run(args: argparse.Namespace) -> int:
    from arkerfs.mount import runtime

    mountpoints = [os.path.realpath(args.mountpoint)] if args.mountpoint else live_mountpoints()
    if not mountpoints:
        for journal in [] if args.json else left_journals():
            print(journal_line(journal))
        print("arkerfs status: no arkerfs mount is running", file=sys.stderr)
        return EXIT_FAILED
    if args.mountpoint and runtime.mount_entry(mountpoints[0]) is None:
        print(f"arkerfs status: {mountpoints[0]} is not mounted", file=sys.stderr)
        return EXIT_FAILED
    while True:
        code = _show(mountpoints, as_json=args.json, clear=args.watch is not None and sys.stdout.isatty(),
                     journals=not args.mountpoint)
        if args.watch is None:
            return code
        time.sleep(max(args.watch, 0.1))


def live_mountpoints() -> list[str]:
    """Mount points whose daemon is alive, from the runtime state files."""
    from arkerfs.mount import runtime

    found = []
    for path in sorted(runtime.runtime_dir().glob("*.json")):
        if path.name.endswith(".result.json"):
            continue
        try:
            state = runtime.MountState(**json.loads(path.read_text()))
        except (OSError, ValueError, TypeError):
            continue
        if runtime.daemon_alive(state):
            found.append(state.mountpoint)
    return found


def left_journals() -> list:
    """Write-back journals of VMs no daemon has mounted that still hold changes."""
    from arkerfs.writeback.journal import left_behind

    return left_behind()


def journal_line(j) -> str:
    since = "" if j.oldest is None else time.strftime(" since %Y-%m-%d %H:%M:%S", time.localtime(j.oldest))
    failed = f", {j.failed} refused by the VM" if j.failed else ""
    return (f"VM {j.vm_id} (not mounted): {j.changes} change(s), {human_bytes(j.bytes)} not in the VM"
            f"{since}{failed}; pushed by its next mount (journal {j.directory})")


def _show(mountpoints: list[str], *, as_json: bool, clear: bool, journals: bool = False) -> int:
    from arkerfs.mount.status import StatusUnavailable, query

    answers, code = [], 0
    for mountpoint in mountpoints:
        try:
            answers.append(query(mountpoint))
        except StatusUnavailable as exc:
            print(f"arkerfs status: {exc}", file=sys.stderr)
            code = EXIT_FAILED
    if clear:
        print("\x1b[H\x1b[2J", end="")
    if as_json:
        print(json.dumps(answers if len(mountpoints) > 1 or not answers else answers[0], indent=2))
    else:
        blocks = [render(a) for a in answers]
        if journals:
            blocks += [journal_line(j) for j in left_journals()]
        print("\n\n".join(blocks))
    sys.stdout.flush()
    return code if answers else EXIT_FAILED


def render(s: dict) -> str:
    """A snapshot as a few aligned lines for people."""
    lines = [f"{s['mountpoint']}  arkerfs:{s['vm']} ({s['vm_id']})  {s['mode']}  "
             f"up {_duration(s['uptime_s'])}  pid {s['pid']}"]

    def row(label: str, text: str) -> None:
        lines.append(f"  {label:<11}{text}")

    row("server", s["server"])
    row("pending", pending_line(s["pending"]))
    conflicts = s.get("conflicts")
    if conflicts is None:
        row("conflicts", "none (the mount is not serving yet)")
    else:
        row("conflicts", str(conflicts["count"]) + "".join(
            f"\n    {c['path']}: local version kept as {c['kept']}" for c in conflicts["recent"]))
    watcher = s["watcher"]
    row("watcher", f"{watcher['state']} ({watcher['why']}); entries kept {watcher['ttl_s']:g} s")
    api = s["api"]
    kinds = ", ".join(f"{kind} {v['calls']}" + (f" ({v['failed']} failed)" if v["failed"] else "")
                      + f" p50 {v['p50_ms']:g}/p95 {v['p95_ms']:g} ms" for kind, v in api["calls"].items())
    row("api calls", f"{api['total']}" + (f": {kinds}" if kinds else ""))
    caches = ", ".join(f"{name} {_rate(v)}" for name, v in s["caches"].items()) or "unused"
    row("caches", caches)
    row("bytes", f"{human_bytes(api['bytes_up'])} up, {human_bytes(api['bytes_down'])} down")
    last = s.get("last_error")
    row("last error", "none" if last is None else
        f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(last['time']))} {last['level']} {last['message']}")
    if s.get("rescued"):
        row("rescued", ", ".join(s["rescued"]))
    return "\n".join(lines)


def _rate(v: dict) -> str:
    total = v["hits"] + v["misses"]
    return f"{v['hit_rate'] * 100:.0f}% hits of {total}" if total else "unused"


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
