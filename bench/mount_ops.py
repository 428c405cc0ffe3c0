"""Everyday workloads through a real mount: calls and wall time at a given latency.

The numbers to watch are the API calls: they are deterministic, and at real-world latencies
(20-100 ms per call) they decide the wall time. Later work (batching, write-back) is measured
against these rows, so the mount is ``--write-through`` (write-back's rows: ``bench/sidebyside.py``).
"""

from __future__ import annotations

import os
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import trio

from arkerfs.client import Arker
from bench.harness import Meter, local_server, print_table

SMALL_FILES = 100


async def _prepare_vm(proc) -> str:
    """A fork with a directory of small files and one 20 MB file, made inside the VM."""
    async with Arker(api_key=proc.api_key, base_url=proc.base_url, list_base_url=proc.base_url) as arker:
        vm = await arker.vm("arkuntu").fork(name="bench-mount")
        script = (
            f"mkdir -p /home/user/many && cd /home/user/many && "
            f"for i in $(seq 1 {SMALL_FILES}); do printf 'line %s\\n' $i > f$i.txt; done && "
            f"head -c 20000000 /dev/urandom > /home/user/big.bin"
        )
        result = await vm.run(script, session_id=1, timeout=120)
        if result.exit_code != 0:
            raise RuntimeError(f"preparing the VM failed: {result.stderr.decode(errors='replace')}")
        return vm.id


@contextmanager
def _mount(proc, vm_id: str, workdir: Path):
    mnt = workdir / "mnt"
    mnt.mkdir()
    env = {**os.environ, "ARKER_API_KEY": proc.api_key, "XDG_RUNTIME_DIR": str(workdir),
           "XDG_CACHE_HOME": str(workdir), "XDG_STATE_HOME": str(workdir)}
    arkerfs = [sys.executable, "-m", "arkerfs"]
    subprocess.run([*arkerfs, "mount", "--write-through", "--base-url", proc.base_url, vm_id, str(mnt)], env=env,
                   check=True)
    try:
        yield mnt
    finally:
        subprocess.run([*arkerfs, "umount", str(mnt)], env=env, check=True)


def _sh(command: str, cwd: Path) -> None:
    subprocess.run(command, shell=True, cwd=cwd, check=True, stdout=subprocess.DEVNULL)


def _make_local_tree(root: Path) -> Path:
    tree = root / "tree"
    for d in range(10):
        sub = tree / f"dir{d}"
        sub.mkdir(parents=True)
        for i in range(SMALL_FILES // 10):
            (sub / f"file{i}.txt").write_bytes(os.urandom(512))
    return tree


def run(latency_ms: int, tmpdir: str) -> None:
    workdir = Path(tmpdir) / "mount-bench"
    workdir.mkdir()
    tree = _make_local_tree(workdir)
    with local_server(latency_ms) as proc:
        vm_id = trio.run(_prepare_vm, proc)
        meter = Meter(proc.control)
        with _mount(proc, vm_id, workdir) as mnt:
            with meter.measure(f"ls -l dir of {SMALL_FILES} files"):
                _sh("ls -l many", mnt)
            with meter.measure(f"stat each of those {SMALL_FILES} files"):
                for name in os.listdir(mnt / "many"):
                    os.lstat(mnt / "many" / name)
            with meter.measure(f"cat {SMALL_FILES} small files (cold)"):
                _sh("cat many/*", mnt)
            with meter.measure(f"cat {SMALL_FILES} small files (again)"):
                _sh("cat many/*", mnt)
            with meter.measure("cat 20 MB file (cold)"):
                _sh("cat big.bin > /dev/null", mnt)
            with meter.measure(f"cp -r tree of {SMALL_FILES} files in 10 dirs"):
                _sh(f"cp -r {tree} copied", mnt)
            with meter.measure(f"rsync -a same tree"):
                _sh(f"rsync -a {tree}/ synced/", mnt)
            with meter.measure("rsync -a again (no changes)"):
                _sh(f"rsync -a {tree}/ synced/", mnt)
            with meter.measure("write 20 MB file (cp)"):
                _sh("cp big.bin big-copy.bin", mnt)
            with meter.measure("find . | wc -l"):
                _sh("find . | wc -l", mnt)
            with meter.measure("rm -r copied"):
                _sh("rm -r copied", mnt)
    print_table(f"Mount workloads at {latency_ms} ms injected latency per call", meter.results)
