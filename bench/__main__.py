"""python -m bench: arkerfs side by side with sshfs through a delay proxy (see bench/sidebyside.py).

    python -m bench [--rtt-ms 20 [50 ...]] [--runs 3] [--workloads rsync,ls] [--targets arkerfs,sshfs,sdk]
                    [--quick] [--json PATH]
    python -m bench tables [--latency-ms 50]     # the older per-operation tables (injected latency)
"""

from __future__ import annotations

import argparse
import signal
import sys
import tempfile
from pathlib import Path

from bench import client_ops, mount_ops, sidebyside


def _csv(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def side_by_side(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rtt-ms", type=float, nargs="+", default=[20.0],
                        help="round-trip time(s) the proxy adds, e.g. --rtt-ms 0 20 50 (default 20)")
    parser.add_argument("--runs", type=int, default=3, help="runs per workload and target; medians are shown")
    parser.add_argument("--workloads", type=_csv, help="comma-separated keys, e.g. rsync,tar,ls (default all)")
    parser.add_argument("--targets", type=_csv, default=list(sidebyside.TARGETS),
                        help="comma-separated: arkerfs,sshfs,sdk (default all)")
    parser.add_argument("--quick", action="store_true", help="about a tenth of the files and 10 MB instead of 100 MB")
    parser.add_argument("--json", type=Path, help="where to write the results (default bench/results/<time>.json)")
    args = parser.parse_args(argv)
    unknown = set(args.targets) - set(sidebyside.TARGETS)
    if unknown or args.runs < 1:
        parser.error(f"unknown target(s) {sorted(unknown)}" if unknown else "--runs must be at least 1")
    sidebyside.run(sidebyside.Options(rtt_ms=args.rtt_ms, runs=args.runs, workloads=args.workloads,
                                      targets=args.targets, quick=args.quick, json_path=args.json))


def tables(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench tables")
    parser.add_argument("--latency-ms", type=int, default=50, help="latency injected per API call")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="arkerfs-bench-") as tmp:
        client_ops.run(args.latency_ms, tmp)
        mount_ops.run(args.latency_ms, tmp)


def _interrupt(signum, frame) -> None:
    # SIGTERM unwinds like Ctrl-C, so every mount is unmounted and every process stopped.
    raise KeyboardInterrupt


def main() -> None:
    signal.signal(signal.SIGTERM, _interrupt)
    argv = sys.argv[1:]
    try:
        if argv[:1] == ["tables"]:
            tables(argv[1:])
        elif any(a.startswith("--latency-ms") for a in argv):  # the older command line, still documented
            tables(argv)
        else:
            side_by_side(argv)
    except KeyboardInterrupt:
        print("interrupted: mounts unmounted, servers stopped, temp dirs removed", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
