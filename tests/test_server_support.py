"""Helpers and fixtures shared by the server tests (imported by each tests/test_server_*.py).

Everything goes over a real socket with raw httpx: the client SDK is not used, so these tests
pin down the wire behaviour itself.
"""

from __future__ import annotations

import base64
import os
from pathlib import Path

import httpx
import pytest

from arkerfs.protocol import ARKUNTU_ID, new_ulid
from arkerfs.server.control import ServerProcess
from conftest import TEST_KEY

AUTH = {"authorization": f"Bearer {TEST_KEY}"}


def client(base_url: str, key: str = TEST_KEY, timeout: float = 60) -> httpx.Client:
    # verify=False only skips loading the CA bundle (~0.2 s per client); every URL here is plain http.
    return httpx.Client(base_url=base_url, headers={"authorization": f"Bearer {key}"}, timeout=timeout, verify=False)


@pytest.fixture(scope="session")
def http():
    """A client without credentials, as used for presigned URLs."""
    with httpx.Client(timeout=60, verify=False) as c:
        yield c


@pytest.fixture(scope="session")
def api(server):
    """An authenticated client for the session server."""
    with client(server.base_url) as c:
        yield c


def fork(api: httpx.Client, source: str = ARKUNTU_ID, **body) -> dict:
    r = api.post(f"/api/v1/vms/{source}/fork", json={"is_public": False, **body})
    assert r.status_code == 200, r.text
    return r.json()


@pytest.fixture
def vm(api):
    """A fresh fork of the template, deleted afterwards."""
    vm_id = fork(api)["vm_id"]
    yield vm_id
    api.delete(f"/api/v1/vms/{vm_id}")


def home_of(server: ServerProcess, vm_id: str) -> Path:
    """The host directory behind a VM's /home/user (to check effects from outside the API)."""
    return Path(server.data_dir) / "vms" / vm_id / "home"


def run(api: httpx.Client, vm_id: str, command: str, session=7, **extra) -> dict:
    r = api.post(f"/api/v1/vms/{vm_id}/run", json={"command": command, "session_id": session, **extra})
    assert r.status_code == 200, r.text
    return r.json()


def sync(api: httpx.Client, vm_id: str, body: dict) -> httpx.Response:
    return api.post(f"/api/v1/vms/{vm_id}/sync", json=body)


def write_entry(path: str, data: bytes, upload_id: str | None = None, start: int = 0, size: int | None = None) -> dict:
    return {
        "path": path, "size": len(data) if size is None else size, "upload_id": upload_id or new_ulid(),
        "start": start, "end": start + len(data), "content": base64.b64encode(data).decode(),
    }


def write(api: httpx.Client, vm_id: str, *entries: dict) -> list[dict]:
    r = sync(api, vm_id, {"op": "write", "writes": list(entries)})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["ok"] is True and body["op"] == "write"
    assert len(body["results"]) == len(entries)
    return body["results"]


def read_inline(api: httpx.Client, vm_id: str, path: str) -> bytes:
    r = sync(api, vm_id, {"op": "read", "path": path})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["encoding"] == "base64"
    return base64.b64decode(body["content"])


def assert_error(response: httpx.Response, status: int, code: str) -> dict:
    """The response is the core error envelope with this status and code."""
    assert response.status_code == status, response.text
    body = response.json()
    assert body["ok"] is False
    assert body["error"]["code"] == code
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    return body["error"]


@pytest.fixture
def private_server(tmp_path):
    """Factory for a dedicated ServerProcess with extra options; stopped at teardown."""
    started: list[ServerProcess] = []

    def start(*extra_args: str, env: dict | None = None) -> ServerProcess:
        saved = dict(os.environ)
        os.environ.update(env or {})
        try:
            proc = ServerProcess(data_dir=tmp_path / f"data{len(started)}", api_key=TEST_KEY,
                                 extra_args=list(extra_args), log_path=tmp_path / "server.log")
            started.append(proc)
            return proc.start()
        finally:
            os.environ.clear()
            os.environ.update(saved)

    yield start
    for proc in started:
        proc.stop()
