"""A short soak (the long one is ``python -m bench.soak --seconds 60 --workers 8``): 8 processes
read and write their own files through ONE mount for ~15 s under 5% injected failures and 20 ms
latency on every call. No errno a local filesystem would not give, every file byte-exact at the
end (checked through the API), and the daemon's memory bounded.

The RSS bound: a fresh daemon is ~40 MiB. What it may hold on top is bounded by design: the
content cache (256 MiB at most, but only what was read since it was written: the workers'
read-backs of their own files, a few MiB here), one write buffer per open file kept in memory
up to 4 MiB (8 workers -> 32 MiB) plus, during an upload, its bytes copy and base64/JSON body
(~2.7x the buffer: ~90 MiB in the worst instant). 200 MiB is far above what this run can
legitimately use and far below what a leak of the data written (hundreds of MiB) would show.
"""

from __future__ import annotations

import os

import pytest

from bench.soak import RssSampler, drive, table, verify
from tests.conftest import WRITE_MODES
from tests.mountutil import Api, mounted, settle

MB = 1024 * 1024
# write-back is shorter: its workers, not waiting for the network, make far more files to check
SECONDS = {"write-through": 15, "write-back": 3}
WORKERS = 8
RSS_BOUND = 200 * MB


@pytest.mark.parametrize("mode", list(WRITE_MODES))
def test_soak_under_faults(server, control, mode):
    """Write-back: everything is pushed under the same faults, then the VM is checked."""
    api = Api(server)
    seconds = SECONDS[mode]
    with mounted(server, *WRITE_MODES[mode]) as m:
        control.set_faults(fail_rate=0.05, latency_ms=20, seed=7)
        try:
            with RssSampler(m.proc.pid) as rss:
                results = drive(m.path, seconds, WORKERS, seed=7)
                if m.write_back:
                    settle(m, os.path.dirname(m.path))  # `arkerfs sync`
        finally:
            control.clear_faults()
        print(table(results, rss.samples, seconds))

        def ls(rel: str) -> list[str]:
            out = api.run(m.vm_id, f"ls -A /home/user/{rel}")
            assert out.exit_code == 0, out.stderr
            return out.stdout.decode().split()

        problems = verify(results, lambda rel: api.read_file(m.vm_id, f"/home/user/{rel}"), ls)
        errors = [(r.worker, e) for r in results for e in r.errors]
        corrupt = [(r.worker, c) for r in results for c in r.corrupt]
        assert errors == [] and corrupt == [] and problems == [], (errors, corrupt, problems)
        total_ops = sum(sum(r.ops.values()) for r in results)
        assert total_ops >= 8 * WORKERS, total_ops  # the run really exercised the mount
        assert all(r.ops.get("overwrite", 0) + r.ops.get("append", 0) > 0 for r in results)
        assert sum(r.bytes_written for r in results) > 5 * MB
        assert len(rss.samples) >= seconds - 2
        assert max(rss.samples) < RSS_BOUND, [s // MB for s in rss.samples]
        # the injected failures were really met, and retried (write-back sends far fewer, batched requests)
        assert m.log().count("retrying in") >= (5 if mode == "write-through" else 1)
