"""SDK operations one by one: what each costs in calls and time at a given latency."""

from __future__ import annotations

import os
from pathlib import Path

import trio

from arkerfs.client import Arker
from bench.harness import Meter, local_server, print_table


async def _workloads(proc, meter: Meter, tmpdir: str) -> None:
    async with Arker(api_key=proc.api_key, base_url=proc.base_url, list_base_url=proc.base_url) as arker:
        with meter.measure("fork arkuntu"):
            vm = await arker.vm("arkuntu").fork(name="bench")
        with meter.measure("run 'echo hi'"):
            await vm.run("echo hi", session_id=1)
        with meter.measure("write 10 B"):
            await vm.sync.write_file("/home/user/small.bin", os.urandom(10))
        with meter.measure("read 10 B"):
            await vm.sync.read_file("/home/user/small.bin")
        big = Path(tmpdir) / "big.bin"
        with open(big, "wb") as f:
            f.write(os.urandom(20 * 1000 * 1000))
        with meter.measure("write 20 MB (presigned)"):
            await vm.sync.write_file("/home/user/big.bin", big)
        with meter.measure("read 20 MB (presigned)"):
            await vm.sync.read_file("/home/user/big.bin")
        with meter.measure("ranged read 64 KiB of 20 MB"):
            remote = await vm.sync.open_read("/home/user/big.bin")
            await remote.read_range(10_000_000, 65536)
        with meter.measure("list VMs"):
            await arker.list()
        with meter.measure("delete VM"):
            await vm.delete()


def run(latency_ms: int, tmpdir: str) -> None:
    with local_server(latency_ms) as proc:
        meter = Meter(proc.control)
        trio.run(_workloads, proc, meter, tmpdir)
    print_table(f"SDK operations at {latency_ms} ms injected latency per call", meter.results)
