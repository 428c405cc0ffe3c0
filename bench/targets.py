"""The filesystems under test, each behind its own delay proxy: arkerfs and sshfs.

A target starts its backend once (``arkerfs serve`` on a forked VM; a private ``sshd`` on
loopback exporting a temp directory), puts fixture trees on the remote side without going
through a mount (``seed``), and makes a fresh mount through a proxy for every measured run, so
each run starts cold. Everything it starts is stopped, and every mount unmounted, in ``close``.
"""

from __future__ import annotations

import os
import secrets
import shlex
import shutil
import socket
import subprocess
import sys
import tarfile
import time
from contextlib import ExitStack, contextmanager
from pathlib import Path

import trio

from arkerfs.client import Arker
from arkerfs.server.control import ServerProcess
from bench.proxy import DelayProxy

HOME = "/home/user"


def is_mounted(path: Path) -> bool:
    target = os.path.realpath(path)
    with open("/proc/self/mounts") as f:
        return any(line.split()[1] == target for line in f)


def force_unmount(path: Path) -> None:
    """Last resort when the polite unmount failed: a lazy unmount, so nothing stays mounted."""
    if is_mounted(path):
        subprocess.run(["umount", "-l", str(path)], stderr=subprocess.DEVNULL, check=False)


def _tar_of(tree: Path, scratch: Path) -> Path:
    archive = scratch / f"seed-{secrets.token_hex(4)}.tar"
    with tarfile.open(archive, "w") as tar:
        for child in sorted(tree.iterdir()):
            tar.add(child, arcname=child.name)
    return archive


class ArkerfsTarget:
    """arkerfs over its own local server, mounted ``--write-through`` (target ``arkerfs``) or, with
    ``write_back``, ``--write-back`` (target ``arkerfs-wb``, with a server of its own so the call
    counts never mix). The mode is always named: neither row depends on the default."""

    def __init__(self, workdir: Path, *, write_back: bool = False) -> None:
        self.name = "arkerfs-wb" if write_back else "arkerfs"
        self.write_back = write_back
        self.workdir = workdir / self.name
        self.workdir.mkdir()
        self.server = ServerProcess(data_dir=self.workdir / "data", api_key="ark_bench_" + secrets.token_hex(8),
                                    log_path=self.workdir / "server.log")
        self.vm_id = ""
        self.has_sync = _has_subcommand("sync")
        self._mounts = 0
        self.last_umount_s = 0.0

    def start(self) -> None:
        self.server.start()
        self.vm_id = trio.run(self._fork)
        self.vm_shell_calls = self._calls_of_one_vm_shell()

    def _calls_of_one_vm_shell(self) -> dict[str, int]:
        """What one ``vm_shell`` costs the server (counted once, with no mount running), so a
        measurement that changes the VM can count the mount's own calls apart from its changes."""
        self.reset_calls()
        self.vm_shell("true")
        calls = self.calls()
        self.reset_calls()
        return calls

    def close(self) -> None:
        self.server.stop()

    def _sdk(self, base_url: str) -> Arker:
        return Arker(api_key=self.server.api_key, base_url=base_url, list_base_url=base_url)

    async def _fork(self) -> str:
        async with self._sdk(self.server.base_url) as arker:
            vm = await arker.vm("arkuntu").fork(name="bench-side-by-side")
            return vm.id

    # -- remote setup, straight to the server (not through the proxy, not counted) --

    def seed(self, tree: Path | None, remote_dir: str) -> None:
        """Make ``remote_dir`` (relative to the home) hold a copy of ``tree`` (or be empty)."""
        archive = _tar_of(tree, self.workdir) if tree is not None else None
        try:
            trio.run(self._seed, archive, remote_dir)
        finally:
            if archive is not None:
                archive.unlink()

    async def _seed(self, archive: Path | None, remote_dir: str) -> None:
        async with self._sdk(self.server.base_url) as arker:
            vm = arker.vm(self.vm_id)
            target = f"{HOME}/{remote_dir}"
            script = f"rm -rf {shlex.quote(target)} && mkdir -p {shlex.quote(target)}"
            if archive is not None:
                staged = f"{HOME}/.bench-seed.tar"
                await vm.sync.write_file(staged, archive)
                script += f" && tar -xf {shlex.quote(staged)} -C {shlex.quote(target)} && rm -f {shlex.quote(staged)}"
            result = await vm.run(script, session_id=1, timeout=600)
            if result.exit_code != 0:
                raise RuntimeError(f"seeding {remote_dir} failed: {result.stderr.decode(errors='replace')}")

    def vm_path(self, remote_dir: str) -> str:
        return f"{HOME}/{remote_dir}"

    def vm_shell(self, command: str) -> None:
        """``command`` in the VM, straight to the server (a change made inside the VM)."""
        async def run() -> None:
            async with self._sdk(self.server.base_url) as arker:
                result = await arker.vm(self.vm_id).run(command, session_id=1, timeout=60)
                if result.exit_code != 0:
                    raise RuntimeError(f"{command} failed: {result.stderr.decode(errors='replace')}")
        trio.run(run)

    def remove(self, remote_dir: str) -> None:
        async def rm() -> None:
            async with self._sdk(self.server.base_url) as arker:
                await arker.vm(self.vm_id).run(f"rm -rf {shlex.quote(f'{HOME}/{remote_dir}')}", session_id=1,
                                               timeout=600)
        trio.run(rm)

    @property
    def backend_port(self) -> int:
        return self.server.port

    def put_file(self, local: Path, remote_path: str) -> None:
        async def put() -> None:
            async with self._sdk(self.server.base_url) as arker:
                await arker.vm(self.vm_id).sync.write_file(f"{HOME}/{remote_path}", local)
        trio.run(put)

    # -- measured side --

    def reset_calls(self) -> None:
        self.server.control.reset_stats()

    def calls(self) -> dict[str, int]:
        return self.server.control.nonzero_calls()

    @contextmanager
    def mount(self, proxy: DelayProxy):
        """A fresh mount through ``proxy``, with its own state and spool dirs (a cold cache)."""
        self._mounts += 1
        base = self.workdir / f"mount{self._mounts}"
        mnt = base / "mnt"
        mnt.mkdir(parents=True)
        env = self._env(base)
        subprocess.run([*_ARKERFS, "mount", self.vm_id, str(mnt), "--base-url", proxy.url,
                        "--list-base-url", proxy.url, "--spool-dir", str(base / "spool"),
                        "--log-file", str(base / "mount.log"), "--write-back" if self.write_back else "--write-through"],
                       env=env, check=True, stdout=subprocess.DEVNULL)
        try:
            yield mnt
        finally:
            self.last_umount_s = self._umount(mnt, env)
            if not is_mounted(mnt):  # never rmtree through a live mount
                shutil.rmtree(base, ignore_errors=True)

    def push(self, mnt: Path) -> float | None:
        """Seconds `arkerfs sync MOUNTPOINT` takes; None while that command does not exist."""
        if not self.has_sync:
            return None
        start = time.perf_counter()
        subprocess.run([*_ARKERFS, "sync", str(mnt)], env=self._env(mnt.parent), check=True)
        return time.perf_counter() - start

    def _env(self, base: Path) -> dict[str, str]:
        # The key goes to the arkerfs commands only, never to the workload's commands.
        return {**os.environ, "ARKER_API_KEY": self.server.api_key, "XDG_RUNTIME_DIR": str(base),
                "XDG_CACHE_HOME": str(base), "XDG_STATE_HOME": str(base)}

    def _umount(self, mnt: Path, env: dict[str, str]) -> float:
        start = time.perf_counter()
        try:
            subprocess.run([*_ARKERFS, "umount", str(mnt)], env=env, check=True, timeout=900,
                           stdout=subprocess.DEVNULL)
        finally:
            force_unmount(mnt)
        return time.perf_counter() - start

    # -- SDK alone, through the same proxy --

    def sdk_write(self, proxy: DelayProxy, local: Path, remote_path: str) -> None:
        async def write() -> None:
            async with self._sdk(proxy.url) as arker:
                await arker.vm(self.vm_id).sync.write_file(f"{HOME}/{remote_path}", local)
        trio.run(write)

    def sdk_read(self, proxy: DelayProxy, remote_path: str) -> int:
        async def read() -> int:
            async with self._sdk(proxy.url) as arker:
                return len(await arker.vm(self.vm_id).sync.read_file(f"{HOME}/{remote_path}"))
        return trio.run(read)


class SshfsTarget:
    """sshfs against a private sshd on 127.0.0.1 (own host key, own authorized_keys)."""

    name = "sshfs"

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir / "sshfs"
        self.workdir.mkdir()
        self.export = self.workdir / "export"
        self.export.mkdir()
        self.port = 0
        self.sshd: subprocess.Popen | None = None
        self._made_privsep_dir = False
        self._mounts = 0
        self.last_umount_s = 0.0

    @staticmethod
    def available() -> str | None:
        """None when sshfs can run here, else why not."""
        missing = [tool for tool in ("sshfs", "ssh", "ssh-keygen") if not shutil.which(tool)]
        if not _sshd_binary():
            missing.append("sshd")
        return f"not installed: {', '.join(missing)} (make bench-deps)" if missing else None

    def start(self) -> None:
        keys = self.workdir / "keys"
        keys.mkdir(mode=0o700)
        for name in ("host_key", "client_key"):
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(keys / name)], check=True)
        shutil.copy(keys / "client_key.pub", keys / "authorized_keys")
        self.client_key = keys / "client_key"
        self.port = _free_port()
        config = self.workdir / "sshd_config"
        config.write_text("\n".join([
            "ListenAddress 127.0.0.1", f"Port {self.port}", f"HostKey {keys / 'host_key'}",
            f"AuthorizedKeysFile {keys / 'authorized_keys'}", f"PidFile {self.workdir / 'sshd.pid'}",
            "PermitRootLogin prohibit-password", "PubkeyAuthentication yes", "PasswordAuthentication no",
            "KbdInteractiveAuthentication no", "UsePAM no",
            # The keys live under /tmp, which is world-writable: StrictModes would refuse them.
            "StrictModes no", "Subsystem sftp internal-sftp", "LogLevel ERROR", ""]))
        if not os.path.isdir("/run/sshd"):  # sshd's privilege-separation dir, made by its service
            os.makedirs("/run/sshd", mode=0o755)
            self._made_privsep_dir = True
        self.sshd = subprocess.Popen([_sshd_binary(), "-D", "-e", "-f", str(config), "-p", str(self.port)],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=open(self.workdir / "sshd.log", "ab"))
        _wait_for_port(self.port, self.sshd, "sshd")

    def close(self) -> None:
        if self.sshd is not None and self.sshd.poll() is None:
            self.sshd.terminate()
            try:
                self.sshd.wait(10)
            except subprocess.TimeoutExpired:
                self.sshd.kill()
                self.sshd.wait()
        if self._made_privsep_dir:
            shutil.rmtree("/run/sshd", ignore_errors=True)

    def seed(self, tree: Path | None, remote_dir: str) -> None:
        target = self.export / remote_dir
        shutil.rmtree(target, ignore_errors=True)
        if tree is None:
            target.mkdir(parents=True)
        else:
            shutil.copytree(tree, target, symlinks=True)

    def remove(self, remote_dir: str) -> None:
        shutil.rmtree(self.export / remote_dir, ignore_errors=True)

    def vm_path(self, remote_dir: str) -> str:
        return str(self.export / remote_dir)

    def vm_shell(self, command: str) -> None:
        """``command`` on the exported directory itself (a change made on the server side)."""
        subprocess.run(["bash", "-c", command], check=True, stdin=subprocess.DEVNULL)

    @property
    def backend_port(self) -> int:
        return self.port

    def put_file(self, local: Path, remote_path: str) -> None:
        (self.export / remote_path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(local, self.export / remote_path)

    def reset_calls(self) -> None:
        pass

    def calls(self) -> dict[str, int]:
        return {}

    vm_shell_calls: dict[str, int] = {}  # a change on the export costs sshfs's server nothing countable

    def push(self, mnt: Path) -> float | None:
        return None  # sshfs writes through: close() waits for the server's replies

    @contextmanager
    def mount(self, proxy: DelayProxy):
        self._mounts += 1
        base = self.workdir / f"mount{self._mounts}"
        mnt = base / "mnt"
        mnt.mkdir(parents=True)
        options = ",".join([f"IdentityFile={self.client_key}", "StrictHostKeyChecking=no",
                            "UserKnownHostsFile=/dev/null", "BatchMode=yes", "LogLevel=ERROR"])
        # Foreground, so the process is ours to stop; the mount is live once it shows up.
        proc = subprocess.Popen(["sshfs", "-f", "-F", "/dev/null", "-p", str(proxy.port), "-o", options,
                                 f"root@127.0.0.1:{self.export}", str(mnt)],
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=open(base / "sshfs.log", "ab"))
        try:
            deadline = time.monotonic() + 30
            while not is_mounted(mnt):
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"sshfs did not mount: {(base / 'sshfs.log').read_text().strip()}")
                time.sleep(0.02)
            yield mnt
        finally:
            start = time.perf_counter()
            subprocess.run(["fusermount3", "-u", str(mnt)], stderr=subprocess.DEVNULL, check=False)
            force_unmount(mnt)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            self.last_umount_s = time.perf_counter() - start
            if not is_mounted(mnt):
                shutil.rmtree(base, ignore_errors=True)


_ARKERFS = [sys.executable, "-m", "arkerfs"]


def _has_subcommand(name: str) -> bool:
    probe = subprocess.run([*_ARKERFS, name, "--help"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return probe.returncode == 0


def _sshd_binary() -> str | None:
    return shutil.which("sshd") or next((p for p in ("/usr/sbin/sshd", "/sbin/sshd") if os.path.exists(p)), None)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for_port(port: int, proc: subprocess.Popen, what: str, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode} before listening")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{what} did not listen on port {port} in {timeout:g} s")


@contextmanager
def started(target):
    """``start`` then, whatever happens, ``close``."""
    with ExitStack() as stack:
        stack.callback(target.close)
        target.start()
        yield target
