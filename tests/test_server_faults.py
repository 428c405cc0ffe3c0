"""The /_local/ test hooks: injected faults act before any side effect; stats count exactly."""

from __future__ import annotations

import time

import pytest

from arkerfs.protocol import ARKUNTU_ID
from conftest import TEST_INLINE_READ_LIMIT
from test_server_support import (  # noqa: F401  (api, http, vm, private_server are fixtures)
    api, assert_error, client, http, fork, home_of, private_server, run, sync, vm, write, write_entry,
)


def test_health(control):
    assert control.health() == {"ok": True}


def test_fail_rate_one_fails_every_api_call_without_side_effects(api, vm, server, control, http):
    (home_of(server, vm) / "big.bin").write_bytes(b"z" * (TEST_INLINE_READ_LIMIT + 1))
    get_url = sync(api, vm, {"op": "read", "path": "/home/user/big.bin"}).json()["presigned_url"]
    [put] = write(api, vm, {"path": "/home/user/put.bin", "size": 3, "presigned": True})
    vms_before = api.get("/api/v1/vms/list", params={"limit": 100}).json()["total"]
    control.set_faults(fail_rate=1.0)
    attempts = [
        api.post(f"/api/v1/vms/{vm}/run", json={"command": "touch /home/user/ran", "session_id": 0}),
        api.post(f"/api/v1/vms/{vm}/sync", json={"op": "write", "writes": [write_entry("/home/user/w", b"w")]}),
        api.post(f"/api/v1/vms/{vm}/sync", json={"op": "read", "path": "/home/user/README.md"}),
        api.post(f"/api/v1/vms/{vm}/fork", json={}),
        api.post("/api/v1/vms/fork", json={"from": "arkuntu"}),
        api.delete(f"/api/v1/vms/{vm}"),
        api.get("/api/v1/vms/list"),
        http.get(get_url),
        http.put(put["presigned_url"], content=b"abc"),
    ]
    for r in attempts:
        err = assert_error(r, 503, "unavailable")
        assert "Service Unavailable" in err["message"]
        assert err["recovery"] == {"work": "not_started"}
    control.clear_faults()
    home = home_of(server, vm)
    assert not (home / "ran").exists() and not (home / "w").exists()
    assert api.get("/api/v1/vms/list", params={"limit": 100}).json()["total"] == vms_before
    [commit] = write(api, vm, {"path": "/home/user/put.bin", "size": 3, "upload_id": put["upload_id"]})
    assert commit["error"]["code"] == "not_found"  # the PUT never happened


@pytest.mark.parametrize("status,code", [(429, "rate_limited"), (500, "internal"), (502, "internal"), (504, "gateway_timeout")])
def test_fail_status_picks_matching_code(api, control, status, code):
    control.set_faults(fail_rate=1.0, fail_status=status)
    assert_error(api.get("/api/v1/vms/list"), status, code)


def test_busy_rate_rejects_runs_only(api, vm, server, control):
    control.set_faults(busy_rate=1.0)
    r = api.post(f"/api/v1/vms/{vm}/run", json={"command": "touch /home/user/ran", "session_id": 0})
    err = assert_error(r, 409, "vm_busy")
    assert err["recovery"] == {"work": "not_started"}
    assert sync(api, vm, {"op": "read", "path": "/home/user/hello.py"}).status_code == 200
    assert not (home_of(server, vm) / "ran").exists()


def test_seeded_faults_are_deterministic(api, control):
    def pattern():
        control.set_faults(fail_rate=0.5, seed=1234)
        return [api.get("/api/v1/vms/list", params={"limit": 1}).status_code for _ in range(12)]

    first = pattern()
    assert first == pattern()
    assert set(first) == {200, 503}


def test_latency_applies_to_api_not_local(api, control):
    control.set_faults(latency_ms=400)
    started = time.monotonic()
    assert api.get("/api/v1/vms/list").status_code == 200
    assert time.monotonic() - started >= 0.4
    started = time.monotonic()
    control.health()
    assert time.monotonic() - started < 0.3


def test_empty_object_clears_faults(api, control):
    control.set_faults(fail_rate=1.0, latency_ms=10)
    control.set_faults()
    assert api.get("/api/v1/vms/list").status_code == 200


@pytest.mark.parametrize("bad", [{"fail_rate": 2}, {"latency_ms": -1}, {"fail_status": 200}, {"busy_rate": "x"},
                                 {"seed": "x"}, {"nonsense": 1}, {"fail_rate": True}])
def test_bad_fault_values_are_400(api, control, bad):
    assert_error(api.post("/_local/faults", json=bad), 400, "bad_request")


def test_stats_count_one_call_per_request_and_reset(api, vm, server, control, http):
    (home_of(server, vm) / "big.bin").write_bytes(b"z" * (TEST_INLINE_READ_LIMIT + 1))
    control.reset_stats()
    assert set(control.calls().values()) == {0}
    api.get("/api/v1/vms/list")
    child = fork(api, vm)["vm_id"]
    run(api, vm, "true")
    get_url = sync(api, vm, {"op": "read", "path": "/home/user/big.bin"}).json()["presigned_url"]
    assert http.get(get_url).status_code == 200
    [put] = write(api, vm, {"path": "/home/user/p", "size": 1, "presigned": True})
    assert http.put(put["presigned_url"], content=b"p").status_code == 200
    api.delete(f"/api/v1/vms/{child}")
    control.set_faults(fail_rate=1.0)
    api.post(f"/api/v1/vms/{vm}/run", json={"command": "true", "session_id": 0})  # faulted: still one call
    control.clear_faults()
    stats = control.stats()
    assert stats["ok"] is True
    assert stats["calls"] == {"run": 2, "sync_read": 1, "sync_write": 1, "presigned_get": 1, "presigned_put": 1,
                              "fork": 1, "delete": 1, "list": 1}
    assert stats["bytes_out"] > TEST_INLINE_READ_LIMIT and stats["bytes_in"] > 0
    control.reset_stats()
    assert control.stats() == {"ok": True, "calls": dict.fromkeys(stats["calls"], 0), "bytes_in": 0, "bytes_out": 0}


def test_latency_ms_option_sets_initial_latency(private_server):
    srv = private_server("--latency-ms", "300")
    with client(srv.base_url) as c:
        started = time.monotonic()
        assert c.post(f"/api/v1/vms/{ARKUNTU_ID}/sync", json={"op": "read", "path": "/home/user/hello.py"}).status_code == 200
        assert time.monotonic() - started >= 0.3
