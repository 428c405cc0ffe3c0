"""Large reads through a real mount: one version per handle, and memory that does not grow
with the size of the files read (ranged chunks live in the spool, not in RAM)."""

from __future__ import annotations

import errno
import hashlib
import threading
import time

import pytest

from test_faults_mount import private_server
from tests.conftest import WRITE_MODES
from tests.mountutil import Api, mounted

MB = 1024 * 1024


def _sha256_in_vm(api, vm_id: str, name: str) -> str:
    return api.sh(vm_id, f"sha256sum /home/user/{name}").split()[0]


@pytest.mark.parametrize("mode", list(WRITE_MODES))
def test_a_handle_never_mixes_two_versions_of_a_replaced_file(server, api, mode):
    vm_id = api.fork()
    # 40 MiB, far above the test server's 64 KiB inline limit: read through ranged GETs.
    api.sh(vm_id, "cd /home/user && head -c 41943040 /dev/urandom > big && head -c 41943040 /dev/urandom > new")
    old, new = _sha256_in_vm(api, vm_id, "big"), _sha256_in_vm(api, vm_id, "new")
    with mounted(server, *WRITE_MODES[mode], vm_id=vm_id) as m:
        _read_across_a_replacement(m, api, old, new)


def _read_across_a_replacement(m, api, old: str, new: str) -> None:
    digest = hashlib.sha256()
    with open(m.p("big"), "rb", buffering=0) as f:
        digest.update(f.read(MB))
        api.sh(m.vm_id, "cd /home/user && mv new big")  # replaced inside the VM mid-read
        try:
            while block := f.read(MB):
                digest.update(block)
        except OSError as exc:  # refusing to go on is allowed; mixing is not
            assert exc.errno in (errno.ESTALE, errno.EIO), exc
            return
    got = digest.hexdigest()
    assert got != new, "the handle switched to the new version"
    assert got == old, "the handle returned a mix of the old and the new version"


def _read_until_refused(f, prefix: bytes) -> bytes:
    """The rest of ``f`` after ``prefix`` was read; asserts the read ends with ESTALE."""
    got = bytearray(prefix)
    with pytest.raises(OSError) as info:
        while block := f.read(MB):
            got += block
    assert info.value.errno == errno.ESTALE, info.value
    return bytes(got)


@pytest.mark.parametrize("mode", list(WRITE_MODES))
def test_a_file_changed_in_place_fails_the_handle_with_estale(server, api, mode):
    vm_id = api.fork()
    api.sh(vm_id, "head -c 41943040 /dev/urandom > /home/user/big")
    old = bytes.fromhex(api.sh(vm_id, "head -c 1048576 /home/user/big | xxd -p | tr -d '\\n'"))
    with mounted(server, *WRITE_MODES[mode], vm_id=vm_id) as m:
        with open(m.p("big"), "rb", buffering=0) as f:
            first = f.read(MB)
            assert first == old
            # Same inode, same size, other bytes near the end: no URL can serve the old ones.
            api.sh(vm_id, "printf XYZ | dd of=/home/user/big bs=1 seek=41000000 conv=notrunc status=none")
            got = _read_until_refused(f, first)
        assert len(got) < 41000000  # stopped before the changed bytes: no mix was returned


@pytest.mark.parametrize("mode", list(WRITE_MODES))
def test_a_renewed_url_of_a_replaced_file_fails_with_estale(tmp_path, mode):
    with private_server(tmp_path, "--presign-ttl", "2", "--inline-read-limit", "1024") as srv:
        api = Api(srv)
        vm_id = api.fork()
        api.sh(vm_id, "cd /home/user && head -c 41943040 /dev/urandom > big && head -c 41943040 /dev/urandom > new")
        old = api.sh(vm_id, "head -c 1048576 /home/user/big | sha256sum").split()[0]
        with mounted(srv, *WRITE_MODES[mode], vm_id=vm_id) as m:
            with open(m.p("big"), "rb", buffering=0) as f:
                first = f.read(MB)
                assert hashlib.sha256(first).hexdigest() == old
                api.sh(vm_id, "cd /home/user && mv new big")  # same size, another version
                time.sleep(2.5)  # the handle's URL expired: the next GET needs a fresh one
                f.seek(39 * MB)
                with pytest.raises(OSError) as info:
                    f.read(MB)
                assert info.value.errno == errno.ESTALE, info.value


def _rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError(f"no VmRSS for pid {pid}")


def test_streaming_large_files_keeps_the_daemon_small(server, api):
    vm_id = api.fork()
    names = [f"f{i}" for i in range(4)]
    api.sh(vm_id, "cd /home/user && for f in " + " ".join(names) + "; do head -c 60000000 /dev/urandom > $f; done")
    expected = {name: _sha256_in_vm(api, vm_id, name) for name in names}
    with mounted(server, vm_id=vm_id) as m:
        _read_all_sampling_rss(m, names, expected)


def _read_all_sampling_rss(m, names: list[str], expected: dict[str, str]) -> None:
    peak, done = [_rss_kib(m.proc.pid)], threading.Event()

    def sample() -> None:
        while not done.wait(0.05):
            peak.append(_rss_kib(m.proc.pid))

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        for name in names:
            digest = hashlib.sha256()
            with open(m.p(name), "rb") as f:
                while block := f.read(MB):
                    digest.update(block)
            assert digest.hexdigest() == expected[name], name
    finally:
        done.set()
        sampler.join()
    peak.append(_rss_kib(m.proc.pid))
    assert max(peak) < 120 * 1024, f"daemon RSS reached {max(peak) // 1024} MiB (started at {peak[0] // 1024} MiB)"
