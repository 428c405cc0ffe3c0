"""Bad input to ``arkerfs mount`` and the SDK: revoked keys, malformed VM ids, unreachable hosts
and servers that misbehave at the HTTP level (garbage, endless bodies, silence).

Every failure must be ONE line on stderr (or an errno through a live mount), without a
traceback, within a bounded time, and must leave nothing mounted. Misbehaving servers are real
sockets on 127.0.0.1 served by a thread of this process; no non-loopback address is ever used.
"""

from __future__ import annotations

import errno
import glob
import os
import socket
import subprocess
import sys
import threading
import time

import pytest

from arkerfs import exitcodes
from arkerfs.client import Arker, ArkerError, RetryPolicy
from arkerfs.client.transport import MAX_API_RESPONSE
from arkerfs.mount import runtime
from arkerfs.server.control import ServerProcess
from tests.conftest import WRITE_MODES
from tests.mountutil import mounted

VM_ID = "01KQBYKEV5WJ7YB010603T1DCT_d8c0"  # id-shaped: the mount probes it without a list call
KEY = "ark_badinput_key_0123456789abcdef"
FAST = RetryPolicy(attempts=2, base_delay=0.01, max_delay=0.05)


class BadServer:
    """An HTTP/1.1 listener on 127.0.0.1 that reads each request, then misbehaves by ``mode``:

    - ``garbage``: 200 with a body that is not JSON;
    - ``deep``: 200 with JSON nested far beyond any parser's recursion limit;
    - ``html500``: a multi-line HTML error page with status 500;
    - ``huge``: 200 and an endless body (until the client hangs up);
    - ``silent``: accepts, reads, and never answers.
    """

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.requests = 0
        self.sent = 0
        self._stop = threading.Event()
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(16)
        self._sock.settimeout(0.2)
        self.url = f"http://127.0.0.1:{self._sock.getsockname()[1]}"
        self._threads = [threading.Thread(target=self._accept, daemon=True)]
        self._threads[0].start()

    def close(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(10)
        self._sock.close()

    def __enter__(self) -> "BadServer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except (TimeoutError, OSError):
                continue
            t = threading.Thread(target=self._handle, args=(conn,), daemon=True)
            self._threads.append(t)
            t.start()

    def _handle(self, conn: socket.socket) -> None:
        conn.settimeout(0.2)
        with conn:
            data = b""
            while b"\r\n\r\n" not in data and not self._stop.is_set():
                try:
                    chunk = conn.recv(65536)
                except TimeoutError:
                    continue
                except OSError:
                    return
                if not chunk:
                    return
                data += chunk
            head, _, body = data.partition(b"\r\n\r\n")
            length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                           if line.lower().startswith(b"content-length:")), 0)
            while len(body) < length and not self._stop.is_set():  # read it all: an unread body
                try:                                               # would make close() reset
                    chunk = conn.recv(65536)
                except TimeoutError:
                    continue
                except OSError:
                    return
                if not chunk:
                    return
                body += chunk
            self.requests += 1
            try:
                self._reply(conn)
            except OSError:
                pass  # the client hung up: exactly what a bounded client does

    def _reply(self, conn: socket.socket) -> None:
        head = "HTTP/1.1 {} X\r\ncontent-type: {}\r\nconnection: close\r\n"
        if self.mode == "silent":
            while not self._stop.wait(0.1):
                pass
            return
        if self.mode == "huge":
            conn.sendall(head.format(200, "application/json").encode() + b"\r\n" + b'{"ok": true, "items": [')
            block = b"0," * 32768
            while not self._stop.is_set():
                conn.sendall(block)
                self.sent += len(block)
            return
        status, kind, body = {
            "garbage": (200, "application/json", b"\x00\xffthis is {not json"),
            "deep": (200, "application/json", b"[" * 200_000),
            "html500": (500, "text/html", b"<html>\n<body>\nInternal\r\nError\n</body>\n</html>\n"),
        }[self.mode]
        conn.sendall(head.format(status, kind).encode() + f"content-length: {len(body)}\r\n\r\n".encode() + body)


def closed_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]  # nothing listens once this socket closes


# -- the mount command ----------------------------------------------------------------------------
def mount_cmd(workdir: str, url: str, vm: str, *extra: str, key: str = KEY,
              timeout: float = 60) -> tuple[subprocess.CompletedProcess, float]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ARKER_")}
    env |= {"XDG_RUNTIME_DIR": workdir, "XDG_CACHE_HOME": workdir, "XDG_STATE_HOME": workdir, "ARKER_API_KEY": key}
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "arkerfs", "mount", "--base-url", url, *extra, vm,
                           os.path.join(workdir, "mnt")], capture_output=True, text=True, env=env,
                          timeout=timeout, stdin=subprocess.DEVNULL)
    return done, time.monotonic() - started


def assert_clean_failure(workdir: str, done: subprocess.CompletedProcess, *needles: str, key: str = KEY) -> str:
    assert done.returncode == exitcodes.MOUNT_FAILED, (done.returncode, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("arkerfs mount: "), done.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert key not in done.stderr and "Traceback" not in done.stderr
    assert runtime.mount_entry(os.path.join(workdir, "mnt")) is None
    for log in glob.glob(os.path.join(workdir, "arkerfs", "logs", "*.log")):  # the detached daemon's log
        text = open(log, encoding="utf-8", errors="replace").read()
        assert "Traceback" not in text and key not in text, text
    return lines[0]


@pytest.mark.parametrize("vm,needle", [
    ("../x", "no VM is named '../x'"),
    ("a/b/../../c", "no VM is named 'a/b/../../c'"),
    ("bad\nname\x1b[2J", "no VM is named 'bad\\nname\\x1b[2J'"),  # newline, terminal escape
    ("%2e%2e%2f", "no VM is named '%2e%2e%2f'"),
    ("x" * 5000, "no VM is named 'xxxx"),
    ("01ARZ3NDEKTSV4RRFFQ69G5FAV", "no VM '01ARZ3NDEKTSV4RRFFQ69G5FAV'"),  # id-shaped, unknown
    ("01ARZ3NDEKTSV4RRFFQ69G5FAV_../../x", "no VM is named"),  # id-shaped head, hostile suffix
])
def test_malformed_or_unknown_vm_ids(server, workdir, vm, needle):
    done, _ = mount_cmd(workdir, server.base_url, vm, key=server.api_key)
    line = assert_clean_failure(workdir, done, needle, key=server.api_key)
    assert len(line) <= 600


def test_unreachable_hosts(workdir):
    for host in ("127.0.0.1", "127.0.0.2"):  # loopback only: 127.0.0.2 is local, but nothing listens
        url = f"http://{host}:{closed_port()}"
        done, took = mount_cmd(workdir, url, VM_ID)
        assert_clean_failure(workdir, done, "cannot connect", url.removeprefix("http://"))
        assert took < 30


@pytest.mark.parametrize("mode,vm,needle", [
    ("garbage", VM_ID, "is not a JSON object"),
    ("garbage", "by-name", "is not a JSON object"),
    ("deep", VM_ID, "is not a JSON object"),
    ("html500", VM_ID, "<html> <body> Internal Error"),
    ("huge", VM_ID, f"larger than {MAX_API_RESPONSE} bytes"),
    ("huge", "by-name", f"larger than {MAX_API_RESPONSE} bytes"),
])
def test_misbehaving_servers_fail_the_mount_in_one_line(workdir, mode, vm, needle):
    with BadServer(mode) as bad:
        done, took = mount_cmd(workdir, bad.url, vm)
    assert_clean_failure(workdir, done, needle)
    assert took < 30
    if mode == "huge":
        assert bad.sent < 4 * MAX_API_RESPONSE  # the client stopped reading


def test_a_server_that_never_answers_times_out(workdir):
    with BadServer("silent") as bad:
        done, took = mount_cmd(workdir, bad.url, VM_ID, "--connect-timeout", "2")
    assert_clean_failure(workdir, done, "no answer from the Arker API", "within 2 s")
    assert took < 15, took
    assert bad.requests >= 1
    done, _ = mount_cmd(workdir, bad.url, VM_ID, "--connect-timeout", "0")
    assert_clean_failure(workdir, done, "--connect-timeout must be positive")


@pytest.mark.parametrize("mode", list(WRITE_MODES))
def test_a_revoked_key_gives_eacces_and_one_clear_log_line(tmp_path, mode):
    """Mount with key A, then restart the server (same data, same port) accepting only key B."""
    data = tmp_path / "data"
    first = ServerProcess(data_dir=data, api_key="ark_first_key_0000000000000000").start()
    port = first.base_url.rsplit(":", 1)[1]
    second = None
    try:
        with mounted(first, *WRITE_MODES[mode], "--cache-ttl", "1") as m:
            with open(m.p("before"), "wb") as f:
                f.write(b"written with the first key")
                f.flush()
                os.fsync(f.fileno())  # in the VM (write-back: not only in the journal)
            first.stop()
            second = ServerProcess(data_dir=data, api_key="ark_second_key_111111111111111",
                                   extra_args=["--port", port]).start()
            assert second.base_url == first.base_url
            time.sleep(1.2)  # let the kernel's and the mount's caches of the root expire
            for op in (lambda: os.stat(m.p("nope")), lambda: os.listdir(m.p("projects")),
                       lambda: open(m.p("new"), "wb"), lambda: open(m.p("before"), "rb").read(),
                       lambda: os.mkdir(m.p("dir"))):
                with pytest.raises(OSError) as info:
                    op()
                assert info.value.errno == errno.EACCES
            log = m.log()
            refused = [line for line in log.splitlines() if "API key was refused" in line]
            assert len(refused) == 1, log
            assert " ERROR arkerfs." in refused[0] and "Traceback" not in log
            assert first.api_key not in log and second.api_key not in log
            m.allow_log(r"ERROR arkerfs\.fs\.errors: the API key was refused \(")
    finally:
        first.stop()
        if second is not None:
            with second.control._client() as c:  # the data written with the old key is intact
                assert c.get("/_local/health").status_code == 200
            second.stop()
    vm_home = next(data.glob("vms/*/home/before"))
    assert vm_home.read_bytes() == b"written with the first key"


# -- the SDK --------------------------------------------------------------------------------------
async def sdk_failure(url: str, call, timeout: float = 120.0) -> tuple[ArkerError, float]:
    started = time.monotonic()
    async with Arker(KEY, base_url=url, list_base_url=url, retry=FAST, timeout=timeout) as arker:
        with pytest.raises(ArkerError) as info:
            await call(arker)
    return info.value, time.monotonic() - started


@pytest.mark.parametrize("mode,code,needle", [
    ("deep", "internal", "is not a JSON object"),
    ("huge", "internal", f"larger than {MAX_API_RESPONSE} bytes"),
    ("html500", "internal", "<html>"),
])
async def test_sdk_against_misbehaving_servers(mode, code, needle):
    with BadServer(mode) as bad:
        for call in (lambda a: a.list(), lambda a: a.vm(VM_ID).run("true"), lambda a: a.vm(VM_ID).sync.read_file(
                "/home/user/x")):
            err, took = await sdk_failure(bad.url, call)
            assert err.code == code and needle in err.message, err
            assert KEY not in str(err) and took < 20


async def test_sdk_against_a_silent_server_times_out():
    with BadServer("silent") as bad:
        err, took = await sdk_failure(bad.url, lambda a: a.list(), timeout=0.5)
        assert (err.code, err.status, err.outcome_unknown) == ("unavailable", 0, True)
        assert "ReadTimeout" in err.message and took < 5
        assert bad.requests == 2  # list is replay-safe: both attempts were sent
        # (not a run: a run waits as long as a server may hold it open, not the API timeout)
        err, took = await sdk_failure(bad.url, lambda a: a.vm(VM_ID).fork(), timeout=0.5)
        assert err.outcome_unknown and took < 5  # a fork is never replayed after an ambiguous failure
        assert bad.requests == 3


async def test_sdk_unreachable_loopback_address():
    url = f"http://127.0.0.2:{closed_port()}"
    err, took = await sdk_failure(url, lambda a: a.vm(VM_ID).run("true"))
    assert (err.code, err.status) == ("unavailable", 0) and "cannot connect to 127.0.0.2" in err.message
    assert took < 5
