"""The `arkerfs serve` command itself: stdout contract, key sources, refusals, shutdown."""

from __future__ import annotations

import os
import select
import shutil
import signal
import stat
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from arkerfs.protocol import ARKUNTU_ID
from arkerfs.server.control import READY_LINE, ServerProcess
from test_server_support import client, http, private_server  # noqa: F401  (http, private_server are fixtures)


def serve_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "arkerfs", "serve", "--port", "0", *args]


def env_without_key(**extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "ARKER_API_KEY"}
    return {**env, **extra}


def start_until_ready(cmd: list[str], env: dict, stderr_path) -> tuple[subprocess.Popen, str, str]:
    """Start the command and return (process, everything printed on stdout so far, base URL)."""
    with open(stderr_path, "ab") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, stdin=subprocess.DEVNULL, env=env)
    out = b""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and proc.poll() is None:
        if select.select([proc.stdout], [], [], 0.2)[0]:
            out += os.read(proc.stdout.fileno(), 4096)
            match = READY_LINE.search(out.decode())
            if match:
                return proc, out.decode(), match.group(1)
    proc.kill()
    raise AssertionError(f"server not ready; stdout={out!r}")


def stop(proc: subprocess.Popen) -> int:
    proc.send_signal(signal.SIGTERM)
    return proc.wait(10)


def test_generated_key_is_stored_0600_reused_and_never_printed(tmp_path, http):
    data = tmp_path / "data"
    errlog = tmp_path / "stderr.log"
    proc, out, url = start_until_ready(serve_cmd("--data-dir", str(data)), env_without_key(), errlog)
    key_file = data / "api-key"
    key = key_file.read_text().strip()
    try:
        assert key.startswith("ark_local_") and len(key) > 20
        assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
        assert f"arkerfs serve: API key stored in {key_file}" in out
        assert f"arkerfs serve: listening on {url}" in out and url.startswith("http://127.0.0.1:")
        assert http.get(url + "/_local/health", headers={"authorization": f"Bearer {key}"}).status_code == 200
    finally:
        assert stop(proc) == 0
    proc, out2, url = start_until_ready(serve_cmd("--data-dir", str(data)), env_without_key(), errlog)
    try:
        assert key_file.read_text().strip() == key
        assert http.get(url + "/_local/health", headers={"authorization": f"Bearer {key}"}).status_code == 200
    finally:
        assert stop(proc) == 0
    assert key not in out + out2 and key not in errlog.read_text()


@pytest.fixture
def var_tmp_dir():
    """A directory outside /tmp and /home, which runs would otherwise see read-only."""
    path = Path("/var/tmp") / f"arkerfs-test-{uuid.uuid4().hex}"
    path.mkdir()
    yield path
    shutil.rmtree(path)


def test_key_from_file_and_argv(tmp_path, var_tmp_dir, http):
    key_file = var_tmp_dir / "key"
    key_file.write_text("ark_file_key\n")
    proc, out, url = start_until_ready(serve_cmd("--data-dir", str(tmp_path / "d1"), "--api-key-file", str(key_file)),
                                       env_without_key(), tmp_path / "err")
    try:
        assert http.get(url + "/_local/health", headers={"authorization": "Bearer ark_file_key"}).status_code == 200
        assert "ark_file_key" not in out and not (tmp_path / "d1" / "api-key").exists()
        # The key file sits outside the data dir; runs must not be able to read it either.
        with client(url, key="ark_file_key") as c:
            vm_id = c.post(f"/api/v1/vms/{ARKUNTU_ID}/fork", json={}).json()["vm_id"]
            body = c.post(f"/api/v1/vms/{vm_id}/run", json={"command": f"cat {key_file}", "session_id": 0}).json()
            assert "ark_file_key" not in body["stdout"]
    finally:
        assert stop(proc) == 0
    proc, _, url = start_until_ready(serve_cmd("--data-dir", str(tmp_path / "d2"), "--api-key", "argv_key"),
                                     env_without_key(), tmp_path / "err")
    try:
        assert http.get(url + "/_local/health", headers={"authorization": "Bearer argv_key"}).status_code == 200
    finally:
        assert stop(proc) == 0


@pytest.mark.parametrize("host", ["0.0.0.0", "10.1.2.3", "example.com", "::"])
def test_non_loopback_host_is_refused(tmp_path, host):
    r = subprocess.run(serve_cmd("--data-dir", str(tmp_path), "--host", host, "--api-key", "k"),
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "loopback" in r.stderr
    assert "listening" not in r.stdout


def test_missing_bwrap_is_refused(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    os.symlink(shutil.which("cp"), bin_dir / "cp")
    r = subprocess.run(serve_cmd("--data-dir", str(tmp_path / "d"), "--api-key", "k"), capture_output=True,
                       text=True, timeout=30, env={**os.environ, "PATH": str(bin_dir)})
    assert r.returncode != 0
    assert "bwrap" in r.stderr and "listening" not in r.stdout


def test_second_server_on_same_data_dir_is_refused(private_server):
    srv = private_server()
    r = subprocess.run(serve_cmd("--data-dir", str(srv.data_dir), "--api-key", "k"), capture_output=True,
                       text=True, timeout=30)
    assert r.returncode == 1 and "in use" in r.stderr


def test_sigterm_exits_cleanly_and_state_survives_restart(tmp_path):
    srv = ServerProcess(data_dir=tmp_path / "data", api_key="k1").start()
    with client(srv.base_url, key="k1") as c:
        vm_id = c.post("/api/v1/vms/fork", json={"from": "arkuntu", "name": "keeper"}).json()["vm_id"]
    srv.stop()
    assert srv.proc.returncode == 0
    srv = ServerProcess(data_dir=tmp_path / "data", api_key="k1").start()
    try:
        with client(srv.base_url, key="k1") as c:
            items = c.get("/api/v1/vms/list", params={"q": "keeper"}).json()["items"]
            assert [i["vm_id"] for i in items] == [vm_id]
    finally:
        srv.stop()
