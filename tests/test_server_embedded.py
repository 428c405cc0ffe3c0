"""The in-process entry used by the mount daemon's embedded mode: ``serve(config)`` in a nursery."""

from __future__ import annotations

import httpx
import pytest
import trio

from arkerfs.server.config import ServerConfig, StartupError
from arkerfs.server.serve import serve


async def test_serve_reports_its_url_and_stops_on_cancel(tmp_path):
    config = ServerConfig(data_dir=tmp_path / "data", api_keys=("embedded-key",), port=0)
    async with trio.open_nursery() as nursery:
        url = await nursery.start(serve, config)
        assert url.startswith("http://127.0.0.1:")
        async with httpx.AsyncClient(base_url=url, headers={"authorization": "Bearer embedded-key"}) as c:
            assert (await c.get("/_local/health")).json() == {"ok": True}
            r = await c.post("/api/v1/vms/fork", json={"from": "arkuntu"})
            vm_id = r.json()["vm_id"]
            r = await c.post(f"/api/v1/vms/{vm_id}/run", json={"command": "echo embedded", "session_id": 0})
            assert r.json()["stdout"] == "embedded\n"
        nursery.cancel_scope.cancel()
    with pytest.raises(httpx.ConnectError):
        async with httpx.AsyncClient() as c:
            await c.get(url + "/_local/health")


def test_config_refuses_non_loopback_host(tmp_path):
    with pytest.raises(StartupError) as info:
        ServerConfig(data_dir=tmp_path, api_keys=("k",), host="192.168.1.10")
    assert info.value.exit_code == 2
