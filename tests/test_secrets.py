"""Secrets and isolation: where the API key must never show up, and what no request may reach.

Mount side: the key is absent from debug logs (failing and succeeding operations), process
arguments, the environment the daemon hands down, and spool files. Server side: every route
refuses a missing or wrong key without side effects; presigned URLs serve one object and one
operation; ids and paths cannot escape a VM; inputs are size-limited.
"""

from __future__ import annotations

import errno
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import httpx
import pytest

from arkerfs.protocol import ARKUNTU_ID
from conftest import TEST_INLINE_READ_LIMIT
from test_server_support import (  # noqa: F401  (api, http, vm are fixtures)
    api, assert_error, client, fork, home_of, http, run, sync, vm, write, write_entry,
)
from tests.conftest import WRITE_MODES
from tests.mountutil import mounted

MB = 1024 * 1024


def raw_request(base_url: str, request: bytes, timeout: float = 30, half_close: bool = True) -> bytes:
    """Send exact bytes (no client-side path normalisation) and return the whole answer."""
    host, port = base_url.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=timeout) as s:
        s.sendall(request)
        if half_close:
            s.shutdown(socket.SHUT_WR)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
    return out


def status_of(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/") else 0


# -- the mount ----------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", list(WRITE_MODES))
def test_key_never_in_debug_log_argv_or_spool(server, control, mode):
    key = server.api_key
    with mounted(server, *WRITE_MODES[mode], "--debug") as m:
        m.allow_log(r"WARNING arkerfs\.(client|mount\.ops|fs\.remote)")
        big = os.urandom(5 * MB)
        with open(m.p("big"), "wb") as f:
            f.write(big)
        with open(m.p("big"), "rb") as f:
            assert f.read() == big
        assert_errno(errno.ENOENT, os.stat, m.p("missing"))
        if not m.write_back:
            control.set_faults(fail_rate=1.0)  # failing operations, logged with their errors
            assert_errno((errno.EIO, errno.EAGAIN), os.mkdir, m.p("fails"))
        else:  # changes are recorded here; their push fails (refused: at once), logged, and fsync says so
            m.allow_log(r"(WARNING|ERROR) arkerfs\.writeback\.pusher")
            os.mkdir(m.p("fails"))
            control.set_faults(fail_rate=1.0, fail_status=403)
            with open(m.p("fails", "f"), "wb") as f:
                f.write(b"refused")
                f.flush()
                assert_errno(errno.EIO, os.fsync, f.fileno())
        control.clear_faults()
        pending = open(m.p("pending"), "wb")  # spilled to a spool file, still open while we look
        pending.write(os.urandom(5 * MB))
        pending.flush()
        try:
            spool_files = [n for _, _, names in os.walk(m.spool_dir) for n in names]
            assert spool_files, "expected a spool file for the pending 5 MB write"
            assert grep_tree(m.spool_dir, key.encode()) == []
            assert key.encode() not in Path(f"/proc/{m.proc.pid}/cmdline").read_bytes()
        finally:
            pending.close()
        with open(m.p("small"), "wb") as f:
            f.write(b"ok")
        log = m.log()
        assert "DEBUG" in log and "POST /api/v1/vms/" in log  # the debug log is really on
        assert key not in log and "Bearer" not in log and "/_blob/" not in log
        assert key not in " ".join(os.listdir(m.spool_dir))
        # nor in anything else the daemon keeps: state file, status socket's dir, the write-back journal
        state = os.path.join(os.path.dirname(m.path), "arkerfs")
        assert grep_tree(state, key.encode()) == []
        assert os.path.isdir(os.path.join(state, m.vm_id)) == m.write_back  # the journal was looked at


def test_mount_command_removes_the_key_from_the_environment_it_hands_down(server, monkeypatch, tmp_path):
    """``arkerfs mount`` reads ARKER_API_KEY once; children (fusermount3, the local server's
    tools) must not inherit it."""
    from arkerfs.mount import command

    (tmp_path / "mnt").mkdir()
    monkeypatch.setenv("ARKER_API_KEY", server.api_key)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    import argparse
    parser = argparse.ArgumentParser()
    command.add_arguments(parser)
    config = command.build_config(parser.parse_args(["vm", str(tmp_path / "mnt")]))
    assert config.api_key == server.api_key
    assert "ARKER_API_KEY" not in os.environ
    assert server.api_key not in repr(config)
    child = subprocess.run(["env"], capture_output=True, text=True).stdout
    assert server.api_key not in child


def test_local_mode_key_is_not_in_argv_environment_or_runs(tmp_path):
    """``mount --local`` generates a key into its data dir: it must not appear in the daemon's
    argv or environment, and runs in the embedded server's VMs cannot read it or the data dir."""
    data_home = Path("/var/tmp") / f"arkerfs-test-{uuid.uuid4().hex}"  # outside /tmp, like ~/.local/share
    workdir = tempfile.mkdtemp(prefix="arkerfs-local-")
    mnt = os.path.realpath(os.path.join(workdir, "mnt"))
    os.mkdir(mnt)
    log_path = os.path.join(workdir, "daemon.log")
    env = {k: v for k, v in os.environ.items() if not k.startswith("ARKER_")}
    env |= {"XDG_RUNTIME_DIR": workdir, "XDG_CACHE_HOME": workdir, "XDG_STATE_HOME": workdir,
            "XDG_DATA_HOME": str(data_home)}
    proc = subprocess.Popen([sys.executable, "-m", "arkerfs", "mount", "--foreground", "--local", "--debug",
                             "--log-file", log_path, "mine", mnt], env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        from tests.mountutil import wait_for_mount
        wait_for_mount(proc, mnt, log_path, timeout=60)
        data_dir = data_home / "arkerfs" / "server"
        key = (data_dir / "api-key").read_text().strip()
        assert key.startswith("ark_local_")
        for what in ("cmdline", "environ"):
            assert key.encode() not in Path(f"/proc/{proc.pid}/{what}").read_bytes(), what
        with open(os.path.join(mnt, "probe.sh"), "w") as f:
            f.write(f"cat {data_dir}/api-key {data_dir}/blob-secret 2>&1; ls -A {data_dir} | wc -l; env\n")
            f.flush()
            os.fsync(f.fileno())  # in the VM now (write-back: close() alone would leave it in the journal)
        url = next(line.split(" on ")[-1] for line in open(log_path) if "embedded server for" in line).strip()
        with client(url, key=key) as c:
            vm_id = c.get("/api/v1/vms/list?q=mine").json()["items"][0]["vm_id"]
            out = run(c, vm_id, "bash probe.sh", session=0)
        assert key not in out["stdout"] and "No such file" in out["stdout"]
        assert "\n0\n" in out["stdout"]  # an empty tmpfs covers the data dir
        with open(os.path.join(mnt, "probe.sh"), "rb") as f:
            assert b"api-key" in f.read()
        log = open(log_path).read()
        assert key not in log and "Traceback" not in log
    finally:
        from tests.mountutil import teardown
        problems = teardown(proc, mnt)
        shutil.rmtree(workdir, ignore_errors=True)
        shutil.rmtree(data_home, ignore_errors=True)
    assert problems == [] and proc.returncode == 0


def assert_errno(expected, fn, *args) -> None:
    with pytest.raises(OSError) as info:
        fn(*args)
    wanted = expected if isinstance(expected, tuple) else (expected,)
    assert info.value.errno in wanted, info.value


def grep_tree(root: str, needle: bytes, skip: bytes = b"") -> list[str]:
    """Files under ``root`` containing ``needle`` (ignoring files whose whole content is ``skip``)."""
    hits = []
    for dirpath, _, names in os.walk(root):
        for name in names:
            path = os.path.join(dirpath, name)
            try:
                data = Path(path).read_bytes()
            except OSError:
                continue
            if needle in data and data != skip:
                hits.append(path)
    return hits
# -- the local server: authentication on every route ---------------------------------------------
def app_routes() -> list[tuple[str, str]]:
    """(method, path template) of every authenticated route, read from the app itself."""
    from types import SimpleNamespace

    from arkerfs.server.app import AUTH_PREFIXES, create_app

    gate = create_app(SimpleNamespace(config=SimpleNamespace(api_keys=("unused",))))
    routes = [(method, route.path) for route in gate.app.routes for method in route.methods if method != "HEAD"]
    return sorted(r for r in routes if r[1].startswith(AUTH_PREFIXES))


def test_route_table_is_what_this_file_enumerates():
    assert app_routes() == sorted([
        ("GET", "/api/v1/vms/list"), ("POST", "/api/v1/vms/fork"), ("POST", "/api/v1/vms/{vm_id}/fork"),
        ("POST", "/api/v1/vms/{vm_id}/run"), ("POST", "/api/v1/vms/{vm_id}/sync"), ("DELETE", "/api/v1/vms/{vm_id}"),
        ("GET", "/_local/health"), ("GET", "/_local/stats"), ("POST", "/_local/stats/reset"), ("POST", "/_local/faults"),
    ])


BAD_AUTH = [
    {}, {"authorization": ""}, {"authorization": "Bearer"}, {"authorization": "bearer"},
    {"authorization": "Bearer wrong"}, {"authorization": "Basic " + "x" * 20}, {"authorization": "Token {key}"},
    {"authorization": "Bearer {key}x"}, {"authorization": "Bearer {short}"}, {"authorization": "Bearer {key} {key}"},
    {"x-api-key": "{key}"}, {"cookie": "key={key}"}, {"authorization": "Bearer {key},Bearer {key}"},
]


def test_every_route_refuses_missing_or_wrong_keys_without_side_effects(server, api, vm, http):
    key = server.api_key
    (home_of(server, vm) / "keep.txt").write_text("kept")
    before_total = api.get("/api/v1/vms/list").json()["total"]
    stats_before = server.control.stats()["calls"]
    bodies = {"run": {"command": "rm -rf /home/user/*", "session_id": 1}, "sync": {"op": "read", "path": "/home/user/keep.txt"},
              "faults": {"fail_rate": 1}, "fork": {"from": "arkuntu", "name": "sneaky"}}
    tried = 0
    for method, template in app_routes():
        path = template.replace("{vm_id}", vm)
        body = next((b for k, b in bodies.items() if path.endswith(k)), {"name": "sneaky"})
        for headers in BAD_AUTH:
            headers = {k: v.format(key=key, short=key[:-1]) for k, v in headers.items()}
            for query in ("", f"?api_key={key}&key={key}&token={key}"):
                r = http.request(method, server.base_url + path + query, headers=headers, json=body)
                assert_error(r, 401, "unauthorized")
                assert key not in r.text
                tried += 1
    assert tried == 10 * len(BAD_AUTH) * 2
    # nothing happened: no fork, no delete, no run, no faults, not even a counted call
    assert server.control.stats()["calls"] == stats_before  # also: the stats were not reset
    assert api.get("/api/v1/vms/list").json()["total"] == before_total
    assert (home_of(server, vm) / "keep.txt").read_text() == "kept"
    assert run(api, vm, "cat keep.txt")["stdout"] == "kept"  # and no faults were switched on


@pytest.mark.parametrize("target", [
    b"//api/v1/vms/list", b"/api//v1/vms/list", b"/%61pi/v1/vms/list", b"/api/v1/vms/../vms/list",
    b"/_blob/../api/v1/vms/list", b"/_blob/..%2Fapi%2Fv1%2Fvms%2Flist", b"http://x/api/v1/vms/list",
    b"/_local/../api/v1/vms/list", b"/API/v1/vms/list", b"/_LOCAL/stats", b"/api/v1/vms/list#", b"/./_local/stats",
])
def test_path_spellings_do_not_bypass_authentication(server, target):
    answer = raw_request(server.base_url, b"GET " + target + b" HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
    assert status_of(answer) in (400, 401, 403, 404), answer[:300]
    assert b'"items"' not in answer and b'"calls"' not in answer


# -- presigned URLs: one object, one operation ----------------------------------------------------
def test_presigned_urls_serve_one_object_and_one_operation(api, vm, server, http):
    home = home_of(server, vm)
    (home / "big.bin").write_bytes(b"g" * (TEST_INLINE_READ_LIMIT + 1))
    get_url = sync(api, vm, {"op": "read", "path": "/home/user/big.bin"}).json()["presigned_url"]
    [p] = write(api, vm, {"path": "/home/user/up.bin", "size": 3, "presigned": True})
    put_url = p["presigned_url"]
    assert_error(http.put(get_url, content=b"x" * (TEST_INLINE_READ_LIMIT + 1)), 403, "forbidden")  # GET grant as PUT
    assert_error(http.get(put_url), 403, "forbidden")  # PUT grant as GET
    assert http.put(put_url, content=b"abc").status_code == 200
    [done] = write(api, vm, {"path": "/home/user/up.bin", "size": 3, "upload_id": p["upload_id"]})
    assert done["written"] is True and (home / "up.bin").read_bytes() == b"abc"
    # Replaying the PUT URL stages bytes but installs nothing: only an authenticated commit can.
    http.put(put_url, content=b"xyz")
    assert (home / "up.bin").read_bytes() == b"abc"
    # The token names its VM: another VM's file of the same path is out of reach.
    other = fork(api)["vm_id"]
    (home_of(server, other) / "big.bin").write_bytes(b"o" * (TEST_INLINE_READ_LIMIT + 1))
    assert http.get(get_url).content == b"g" * (TEST_INLINE_READ_LIMIT + 1)
    api.delete(f"/api/v1/vms/{other}")
    # Once its VM is gone, a URL serves nothing.
    api.delete(f"/api/v1/vms/{vm}")
    r = http.get(get_url)
    assert r.status_code == 404 and b"ggg" not in r.content


# -- ids and paths cannot leave a VM -------------------------------------------------------------
HOSTILE_IDS = ["..", ".", "../..", "../vms", f"../{ARKUNTU_ID}", f"{ARKUNTU_ID}/../x", "vms", "work", "staging",
               "lock", "blob-secret", "%2e%2e", "..\\..", "*", "' OR 1=1 --", "\x00", "a" * 5000]


def test_hostile_vm_ids_reach_nothing(api, vm, server):
    data = Path(server.data_dir)
    (home_of(server, vm) / "keep.txt").write_text("kept")
    vms_before = sorted(p.name for p in (data / "vms").iterdir())
    quoted = lambda s: httpx.URL("http://x/").copy_with(raw_path=b"/" + "".join(  # noqa: E731
        f"%{b:02X}" for b in s.encode()).encode()).raw_path.decode()[1:]
    for vm_id in HOSTILE_IDS:
        enc = quoted(vm_id)  # every byte percent-encoded: "/" and "." arrive as part of the id
        for method, path, body in [
            ("DELETE", f"/api/v1/vms/{enc}", None),
            ("POST", f"/api/v1/vms/{enc}/run", {"command": "echo pwned > /home/user/pwned", "session_id": 1}),
            ("POST", f"/api/v1/vms/{enc}/sync", {"op": "read", "path": "/home/user/keep.txt"}),
            ("POST", f"/api/v1/vms/{enc}/sync", {"op": "write", "writes": [write_entry("/home/user/pwned", b"x")]}),
            ("POST", f"/api/v1/vms/{enc}/fork", {"name": "x"}),
            ("POST", "/api/v1/vms/fork", {"from": vm_id, "name": "x"}),
        ]:
            r = api.request(method, path, json=body)
            assert r.status_code in (400, 404, 405), (vm_id, method, path, r.text)
            assert r.json()["ok"] is False and "kept" not in r.text
    assert sorted(p.name for p in (data / "vms").iterdir()) == vms_before
    assert not list(data.rglob("pwned")) and (home_of(server, vm) / "keep.txt").read_text() == "kept"
    assert (data / "blob-secret").exists() and (data / "vms" / ARKUNTU_ID / "home").is_dir()


def test_fork_names_are_only_names(api, server):
    data = Path(server.data_dir)
    for name in ("../../escape", "/tmp/escape", "vms", "a/b"):
        body = fork(api, name=name)
        assert body["name"] == name and (data / "vms" / body["vm_id"] / "home" / "README.md").exists()
        api.delete(f"/api/v1/vms/{body['vm_id']}")
    assert not (data.parent / "escape").exists() and not Path("/tmp/escape").exists()
    assert_error(api.post(f"/api/v1/vms/{ARKUNTU_ID}/fork", json={"name": "n" * 257}), 400, "bad_request")
    assert_error(api.post(f"/api/v1/vms/{ARKUNTU_ID}/fork", json={"name": ["x"]}), 400, "bad_request")


def test_list_q_is_a_plain_case_insensitive_substring(api):
    tag = uuid.uuid4().hex[:8]
    names = [f"{tag}a.b*c", f"{tag}100%", f"{tag}x' OR '1'='1", f"{tag}[abc]", f"{tag}abc", f"{tag}_under"]
    ids = [fork(api, name=n)["vm_id"] for n in names]
    try:
        def found(q: str) -> set[str]:
            r = api.get("/api/v1/vms/list", params={"q": q, "limit": 100})
            assert r.status_code == 200, r.text
            return {item["name"] for item in r.json()["items"] if item["name"].startswith(tag)}

        assert found(tag + ".*") == set()  # not a regex
        assert found(tag + "a.b*c") == {f"{tag}a.b*c"}
        assert found(tag + "%") == set() and found(tag + "100%") == {f"{tag}100%"}  # not LIKE
        assert found(tag + "*") == set() and found(tag + "?") == set()  # not a glob
        assert found(tag + "[abc]") == {f"{tag}[abc]"} and found(tag + "[ab") == {f"{tag}[abc]"}
        assert found("' OR '1'='1") == {f"{tag}x' OR '1'='1"}  # not SQL
        assert found(tag + "_") == {f"{tag}_under"}
        assert found(tag + "ABC") == {f"{tag}abc"}
        assert len(found(tag)) == len(names)
        r = api.get("/api/v1/vms/list", params={"q": "\x00" + "x" * 8000})
        assert r.status_code == 200 and r.json()["total"] == 0
    finally:
        for vm_id in ids:
            api.delete(f"/api/v1/vms/{vm_id}")


def test_runs_see_no_key_no_server_environment_and_no_other_home(api, vm, server):
    other = fork(api)["vm_id"]
    (home_of(server, other) / "theirs.txt").write_text("their secret")
    out = run(api, vm, "env; cat /proc/*/environ 2>/dev/null | tr '\\0' '\\n'; ls /home /proc | wc -l; "
                       f"cat {home_of(server, other)}/theirs.txt 2>&1; ls {server.data_dir}/vms 2>&1 | wc -l; "
                       "ps -eo pid,args 2>/dev/null | wc -l")
    text = out["stdout"]
    assert server.api_key not in text and "ARKER_API_KEY" not in text and "their secret" not in text
    assert "No such file" in text
    assert "arkerfs" not in text.replace(str(server.data_dir), "")  # no server process or path visible
    api.delete(f"/api/v1/vms/{other}")


# -- size limits ---------------------------------------------------------------------------------
def test_request_sizes_are_limited_and_the_server_survives(api, vm, server):
    from arkerfs.protocol import SERVER_MAX_SYNC_BODY

    assert_error(api.post(f"/api/v1/vms/{ARKUNTU_ID}/fork", content=b'{"name": "' + b"x" * 100_000 + b'"}'),
                 413, "payload_too_large")
    assert_error(api.post("/_local/faults", content=b"{" + b" " * 100_000 + b"}"), 413, "payload_too_large")
    big = b'{"op": "read", "path": "/home/user/x", "pad": "' + b"p" * SERVER_MAX_SYNC_BODY + b'"}'
    assert_error(api.post(f"/api/v1/vms/{vm}/sync", content=big), 413, "payload_too_large")
    auth = f"authorization: Bearer {server.api_key}\r\n".encode()
    # a declared body of a terabyte is refused from the header, without waiting for it
    answer = raw_request(server.base_url, b"POST /api/v1/vms/fork HTTP/1.1\r\nhost: x\r\n" + auth +
                         b"content-length: 1000000000000\r\n\r\n{}", timeout=10, half_close=False)
    assert status_of(answer) == 413
    # deep JSON nesting is a 400, not a crash
    assert_error(api.post(f"/api/v1/vms/{vm}/run", content=b"[" * 100_000), 400, "bad_request")
    # huge URLs and headers: a 4xx from the HTTP layer
    for request in (b"GET /api/v1/vms/list?q=" + b"a" * 200_000 + b" HTTP/1.1\r\nhost: x\r\n" + auth + b"\r\n",
                    b"GET /api/v1/vms/" + b"v" * 200_000 + b"/run HTTP/1.1\r\nhost: x\r\n" + auth + b"\r\n",
                    b"GET /api/v1/vms/list HTTP/1.1\r\nhost: x\r\n" + auth + b"x-big: " + b"h" * 200_000 + b"\r\n\r\n"):
        assert 400 <= status_of(raw_request(server.base_url, request)) < 500
    assert api.get("/_local/health").json() == {"ok": True}
    assert run(api, vm, "echo alive")["stdout"] == "alive\n"
