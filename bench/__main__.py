"""python -m bench [--latency-ms N]: run every benchmark and print its table."""

from __future__ import annotations

import argparse
import tempfile

from bench import client_ops, mount_ops


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench")
    parser.add_argument("--latency-ms", type=int, default=50, help="latency injected per API call")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="arkerfs-bench-") as tmp:
        client_ops.run(args.latency_ms, tmp)
        mount_ops.run(args.latency_ms, tmp)


if __name__ == "__main__":
    main()
