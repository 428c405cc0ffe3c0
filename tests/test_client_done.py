"""The issue's acceptance check for the SDK, end to end against the real local server."""

from __future__ import annotations

import random

from arkerfs.client import Arker


async def test_done_when_small_operations_cost_one_call_each_and_20_mb_round_trips(server, control, tmp_path):
    small = b"0123456789"
    big = random.Random(20).randbytes(20_000_000)
    async with Arker(server.api_key, base_url=server.base_url, list_base_url=server.base_url) as arker:
        control.reset_stats()
        vm = await arker.vm("arkuntu").fork()
        assert _only(control, "fork")

        control.reset_stats()
        r = await vm.run("echo hi")
        assert (r.stdout, r.exit_code) == (b"hi\n", 0)
        assert _only(control, "run")

        control.reset_stats()
        await vm.sync.write_file("/home/user/ten.bin", small)
        assert _only(control, "sync_write")

        control.reset_stats()
        assert await vm.sync.read_file("/home/user/ten.bin") == small
        assert _only(control, "sync_read")

        await vm.sync.write_file("/home/user/twenty.bin", big)
        assert await vm.sync.read_file("/home/user/twenty.bin") == big
        await vm.delete()


def _only(control, route: str) -> bool:
    """Exactly one API call since the last reset, and it went to ``route``."""
    calls = {name: n for name, n in control.calls().items() if n}
    return calls == {route: 1}
