"""The systemd units: they verify, their command lines parse with the real CLI, and the daemon
speaks sd_notify for real (READY=1 only once the mount answers, STOPPING=1 on SIGTERM)."""

from __future__ import annotations

import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from arkerfs.cli import build_parser
from arkerfs.mount import runtime
from tests.conftest import WRITE_MODES
from tests.mountutil import daemon_command, log_problems, teardown
from tests.test_mount_cli import env_for

UNITS = Path(__file__).resolve().parent.parent / "systemd"
UNIT_FILES = sorted(UNITS.glob("*.service"))
ARKERFS = os.path.join(os.path.dirname(sys.executable), "arkerfs")


def test_both_units_exist():
    assert [p.name for p in UNIT_FILES] == ["arkerfs-serve.service", "arkerfs@.service"]


def service_settings(unit: Path) -> dict[str, list[str]]:
    """``[Service]`` settings of a unit file: key -> values in order (comments dropped)."""
    settings: dict[str, list[str]] = {}
    section = None
    for line in unit.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line
            continue
        key, _, value = line.partition("=")
        settings.setdefault(f"{section}{key}", []).append(value)
    return settings


@pytest.mark.parametrize("unit", UNIT_FILES, ids=lambda p: p.name)
def test_systemd_analyze_verify(unit, tmp_path):
    # systemd-analyze wants an executable it can find: point the copy at this venv's arkerfs.
    text = unit.read_text()
    assert re.search(r"^ExecStart=arkerfs ", text, re.M)
    copy = tmp_path / unit.name
    copy.write_text(re.sub(r"^(Exec\w+=-?)arkerfs ", rf"\g<1>{ARKERFS} ", text, flags=re.M))
    runtime_dir = tmp_path / "run"
    runtime_dir.mkdir(mode=0o700)
    done = subprocess.run(["systemd-analyze", "verify", "--user", str(copy)], capture_output=True, text=True,
                          env={**os.environ, "XDG_RUNTIME_DIR": str(runtime_dir)}, timeout=60)
    assert (done.returncode, done.stderr, done.stdout) == (0, "", "")


def test_verify_catches_a_bad_unit(tmp_path):
    """The check above can fail: a misspelt setting is reported."""
    bad = tmp_path / "arkerfs@.service"
    bad.write_text(re.sub(r"^ExecStart=arkerfs ", f"ExecStart={ARKERFS} ",
                          (UNITS / "arkerfs@.service").read_text().replace("NotifyAccess=", "NotifyAcess="), flags=re.M))
    runtime_dir = tmp_path / "run"
    runtime_dir.mkdir(mode=0o700)
    done = subprocess.run(["systemd-analyze", "verify", "--user", str(bad)], capture_output=True, text=True,
                          env={**os.environ, "XDG_RUNTIME_DIR": str(runtime_dir)}, timeout=60)
    assert "Unknown key" in done.stderr


def expand(command: str, instance: str = "my-vm") -> list[str]:
    """A unit's command line as systemd would run it (specifiers substituted, prefixes dropped)."""
    for spec, value in {"%i": instance, "%h": "/home/someone", "%d": "/run/user/1000/credentials/x",
                        "%E": "/home/someone/.config"}.items():
        command = command.replace(spec, value)
    assert "%" not in command, command
    return shlex.split(command.lstrip("-@:+!"))


def test_mount_unit_commands_parse_with_the_real_cli():
    settings = service_settings(UNITS / "arkerfs@.service")
    assert settings["[Service]Type"] == ["notify"]
    assert settings["[Service]Restart"] == ["on-failure"]
    assert settings["[Service]TimeoutStopSec"] == ["15min"]
    assert settings["[Unit]StartLimitBurst"] and settings["[Unit]StartLimitIntervalSec"]
    assert settings["[Service]LoadCredential"] == ["arker-api-key:%E/arkerfs/api-key"]
    (mkdir,) = settings["[Service]ExecStartPre"]
    assert expand(mkdir) == ["mkdir", "-p", "/home/someone/arker/my-vm"]
    # mkdir fails on a mount point left dead by a crash; that must not stop the start that cleans it
    assert mkdir.startswith("-")
    (start,) = settings["[Service]ExecStart"]
    argv = expand(start)
    assert argv[0] == "arkerfs"
    args = build_parser().parse_args(argv[1:])
    assert (args.command, args.vm, args.mountpoint) == ("mount", "my-vm", "/home/someone/arker/my-vm")
    assert args.foreground and args.api_key_file == "/run/user/1000/credentials/x/arker-api-key"
    assert args.write_back  # the default: ExecStop's umount waits for the journal's push
    (stop,) = settings["[Service]ExecStop"]
    args = build_parser().parse_args(expand(stop)[1:])
    assert (args.command, args.mountpoint) == ("umount", "/home/someone/arker/my-vm")
    assert "ARKER_API_KEY" not in (UNITS / "arkerfs@.service").read_text().replace("$ARKER_API_KEY", "")


def test_serve_unit_command_parses_with_the_real_cli():
    settings = service_settings(UNITS / "arkerfs-serve.service")
    (start,) = settings["[Service]ExecStart"]
    args = build_parser().parse_args(expand(start)[1:])
    assert (args.command, args.port) == ("serve", 8600)
    assert settings["[Service]Restart"] == ["on-failure"]


# -- sd_notify, for real -----------------------------------------------------------------------------
def _receive(sock: socket.socket, proc: subprocess.Popen, log_path: str, timeout: float = 30) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            return sock.recv(4096).decode()
        except TimeoutError:
            if proc.poll() is not None:
                pytest.fail(f"daemon exited with {proc.returncode}:\n{open(log_path).read()}")
    pytest.fail(f"no notification within {timeout} s:\n{open(log_path).read()}")


@pytest.mark.parametrize("kind,mode", [("path", "write-back"), ("abstract", "write-through")])
def test_ready_only_once_the_mount_answers_and_stopping_on_sigterm(server, api, workdir, kind, mode):
    vm = api.fork()
    api.write_file(vm, "/home/user/hello.txt", b"hi")
    mnt = os.path.realpath(os.path.join(workdir, "mnt"))
    log_path = os.path.join(workdir, "daemon.log")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    if kind == "path":
        address = bound = os.path.join(workdir, "notify.sock")
    else:
        name = f"arkerfs-test-{os.getpid()}-{time.monotonic_ns()}"
        address, bound = f"@{name}", f"\0{name}"
    sock.bind(bound)
    sock.settimeout(0.2)
    env = env_for(workdir, server.api_key) | {"NOTIFY_SOCKET": address}
    proc = subprocess.Popen(daemon_command(vm, mnt, server.base_url, log_path, *WRITE_MODES[mode]), env=env,
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        first = _receive(sock, proc, log_path)
        # The first message is READY=1, and by then the kernel mount exists and answers.
        assert first.splitlines()[0] == "READY=1", first
        assert f"STATUS=mounted VM {vm} at {mnt}" in first.splitlines()
        assert runtime.mount_entry(mnt) == (f"arkerfs:{vm}", "fuse.arkerfs")
        assert os.stat(mnt).st_dev != os.stat(os.path.dirname(mnt)).st_dev
        with open(os.path.join(mnt, "hello.txt")) as f:
            assert f.read() == "hi"
        with open(os.path.join(mnt, "bye.txt"), "w") as f:
            f.write("pushed before the stop")
        proc.send_signal(signal.SIGTERM)
        stopping = _receive(sock, proc, log_path)
        assert "STOPPING=1" in stopping.splitlines(), stopping
        assert proc.wait(30) == 0
        assert runtime.mount_entry(mnt) is None
        assert api.read_file(vm, "/home/user/bye.txt") == b"pushed before the stop"
    finally:
        sock.close()
        teardown(proc, mnt)
    assert log_problems(open(log_path).read(), []) == []
