"""Shared benchmark plumbing: a throwaway local server, call counting, a table printer."""

from __future__ import annotations

import secrets
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from arkerfs.server.control import LocalControl, ServerProcess


@dataclass
class Measurement:
    workload: str
    seconds: float
    calls: dict[str, int]

    @property
    def total_calls(self) -> int:
        return sum(self.calls.values())


@contextmanager
def local_server(latency_ms: int, extra_args: list[str] | None = None):
    """A fresh `arkerfs serve` in a temp dir; yields the running ServerProcess."""
    with tempfile.TemporaryDirectory(prefix="arkerfs-bench-") as tmp:
        proc = ServerProcess(
            data_dir=Path(tmp) / "data",
            api_key="ark_bench_" + secrets.token_hex(8),
            extra_args=["--latency-ms", str(latency_ms), *(extra_args or [])],
        )
        with proc:
            yield proc


class Meter:
    """Times a block and records the server-side calls it made."""

    def __init__(self, control: LocalControl) -> None:
        self.control = control
        self.results: list[Measurement] = []

    @contextmanager
    def measure(self, workload: str):
        self.control.reset_stats()
        start = time.perf_counter()
        yield
        elapsed = time.perf_counter() - start
        calls = {k: v for k, v in self.control.calls().items() if v}
        self.results.append(Measurement(workload, elapsed, calls))


def print_table(title: str, results: list[Measurement]) -> None:
    rows = [("workload", "seconds", "API calls", "by route")]
    for m in results:
        by_route = ", ".join(f"{k}={v}" for k, v in sorted(m.calls.items()))
        rows.append((m.workload, f"{m.seconds:.3f}", str(m.total_calls), by_route))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    print(f"\n{title}")
    for i, row in enumerate(rows):
        print("  ".join(cell.ljust(widths[j]) for j, cell in enumerate(row)).rstrip())
        if i == 0:
            print("  ".join("-" * w for w in widths))
