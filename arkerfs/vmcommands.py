"""VM commands over the SDK: ``arkerfs vms``, ``arkerfs fork SRC``, ``arkerfs rm VM``.

Each is a ``Command(add_arguments, run)`` registered in arkerfs/cli.py. Keys and URLs come from
the shared connection options (arkerfs/connopts.py); failures are one line on stderr and an exit
status from arkerfs/exitcodes.py.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Awaitable, Callable
from typing import NamedTuple

from arkerfs import connopts, exitcodes

SORT_KEYS = ("-created_at", "created_at", "-region", "region")  # what the list route accepts
MAX_LIMIT = 100  # the list route's largest page


class Command(NamedTuple):
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


def _call(name: str, args: argparse.Namespace, work: Callable[..., Awaitable[int]]) -> int:
    """Run ``work(arker)`` under trio; turn every expected failure into one line + exit status."""
    import logging

    import trio

    from arkerfs.client import ArkerError

    # The SDK logs retries at WARNING; here the final one-line error says it all.
    logging.getLogger().addHandler(logging.NullHandler())

    async def main() -> int:
        async with connopts.open_arker(args) as arker:
            return await work(arker)

    try:
        return trio.run(main)
    except connopts.ConnectionOptionsError as exc:
        print(f"arkerfs {name}: {exc}", file=sys.stderr)
        return exc.exit_code
    except ArkerError as exc:
        print(f"arkerfs {name}: {_printable(exc.message) or exc.code}", file=sys.stderr)
        return exitcodes.for_api_error(exc)


def _printable(text: str | None) -> str:
    """A VM name or message made safe for one terminal line: control characters escaped."""
    if text is None:
        return ""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


# -- arkerfs vms ------------------------------------------------------------------------------------
def _positive_limit(text: str) -> int:
    value = int(text)
    if not 1 <= value <= MAX_LIMIT:
        raise argparse.ArgumentTypeError(f"must be from 1 to {MAX_LIMIT}")
    return value


def _offset(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError("must not be negative")
    return value


def add_vms_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--limit", type=_positive_limit, default=25, metavar="N",
                        help=f"at most N VMs (1-{MAX_LIMIT}, default 25)")
    parser.add_argument("--offset", type=_offset, default=0, metavar="N", help="skip the first N VMs")
    parser.add_argument("--q", metavar="TEXT", help="only VMs whose name contains TEXT")
    parser.add_argument("--sort", choices=SORT_KEYS, default="-created_at", metavar="KEY",
                        help="created_at, -created_at (default: newest first), region or -region; "
                             "write a leading dash as --sort=-region")
    parser.add_argument("--json", action="store_true", help='print {"items": [...], "total": N} as JSON')
    connopts.add_arguments(parser)


def run_vms(args: argparse.Namespace) -> int:
    async def work(arker) -> int:
        page = await arker.list(limit=args.limit, offset=args.offset, q=args.q, sort=args.sort)
        if args.json:
            items = [{"vm_id": vm.vm_id, "name": vm.name, "base_image": vm.base_image, "region": vm.region,
                      "created_at": vm.created_at} for vm in page.items]
            print(json.dumps({"items": items, "total": page.total}, indent=2))
        else:
            _print_table(page, args.offset)
        return exitcodes.OK

    return _call("vms", args, work)


def _print_table(page, offset: int) -> None:
    rows = [("ID", "NAME", "REGION", "CREATED")]
    rows += [(vm.vm_id, _printable(vm.name) or "-", vm.region, vm.created_at) for vm in page.items]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
    shown_to = offset + len(page.items)
    if not page.items:
        print(f"(no VMs{' at this offset' if offset else ''}; {page.total} in all)")
    elif offset or shown_to < page.total:
        print(f"({offset + 1}-{shown_to} of {page.total}; see --offset)")


vms = Command(add_vms_arguments, run_vms)


# -- arkerfs fork -----------------------------------------------------------------------------------
def add_fork_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", metavar="SRC", help="the VM to copy: an id, a name, or a template such as arkuntu")
    parser.add_argument("--name", help="the new VM's name")
    parser.add_argument("--json", action="store_true", help='print {"vm_id": ..., "name": ...} as JSON')
    connopts.add_arguments(parser)


def run_fork(args: argparse.Namespace) -> int:
    async def work(arker) -> int:
        # A name is sent as is (the fork-by-name route resolves it): one call, no ambiguity window.
        child = await arker.vm(args.source).fork(name=args.name)
        if args.json:
            print(json.dumps({"vm_id": child.id, "name": args.name}))
        else:
            print(f"{child.id}\t{_printable(args.name) if args.name is not None else '-'}")
        return exitcodes.OK

    return _call("fork", args, work)


fork = Command(add_fork_arguments, run_fork)


# -- arkerfs rm -------------------------------------------------------------------------------------
def add_rm_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("vm", metavar="VM", help="the VM to delete: an id or a name")
    parser.add_argument("--yes", "-y", action="store_true",
                        help="do not ask (required when stdin is not a terminal)")
    connopts.add_arguments(parser)


def run_rm(args: argparse.Namespace) -> int:
    if not args.yes and not sys.stdin.isatty():
        print("arkerfs rm: refusing to delete without confirmation (stdin is not a terminal); pass --yes",
              file=sys.stderr)
        return exitcodes.USAGE

    async def work(arker) -> int:
        import trio

        vm = await arker.resolve(args.vm)
        label = vm.id if vm.id == args.vm else f"{_printable(args.vm)} ({vm.id})"
        if not args.yes and not await trio.to_thread.run_sync(_confirm, f"delete VM {label}? This cannot be undone. [y/N] "):
            print("arkerfs rm: not deleted", file=sys.stderr)
            return exitcodes.FAILED
        await vm.delete()
        print(f"deleted {label}")
        return exitcodes.OK

    return _call("rm", args, work)


def _confirm(prompt: str) -> bool:
    print(prompt, end="", file=sys.stderr, flush=True)
    answer = sys.stdin.readline()
    return answer.strip().lower() in ("y", "yes")


rm = Command(add_rm_arguments, run_rm)
