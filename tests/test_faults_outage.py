"""Network outage: the server goes away (SIGKILL) and comes back on the same port and data dir.

Policy under test (docs/RELIABILITY.md): a request that cannot connect never left, so the mount
retries it, whatever it is, with capped backoff for up to ``--outage-timeout`` seconds (default
60); then the operation fails with EIO. Requests cut off mid-flight are replayed only when safe
(uploads, reads) and otherwise reconciled against the remote state once it answers again.
"""

from __future__ import annotations

import errno
import hashlib
import os
import random
import subprocess
import time

import pytest

from tests.conftest import WRITE_MODES
from tests.mountutil import Api, mounted
from tests.test_faults_mount import RETRY_NOISE, allow, private_server

MB = 1024 * 1024
OUTAGE_NOISE = (*RETRY_NOISE, r"WARNING arkerfs\.client: .*server unreachable",
                r"WARNING arkerfs\.client: .*of outage",
                # libfuse answering a request the kernel already dropped (its caller got EIO
                # from the outage and went on): nothing is lost, pyfuse3 logs it at ERROR
                r"ERROR pyfuse3: fuse_releasedir\(\): fuse_reply_\* failed with No such file or directory")


def restart(srv, down_for: float) -> None:
    """Bring a killed server back on its port after ``down_for`` s (retrying a busy port)."""
    time.sleep(down_for)
    deadline = time.monotonic() + 15
    while True:
        try:
            srv.start()
            return
        except RuntimeError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def make_tree(root: str, rng: random.Random) -> None:
    for d in range(4):
        os.makedirs(os.path.join(root, f"dir{d}", "sub"))
        for i in range(8):
            with open(os.path.join(root, f"dir{d}", "sub" if i % 2 else "", f"file{i}.dat"), "wb") as f:
                f.write(rng.randbytes(rng.randrange(0, 150_000)))
    with open(os.path.join(root, "big.bin"), "wb") as f:
        f.write(rng.randbytes(6 * MB))
    os.symlink("dir0/file0.dat", os.path.join(root, "link"))
    os.chmod(os.path.join(root, "dir1", "file2.dat"), 0o755)


def local_hashes(root: str) -> dict[str, str]:
    out = {}
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            path = os.path.join(dirpath, name)
            if not os.path.islink(path):
                with open(path, "rb") as f:
                    out[os.path.relpath(path, root)] = hashlib.sha256(f.read()).hexdigest()
    return out


def remote_hashes(api: Api, vm: str, root: str) -> dict[str, str]:
    text = api.sh(vm, f"cd {root} && find . -type f -exec sha256sum {{}} +")
    return {line[66:].removeprefix("./"): line[:64] for line in text.splitlines()}


def rsync(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["rsync", *args], capture_output=True, text=True, timeout=150)


@pytest.mark.parametrize("mode", list(WRITE_MODES))
def test_outage_past_the_deadline_is_eio_then_the_mount_recovers(tmp_path, mode):
    with private_server(tmp_path) as srv:
        api = Api(srv)
        with mounted(srv, *WRITE_MODES[mode], "--outage-timeout", "3") as m:
            allow(m, *OUTAGE_NOISE)
            fd = os.open(m.p("kept"), os.O_WRONLY | os.O_CREAT)
            os.write(fd, b"written during the outage")
            spare = os.dup(fd)
            srv.kill()
            started = time.monotonic()
            if mode == "write-through":
                assert errno_of(os.close, fd) == errno.EIO  # the upload could not reach the server
            else:
                os.close(fd)  # write-back: in the local journal; the outage only delays the push
                time.sleep(3.5)  # past the cache TTL, so the lookup below must ask the VM
                started = time.monotonic()
            assert errno_of(os.stat, m.p("unknown")) == errno.EIO  # a lookup needs the VM
            elapsed = time.monotonic() - started
            waits = 2 if mode == "write-through" else 1
            assert waits * 3 - 0.5 <= elapsed <= waits * 3 + 10, elapsed  # each waited the 3 s deadline
            restart(srv, 0)
            os.close(spare)  # the buffer stayed dirty: this close pushes it
            assert not os.path.exists(m.p("unknown"))
            assert os.listdir(m.path).count("kept") == 1
        assert api.read_file(m.vm_id, "/home/user/kept") == b"written during the outage"


@pytest.mark.slow
@pytest.mark.parametrize("mode", list(WRITE_MODES))
def test_30_second_outage_during_rsync_blocks_then_completes_and_converges(tmp_path, mode):
    src = str(tmp_path / "src")
    make_tree(src, random.Random(30))
    with private_server(tmp_path) as srv:
        api = Api(srv)
        with mounted(srv, *WRITE_MODES[mode]) as m:  # default --outage-timeout 60
            allow(m, *OUTAGE_NOISE, r"WARNING arkerfs\.fs\.remote: ambiguous failure")
            dest = m.p("copy") + "/"
            proc = subprocess.Popen(["rsync", "-a", f"{src}/", dest], stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True)
            try:
                # kill the server in the middle of the copy
                deadline = time.monotonic() + 20
                while not (os.path.isdir(m.p("copy", "dir1")) and os.listdir(m.p("copy", "dir1"))):
                    assert proc.poll() is None, "rsync finished before the outage"
                    assert time.monotonic() < deadline
                    time.sleep(0.02)
                srv.kill()
                killed = time.monotonic()
                restart(srv, 30)
                out, err = proc.communicate(timeout=90)
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
            finished = time.monotonic() - killed
            # Operations blocked through the outage and then completed. The only errors allowed
            # are EIO from a mutating run that was in flight when the server died and that the
            # remote state shows did not happen (reconciled, never replayed blindly).
            problems = [line for line in err.splitlines()
                        if line.startswith("rsync:") and "Input/output error (5)" not in line]
            assert proc.returncode in (0, 23) and not problems, (proc.returncode, err)
            assert 30 <= finished < 30 + 60, finished  # no hang past the 60 s outage deadline
            assert "server unreachable" in m.log()
            again = rsync("-a", f"{src}/", dest)
            assert again.returncode == 0, again.stderr
            check = rsync("-a", "--checksum", "--dry-run", "--itemize-changes", f"{src}/", dest)
            assert (check.returncode, check.stdout) == (0, ""), check
            assert os.readlink(m.p("copy", "link")) == "dir0/file0.dat"
        assert remote_hashes(api, m.vm_id, "/home/user/copy") == local_hashes(src)


def errno_of(fn, *args) -> int:
    with pytest.raises(OSError) as info:
        fn(*args)
    return info.value.errno
