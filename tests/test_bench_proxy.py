"""The benchmark's delay proxy: it adds the round-trip time, passes bytes intact, and does not
throttle (chunks in flight overlap); and the side-by-side benchmark runs end to end."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

from bench.proxy import DelayProxy

ROOT = Path(__file__).resolve().parent.parent


@contextmanager
def echo_server():
    """A loopback TCP server that echoes every connection until its client half-closes."""
    listener = socket.create_server(("127.0.0.1", 0))

    def serve(conn: socket.socket) -> None:
        with conn:
            while data := conn.recv(65536):
                conn.sendall(data)

    def accept() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    try:
        yield listener.getsockname()[1]
    finally:
        listener.close()


def _connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    got = bytearray()
    while len(got) < n:
        chunk = sock.recv(n - len(got))
        assert chunk, "connection closed early"
        got += chunk
    return bytes(got)


def test_one_round_trip_takes_at_least_the_rtt():
    with echo_server() as port, DelayProxy("127.0.0.1", port, rtt_ms=50) as proxy:
        with _connect(proxy.port) as sock:
            start = time.monotonic()
            sock.sendall(b"ping")
            assert _recv_exactly(sock, 4) == b"ping"
            elapsed = time.monotonic() - start
    assert elapsed >= 0.045, f"a round trip through a 50 ms proxy took {elapsed * 1000:.1f} ms"


def test_one_megabyte_echo_arrives_intact_and_eof_is_forwarded():
    payload = os.urandom(1024 * 1024)
    with echo_server() as port, DelayProxy("127.0.0.1", port, rtt_ms=20) as proxy:
        with _connect(proxy.port) as sock:
            received = bytearray()

            def read_all() -> None:
                while data := sock.recv(65536):
                    received.extend(data)

            reader = threading.Thread(target=read_all)
            reader.start()
            sock.sendall(payload)
            sock.shutdown(socket.SHUT_WR)  # the echo server sees EOF only through the proxy
            reader.join(30)
            assert not reader.is_alive(), "the echo's EOF never came back through the proxy"
    assert bytes(received) == payload


def test_messages_in_flight_overlap_instead_of_queueing_behind_the_delay():
    """80 messages sent 3 ms apart through a 50 ms RTT: about 0.3 s when each is only delayed,
    2 s if the proxy waited the delay per chunk in turn (a throttle, not a latency)."""
    with echo_server() as port, DelayProxy("127.0.0.1", port, rtt_ms=50) as proxy:
        with _connect(proxy.port) as sock:
            start = time.monotonic()
            for i in range(80):
                sock.sendall(b"%04d" % i)
                time.sleep(0.003)
            assert _recv_exactly(sock, 320) == b"".join(b"%04d" % i for i in range(80))
            elapsed = time.monotonic() - start
    assert elapsed < 1.0, f"80 pipelined messages took {elapsed:.2f} s: the proxy throttles"


def test_benchmark_runs_end_to_end_against_arkerfs(tmp_path):
    out = tmp_path / "result.json"
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--targets", "arkerfs", "--rtt-ms", "0", "--runs", "1",
         "--quick", "--workloads", "cp-in,ls,git-status,vm-change", "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads(out.read_text())
    rows = {(r["workload"], r["target"]): r for r in result["results"]}
    for workload in ("cp-in", "ls", "git-status"):
        row = rows[(workload, "arkerfs")]
        assert row["wall_s"] > 0 and not row["errors"], row
        assert sum(row["calls"].values()) > 0, row
    changed = rows[("vm-change", "arkerfs")]
    assert not changed["errors"] and set(changed["changes_s"]) == {"create", "modify", "rename", "remove"}
    # The mount's own calls only: the changes' runs went to the same server and are not counted.
    assert changed["calls"] and "vm-change on arkerfs, seconds to visible: create=" in proc.stdout, changed
    table = proc.stdout
    assert "calls by kind" in table and "cp -r 30 files in" in table and "ls -l 100 files (cold)" in table
    mounts = subprocess.run(["findmnt", "-t", "fuse.arkerfs", "-n", "-o", "TARGET"],
                            capture_output=True, text=True).stdout
    assert str(tmp_path) not in mounts and "arkerfs-bench" not in mounts
