"""Crash safety of the local server: ``kill -9`` while uploads (inline and presigned PUT + commit)
are in flight, then a restart on the same port and data dir.

Every upload is installed by writing a temporary file outside the VM's home and renaming it over
the target, so each target holds one complete version, and no temporary name is ever visible
inside the VM (not to a ``run``, not through a mount); the restart sweeps the leftovers.
"""

from __future__ import annotations

import hashlib
import os
import random
import threading
import time

import trio

from arkerfs.client import Arker, ArkerError
from arkerfs.client.retry import RetryPolicy
from tests.conftest import WRITE_MODES
from tests.mountutil import Api, mounted
from tests.test_faults_mount import private_server
from tests.test_faults_outage import restart

MB = 1024 * 1024
FILES = {"inline.bin": 3 * MB, "presigned.bin": 24 * MB}  # at most / over the 4 MiB inline limit


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Uploader(threading.Thread):
    """Replaces each file with its versions A, B, A, ... until stopped or the server dies."""

    def __init__(self, srv, vm: str, versions: dict[str, list[bytes]]) -> None:
        super().__init__(daemon=True)
        self.srv, self.vm, self.versions = srv, vm, versions
        self.stop = threading.Event()
        self.started_writes = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        async def main():
            async with Arker(self.srv.api_key, base_url=self.srv.base_url, retry=RetryPolicy(attempts=1)) as arker:
                sync = arker.vm(self.vm).sync
                k = 0
                while not self.stop.is_set():
                    for name, pair in self.versions.items():
                        self.started_writes += 1
                        await sync.write_file(f"/home/user/{name}", pair[k % 2])
                    k += 1

        try:
            trio.run(main)
        except ArkerError as exc:  # the server went away under it: expected
            self.error = exc


def test_kill_9_during_uploads_leaves_whole_files_and_no_temp_names(tmp_path):
    rng = random.Random(7)
    versions = {name: [rng.randbytes(size), rng.randbytes(size)] for name, size in FILES.items()}
    allowed = {name: {digest(v) for v in pair} for name, pair in versions.items()}
    with private_server(tmp_path) as srv:
        api = Api(srv)
        vm = api.fork()
        for name, pair in versions.items():
            api.write_file(vm, f"/home/user/{name}", pair[1])
        api.sh(vm, "echo keep > /home/user/other")
        vm_dir = srv.data_dir / "vms" / vm
        cut_off = 0
        for _ in range(5):
            uploader = Uploader(srv, vm, versions)
            uploader.start()
            time.sleep(rng.uniform(0.3, 1.5))
            srv.kill()
            uploader.join(30)
            assert not uploader.is_alive()
            cut_off += uploader.error is not None
            restart(srv, 0)
            assert not (vm_dir / "tmp").exists()  # temp files of cut-off installs: swept at start
            for name in FILES:
                assert digest(api.read_file(vm, f"/home/user/{name}")) in allowed[name], name
            listing = api.sh(vm, "ls -A /home/user").split()
            assert not [n for n in listing if "arkerfs-tmp" in n], listing
            assert api.read_file(vm, "/home/user/other") == b"keep\n"
        assert cut_off >= 4  # the kills hit uploads in flight, not an idle server
        for flags in WRITE_MODES.values():  # what a mount lists: real names only, in either mode
            with mounted(srv, *flags, vm_id=vm) as m:
                names = os.listdir(m.path)
                assert {"inline.bin", "presigned.bin", "other"} <= set(names)
                assert not [n for n in names if "arkerfs-tmp" in n], names


def test_uploads_never_show_temporary_names_in_the_vm(tmp_path):
    """While a large upload is being installed, a listing inside the VM shows only real names."""
    data = random.Random(3).randbytes(40 * MB)
    with private_server(tmp_path) as srv:
        api = Api(srv)
        vm = api.fork()
        seen: list[str] = []
        stop = threading.Event()

        def watch() -> None:
            while not stop.is_set():
                seen.extend(api.sh(vm, "ls -A /home/user").split())

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        try:
            for _ in range(3):
                api.write_file(vm, "/home/user/big.bin", data)
        finally:
            stop.set()
            watcher.join(30)
        assert seen and not [n for n in seen if "arkerfs-tmp" in n]
        assert os.listdir(srv.data_dir / "vms" / vm / "tmp") == []  # used, and left clean
