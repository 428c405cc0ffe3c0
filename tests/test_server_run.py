"""`run`: output, exit codes, sessions, timeouts, concurrency and the sandbox."""

from __future__ import annotations

import base64
import shutil
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from test_server_support import (  # noqa: F401  (api, vm, private_server are fixtures)
    api, assert_error, client, fork, home_of, private_server, read_inline, run, vm,
)


def test_echo_exit_code_and_response_shape(api, vm):
    body = run(api, vm, "echo hello; echo oops >&2; exit 3", session=7)
    assert body["ok"] is True
    assert (body["stdout"], body["stdout_encoding"]) == ("hello\n", "utf-8")
    assert (body["stderr"], body["stderr_encoding"]) == ("oops\n", "utf-8")
    assert body["exit_code"] == 3
    assert body["session_id"] == "7"
    assert body["cwd"] == "/home/user"
    assert isinstance(body["duration_ms"], (int, float)) and body["duration_ms"] >= 0
    assert "timed_out" not in body and "stdout_truncated" not in body


def test_killed_by_signal_is_128_plus_signal(api, vm):
    assert run(api, vm, "kill -9 $$")["exit_code"] == 137


def test_stdin_is_empty(api, vm):
    body = run(api, vm, "cat; echo done", timeout=10)
    assert body["stdout"] == "done\n" and body["exit_code"] == 0


def test_session_id_forms(api, vm):
    r = api.post(f"/api/v1/vms/{vm}/run", json={"command": "true"})
    assert r.json()["session_id"] == "0"
    assert run(api, vm, "true", session="12")["session_id"] == "12"
    assert run(api, vm, "true", session="build")["session_id"] == "build"
    for bad in (1.5, True, [1], -1, ""):
        r = api.post(f"/api/v1/vms/{vm}/run", json={"command": "true", "session_id": bad})
        assert_error(r, 400, "bad_request")


@pytest.mark.parametrize("body", [{}, {"command": 5}, {"command": "true", "timeout": -1}, {"command": "true", "timeout": "5"}])
def test_bad_run_requests_are_400(api, vm, body):
    assert_error(api.post(f"/api/v1/vms/{vm}/run", json=body), 400, "bad_request")


def test_run_body_over_4_mib_is_413(api, vm):
    command = "true #" + "x" * (4 * 1024 * 1024)
    assert_error(api.post(f"/api/v1/vms/{vm}/run", json={"command": command, "session_id": 0}), 413, "payload_too_large")


def test_session_keeps_cwd_and_exported_env(api, vm):
    first = run(api, vm, "mkdir -p proj/src && cd proj/src && export GREETING='hi there' && PLAIN=1", session=1)
    assert first["cwd"] == "/home/user/proj/src"
    second = run(api, vm, 'pwd; echo "$GREETING|$PLAIN"', session=1)
    assert second["stdout"] == "/home/user/proj/src\nhi there|\n"
    assert second["cwd"] == "/home/user/proj/src"
    run(api, vm, "unset GREETING; cd ..", session=1)
    third = run(api, vm, 'pwd; echo "[$GREETING]"', session=1)
    assert third["stdout"] == "/home/user/proj\n[]\n"


def test_sessions_are_independent(api, vm):
    run(api, vm, "mkdir -p a && cd a && export WHO=one", session=1)
    other = run(api, vm, 'pwd; echo "[$WHO]"', session="two")
    assert other["stdout"] == "/home/user\n[]\n"
    assert other["cwd"] == "/home/user"


def test_state_survives_a_failing_command_and_exit(api, vm):
    run(api, vm, "mkdir -p d && cd d && export K=v && false", session=4)
    run(api, vm, "exit 9", session=4)
    assert run(api, vm, 'echo "$PWD $K"', session=4)["stdout"] == "/home/user/d v\n"


def test_non_utf8_output_is_base64(api, vm):
    body = run(api, vm, r"printf 'ok\377\376'; printf 'fine' >&2")
    assert body["stdout_encoding"] == "base64"
    assert base64.b64decode(body["stdout"]) == b"ok\xff\xfe"
    assert (body["stderr"], body["stderr_encoding"]) == ("fine", "utf-8")


def test_output_over_8_mib_is_truncated_and_flagged(api, vm):
    body = run(api, vm, "head -c 9000000 /dev/zero | tr '\\0' a")
    assert body["stdout_truncated"] is True
    assert len(body["stdout"]) == 8 * 1024 * 1024
    assert body["exit_code"] == 0


def test_timeout_kills_the_whole_sandbox(api, vm, server):
    started = time.monotonic()
    body = run(api, vm, "echo before; (sleep 1.5; touch /home/user/late) & sleep 30", timeout=1)
    elapsed = time.monotonic() - started
    assert body["exit_code"] == -1 and body["timed_out"] is True
    assert body["stdout"] == "before\n"
    assert body["stderr"].endswith("arker: command timed out after 1 s\n")
    assert elapsed < 5
    time.sleep(1.5)  # the background child would have created the file by now
    assert not (home_of(server, vm) / "late").exists()


def test_a_run_longer_than_ten_seconds_completes(api, vm):
    # the sandbox dies with the thread that forked it: trio's worker threads exit after 10 s
    # idle, so forking there SIGKILLed every longer run (exit 137)
    time.sleep(0.1)  # let a worker thread of an earlier request go idle first
    body = run(api, vm, "sleep 11; echo done", timeout=30)
    assert (body["exit_code"], body["stdout"]) == (0, "done\n")


def test_background_children_end_with_the_command(api, vm, server):
    body = run(api, vm, "(sleep 1; touch /home/user/late) & echo started")
    assert body["stdout"] == "started\n"
    time.sleep(1.5)
    assert not (home_of(server, vm) / "late").exists()


def test_concurrent_run_on_same_session_is_vm_busy_and_never_runs(api, vm, server):
    with ThreadPoolExecutor(2) as pool, client(server.base_url) as other:
        slow = pool.submit(run, api, vm, "sleep 1.5; echo slow", session=3)
        time.sleep(0.5)
        started = time.monotonic()
        r = other.post(f"/api/v1/vms/{vm}/run", json={"command": "touch /home/user/second", "session_id": 3})
        assert time.monotonic() - started < 1.0
        assert_error(r, 409, "vm_busy")
        assert slow.result()["stdout"] == "slow\n"
    assert not (home_of(server, vm) / "second").exists()
    assert run(api, vm, "echo free", session=3)["stdout"] == "free\n"


def test_different_sessions_run_in_parallel(api, vm, server):
    def one(session):
        with client(server.base_url) as c:
            return run(c, vm, "sleep 1; echo done", session=session)

    started = time.monotonic()
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(one, [21, 22]))
    assert [r["stdout"] for r in results] == ["done\n", "done\n"]
    assert time.monotonic() - started < 1.8


def test_no_network_inside(api, vm, server):
    port = urlsplit(server.base_url).port
    body = run(api, vm, f"echo > /dev/tcp/127.0.0.1/{port} && echo connected")
    assert body["exit_code"] != 0 and "connected" not in body["stdout"]


def test_host_is_read_only_outside_home(api, vm):
    name = f"arkerfs-test-{uuid.uuid4().hex}"
    body = run(api, vm, f"touch /etc/{name} || touch /usr/{name} || touch /{name} || exit 0; exit 1")
    assert body["exit_code"] == 0
    assert not Path(f"/etc/{name}").exists() and not Path(f"/{name}").exists()
    assert run(api, vm, "echo ok > /home/user/inside && cat /home/user/inside")["stdout"] == "ok\n"


def test_tmp_is_private(api, vm):
    name = f"arkerfs-test-{uuid.uuid4().hex}"
    assert run(api, vm, f"echo x > /tmp/{name} && cat /tmp/{name}")["stdout"] == "x\n"
    assert not Path(f"/tmp/{name}").exists()
    assert run(api, vm, f"test -e /tmp/{name} && echo leaked || echo gone")["stdout"] == "gone\n"


def test_other_vms_and_server_secrets_are_invisible(api, vm, server):
    other = fork(api)["vm_id"]
    run(api, other, "echo secret > /home/user/private.txt")
    body = run(api, vm, f"ls {server.data_dir}/vms/{other}/home/private.txt 2>&1; cat {server.data_dir}/blob-secret")
    assert body["exit_code"] != 0 and "secret" not in body["stdout"]
    api.delete(f"/api/v1/vms/{other}")


def test_data_dir_outside_tmp_is_hidden_from_runs(private_server):
    data_parent = Path("/var/tmp") / f"arkerfs-test-{uuid.uuid4().hex}"
    try:
        srv = private_server("--data-dir", str(data_parent / "data"))
        with client(srv.base_url) as c:
            vm_id = fork(c)["vm_id"]
            body = run(c, vm_id, f"ls -A {data_parent}/data; cat {data_parent}/data/blob-secret | wc -c")
            assert body["stdout"] == "0\n"  # an empty tmpfs covers the data dir
            assert read_inline(c, vm_id, "/home/user/hello.py").startswith(b"print")
    finally:
        shutil.rmtree(data_parent, ignore_errors=True)
