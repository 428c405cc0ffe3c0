"""Auth, routing envelopes, list, fork and delete against a real `arkerfs serve`."""

from __future__ import annotations

import re
import time

import pytest

from arkerfs.protocol import ARKUNTU_ID, looks_like_vm_id
from test_server_support import api, assert_error, client, fork, http, read_inline, vm  # noqa: F401  (fixtures)

ISO_Z = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")


@pytest.mark.parametrize("headers", [{}, {"authorization": "Bearer wrong"}, {"authorization": "Basic abc"}])
@pytest.mark.parametrize("method,path", [
    ("GET", "/api/v1/vms/list"), ("POST", f"/api/v1/vms/{ARKUNTU_ID}/run"), ("GET", "/_local/stats"),
])
def test_missing_or_wrong_key_is_401_envelope(server, headers, method, path, http):
    r = http.request(method, server.base_url + path, headers=headers, json={"command": "true"})
    assert_error(r, 401, "unauthorized")


def test_unknown_route_and_wrong_method_are_json_envelopes(api):
    assert_error(api.get("/api/v1/nope"), 404, "not_found")
    assert_error(api.get("/api/v1/vms/fork"), 405, "method_not_allowed")


def test_bad_json_is_400_envelope(api):
    r = api.post(f"/api/v1/vms/{ARKUNTU_ID}/fork", content=b"{not json")
    assert_error(r, 400, "bad_request")
    r = api.post(f"/api/v1/vms/{ARKUNTU_ID}/fork", content=b"[1, 2]")
    assert_error(r, 400, "bad_request")


def test_fork_by_id_returns_list_item_shape_and_copies_home(api, vm):
    body = fork(api, vm, name="child")
    assert body["ok"] is True
    assert looks_like_vm_id(body["vm_id"]) and body["vm_id"] != vm
    assert re.fullmatch(r"[0-9A-Z]{26}_[0-9a-z]{4}", body["vm_id"])
    assert body["name"] == "child"
    assert body["base_image"] == "arkuntu"
    assert body["region"] == "local"
    assert ISO_Z.match(body["created_at"])
    assert b"arkuntu" in read_inline(api, body["vm_id"], "/home/user/README.md")
    api.delete(f"/api/v1/vms/{body['vm_id']}")


def test_fork_is_an_independent_copy(api, vm):
    r = api.post(f"/api/v1/vms/{vm}/run", json={"command": "echo parent > mine.txt", "session_id": 0})
    assert r.json()["exit_code"] == 0
    child = fork(api, vm)["vm_id"]
    api.post(f"/api/v1/vms/{child}/run", json={"command": "echo child > mine.txt; echo new > only-child", "session_id": 0})
    assert read_inline(api, vm, "/home/user/mine.txt") == b"parent\n"
    assert_error(api.post(f"/api/v1/vms/{vm}/sync", json={"op": "read", "path": "/home/user/only-child"}), 404, "not_found")
    api.delete(f"/api/v1/vms/{child}")


def test_fork_by_name_alias_and_exact_name(api):
    named = f"golden-{time.time_ns()}"
    r = api.post("/api/v1/vms/fork", json={"is_public": False, "from": "arkuntu", "name": named})
    assert r.status_code == 200, r.text
    first = r.json()["vm_id"]
    r = api.post("/api/v1/vms/fork", json={"is_public": False, "from": named})
    assert r.status_code == 200, r.text
    second = r.json()
    assert second["vm_id"] not in (first, ARKUNTU_ID) and second["name"] is None
    for vm_id in (first, second["vm_id"]):
        api.delete(f"/api/v1/vms/{vm_id}")


def test_fork_unknown_source_is_404(api):
    assert_error(api.post("/api/v1/vms/fork", json={"from": "no-such-vm-name"}), 404, "not_found")
    assert_error(api.post("/api/v1/vms/01M8BPET9EMC1VRG328XYSPBX5_x7k2/fork", json={}), 404, "not_found")
    assert_error(api.post("/api/v1/vms/fork", json={}), 400, "bad_request")


def test_delete_then_every_vm_route_is_404(api):
    vm_id = fork(api)["vm_id"]
    r = api.delete(f"/api/v1/vms/{vm_id}")
    assert r.status_code == 200 and r.json() == {"ok": True, "deleted": True}
    assert_error(api.delete(f"/api/v1/vms/{vm_id}"), 404, "not_found")
    assert_error(api.post(f"/api/v1/vms/{vm_id}/run", json={"command": "true", "session_id": 0}), 404, "not_found")
    assert_error(api.post(f"/api/v1/vms/{vm_id}/sync", json={"op": "read", "path": "/home/user/README.md"}), 404, "not_found")
    assert_error(api.post(f"/api/v1/vms/{vm_id}/fork", json={}), 404, "not_found")


def test_template_cannot_be_deleted(api):
    assert_error(api.delete(f"/api/v1/vms/{ARKUNTU_ID}"), 403, "forbidden")
    assert b"arkuntu" in read_inline(api, ARKUNTU_ID, "/home/user/README.md")


@pytest.fixture(scope="module")
def listed(server):
    """Three VMs whose names share a unique tag, created in order."""
    tag = f"LsT{time.time_ns()}"
    with client(server.base_url) as c:
        ids = [fork(c, name=f"{tag}-{label}")["vm_id"] for label in ("alpha", "Beta", "gamma")]
        yield tag, ids
        for vm_id in ids:
            c.delete(f"/api/v1/vms/{vm_id}")


class TestList:
    def test_q_is_case_insensitive_and_total_ignores_paging(self, api, listed):
        tag, ids = listed
        r = api.get("/api/v1/vms/list", params={"q": tag.lower(), "limit": 2})
        assert r.status_code == 200
        body = r.json()
        assert body["ok"] is True and body["total"] == 3
        assert [item["vm_id"] for item in body["items"]] == [ids[2], ids[1]]  # newest first by default
        for item in body["items"]:
            assert set(item) == {"vm_id", "name", "base_image", "region", "created_at"}

    def test_offset_and_sort(self, api, listed):
        tag, ids = listed
        r = api.get("/api/v1/vms/list", params={"q": tag, "limit": 2, "offset": 1, "sort": "created_at"})
        assert [i["vm_id"] for i in r.json()["items"]] == [ids[1], ids[2]]
        r = api.get("/api/v1/vms/list", params={"q": tag, "sort": "-region"})
        assert {i["vm_id"] for i in r.json()["items"]} == set(ids)

    def test_query_plus_decodes_to_space_and_template_is_hidden(self, api, listed):
        tag, ids = listed
        r = api.get(f"/api/v1/vms/list?q={tag}-beta+x")
        assert r.json()["total"] == 0
        r = api.get(f"/api/v1/vms/list?q={tag}-BETA")
        assert [i["vm_id"] for i in r.json()["items"]] == [ids[1]]
        everything = api.get("/api/v1/vms/list", params={"limit": 100}).json()
        assert ARKUNTU_ID not in {i["vm_id"] for i in everything["items"]}

    def test_space_in_q_matches(self, api, server):
        vm_id = fork(api, name=f"with space {time.time_ns()}")["vm_id"]
        r = api.get("/api/v1/vms/list?q=with+space")
        assert vm_id in {i["vm_id"] for i in r.json()["items"]}
        api.delete(f"/api/v1/vms/{vm_id}")

    @pytest.mark.parametrize("query", ["limit=0", "limit=101", "limit=x", "offset=-1", "sort=name"])
    def test_bad_params_are_400(self, api, query):
        assert_error(api.get(f"/api/v1/vms/list?{query}"), 400, "bad_request")
