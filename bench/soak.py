"""Soak: worker processes reading and writing their own files through ONE mount, under faults.

``python -m bench.soak --seconds 60 --workers 8`` starts a throwaway local server, forks a VM,
mounts it (``arkerfs mount --foreground``), injects ``--fail-rate`` failures and ``--latency-ms``
latency on every API and blob call, and lets ``--workers`` processes run a random mix of
overwrites (sizes from bytes to > 4 MiB), appends, atomic replace-by-rename, moves, unlinks and
read-backs on files in their own directory. Meanwhile the daemon's RSS is sampled every second.

At the end the faults are cleared and every file is checked through the API (not the mount)
against what its worker last wrote and closed; each worker's directory must hold exactly the
files it believes exist. Any error a local filesystem would not give (EIO...) is a failure.
The tests (tests/test_soak.py) run the same driver for a shorter time.
"""

from __future__ import annotations

import argparse
import errno
import hashlib
import multiprocessing
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from queue import Empty

MB = 1024 * 1024
FILES_PER_WORKER = 5
# Bytes a worker writes in one overwrite: mostly small, sometimes large, now and then > 4 MiB
# (which takes the presigned path and spills the daemon's write buffer to the spool).
SIZE_CLASSES = ((0.60, 0, 16 * 1024), (0.25, 16 * 1024, 512 * 1024), (0.12, 512 * 1024, 2 * MB),
                (0.03, 4 * MB + 1, 6 * MB))
OPS = (("overwrite", 0.35), ("append", 0.20), ("read", 0.25), ("replace", 0.10), ("move", 0.05),
       ("unlink", 0.05))


@dataclass
class WorkerResult:
    worker: int
    ops: dict[str, int] = field(default_factory=dict)
    errors: list[tuple[str, str, int, str]] = field(default_factory=list)  # op, name, errno, text
    corrupt: list[str] = field(default_factory=list)  # read-backs that differed from the model
    files: dict[str, tuple[int, str] | str | None] = field(default_factory=dict)  # see _worker
    bytes_written: int = 0


def _digest(data: bytes) -> tuple[int, str]:
    return len(data), hashlib.sha256(data).hexdigest()


def _size(rng: random.Random) -> int:
    x = rng.random()
    for share, lo, hi in SIZE_CLASSES:
        if x < share:
            return rng.randint(lo, hi)
        x -= share
    return 0


def _worker(index: int, root: str, seconds: float, seed: int, out) -> None:
    rng = random.Random(seed * 1000 + index)
    result = WorkerResult(index)
    home = os.path.join(root, f"w{index}")
    contents: dict[str, bytes] = {}  # what this worker last wrote and closed, per name
    names = [f"f{i}" for i in range(FILES_PER_WORKER)]
    uncertain: set[str] = set()
    deadline = time.monotonic() + seconds

    def path(name: str) -> str:
        return os.path.join(home, name)

    def put(name: str, data: bytes, mode: str = "wb") -> None:
        with open(path(name), mode) as f:
            f.write(data)
        result.bytes_written += len(data)

    ops, weights = zip(*OPS)
    while time.monotonic() < deadline:
        op = rng.choices(ops, weights)[0]
        name = rng.choice(names)
        target = None
        result.ops[op] = result.ops.get(op, 0) + 1
        try:
            if op == "overwrite" or (name not in contents and op in ("append", "read", "move", "unlink")):
                data = rng.randbytes(_size(rng))
                contents.pop(name, None)  # unknown until the close succeeds
                put(name, data)
                contents[name] = data
            elif op == "append":
                data = rng.randbytes(rng.randint(1, 64 * 1024))
                old = contents.pop(name)
                put(name, data, "ab")
                contents[name] = old + data
            elif op == "read":
                with open(path(name), "rb") as f:
                    got = f.read()
                if got != contents[name]:
                    result.corrupt.append(f"{name}: read {_digest(got)}, expected {_digest(contents[name])}")
            elif op == "replace":  # the editor pattern: write a temp file, rename it over the target
                data = rng.randbytes(_size(rng))
                put(name + ".tmp", data)
                contents.pop(name, None)
                os.rename(path(name + ".tmp"), path(name))
                contents[name] = data
            elif op == "move":
                target = rng.choice([n for n in names if n != name])
                data = contents.pop(name)
                contents.pop(target, None)
                os.rename(path(name), path(target))
                contents[target] = data
            elif op == "unlink":
                contents.pop(name)
                os.unlink(path(name))
        except OSError as exc:
            result.errors.append((op, name, exc.errno or 0, exc.strerror or str(exc)))
            uncertain.update(names)  # whatever state the failed op left: not comparable
            contents.clear()
        else:
            uncertain.discard(name)
            if target is not None:
                uncertain.discard(target)
    for name in names:  # (size, sha256) of the last content written and closed, "absent", or None
        result.files[name] = None if name in uncertain else _digest(contents[name]) if name in contents else "absent"
    out.put(result)


def drive(mountpoint: str, seconds: float, workers: int, seed: int = 1) -> list[WorkerResult]:
    """Run ``workers`` processes on ``mountpoint`` for ``seconds``; returns their results."""
    for i in range(workers):
        os.makedirs(os.path.join(mountpoint, f"w{i}"), exist_ok=True)
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(i, mountpoint, seconds, seed, queue)) for i in range(workers)]
    for p in procs:
        p.start()
    results: list[WorkerResult] = []
    give_up = time.monotonic() + seconds + 900
    while len(results) < len(procs):
        try:
            results.append(queue.get(timeout=1))
        except Empty:
            dead = [p for p in procs if p.exitcode not in (None, 0)]
            if dead or time.monotonic() > give_up:
                for p in procs:
                    p.kill()
                raise RuntimeError(f"soak workers failed: exit codes {[p.exitcode for p in procs]}")
    for p in procs:
        p.join(60)
    return sorted(results, key=lambda r: r.worker)


def verify(results: list[WorkerResult], read_file, list_dir) -> list[str]:
    """Compare every file with its worker's model through the API; returns the mismatches.

    ``read_file(rel) -> bytes`` and ``list_dir(rel) -> list[str]`` read the VM directly."""
    problems = []
    for r in results:
        expected_names = sorted(n for n, v in r.files.items() if v != "absent")
        listed = sorted(list_dir(f"w{r.worker}"))
        unknown = {n for n, v in r.files.items() if v is None}
        extra = [n for n in listed if n not in expected_names and n.removesuffix(".tmp") not in unknown]
        missing = [n for n in expected_names if n not in listed and n not in unknown]
        if extra or missing:
            problems.append(f"w{r.worker}: listing {listed}, expected {expected_names} (extra {extra}, missing {missing})")
        for name, want in sorted(r.files.items()):
            if want is None or want == "absent":
                continue
            got = _digest(read_file(f"w{r.worker}/{name}"))
            if got != want:
                problems.append(f"w{r.worker}/{name}: remote {got}, last written {want}")
    return problems


class RssSampler:
    """VmRSS of ``pid`` (bytes) every ``interval`` seconds, on a thread."""

    def __init__(self, pid: int, interval: float = 1.0) -> None:
        self.pid = pid
        self.interval = interval
        self.samples: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _read(self) -> int | None:
        try:
            with open(f"/proc/{self.pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        return int(line.split()[1]) * 1024
        except OSError:
            return None
        return None

    def _run(self) -> None:
        while not self._stop.is_set():
            value = self._read()
            if value is not None:
                self.samples.append(value)
            self._stop.wait(self.interval)

    def __enter__(self) -> "RssSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(5)
        value = self._read()
        if value is not None:
            self.samples.append(value)


def table(results: list[WorkerResult], rss: list[int], seconds: float) -> str:
    kinds = [op for op, _ in OPS]
    head = f"{'worker':>6} " + " ".join(f"{k:>9}" for k in kinds) + f" {'total':>7} {'MB written':>10} {'errors':>6} {'corrupt':>7}"
    lines = [head, "-" * len(head)]
    for r in results:
        lines.append(f"{r.worker:>6} " + " ".join(f"{r.ops.get(k, 0):>9}" for k in kinds)
                     + f" {sum(r.ops.values()):>7} {r.bytes_written / MB:>10.1f} {len(r.errors):>6} {len(r.corrupt):>7}")
    total = sum(sum(r.ops.values()) for r in results)
    lines.append(f"{'all':>6} " + " ".join(f"{sum(r.ops.get(k, 0) for r in results):>9}" for k in kinds)
                 + f" {total:>7} {sum(r.bytes_written for r in results) / MB:>10.1f}"
                 f" {sum(len(r.errors) for r in results):>6} {sum(len(r.corrupt) for r in results):>7}")
    lines.append(f"{total / seconds:.1f} ops/s over {seconds:.0f} s")
    if rss:
        lines.append(f"daemon RSS: min {min(rss) / MB:.1f} MiB, max {max(rss) / MB:.1f} MiB, "
                     f"final {rss[-1] / MB:.1f} MiB ({len(rss)} samples)")
    for r in results:
        for op, name, code, text in r.errors:
            lines.append(f"  w{r.worker} {op} {name}: {errno.errorcode.get(code, code)} {text}")
        for line in r.corrupt:
            lines.append(f"  w{r.worker} CORRUPT {line}")
    return "\n".join(lines)


# -- the standalone run -------------------------------------------------------------------------
def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.soak")
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--fail-rate", type=float, default=0.05)
    parser.add_argument("--latency-ms", type=int, default=20)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()

    import trio

    from arkerfs.client import Arker
    from arkerfs.mount import runtime
    from bench.harness import local_server

    with local_server(0) as server, tempfile.TemporaryDirectory(prefix="arkerfs-soak-") as tmp:
        async def api(fn):
            async with Arker(server.api_key, base_url=server.base_url, list_base_url=server.base_url) as arker:
                return await fn(arker)

        vm_id = trio.run(api, lambda a: _fork(a))
        mnt = os.path.join(tmp, "mnt")
        os.mkdir(mnt)
        log = os.path.join(tmp, "daemon.log")
        env = {**os.environ, "ARKER_API_KEY": server.api_key, "XDG_RUNTIME_DIR": tmp, "XDG_CACHE_HOME": tmp,
               "XDG_STATE_HOME": tmp}  # the write-back journal (the default mode) stays in the temp dir
        daemon = subprocess.Popen([sys.executable, "-m", "arkerfs", "mount", "--foreground", "--base-url",
                                   server.base_url, "--log-file", log, vm_id, mnt], env=env,
                                  stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 30
            while runtime.mount_entry(mnt) is None:
                if daemon.poll() is not None or time.monotonic() > deadline:
                    print(open(log).read(), file=sys.stderr)
                    return 2
                time.sleep(0.05)
            server.control.set_faults(fail_rate=args.fail_rate, latency_ms=args.latency_ms, seed=args.seed)
            started = time.monotonic()
            with RssSampler(daemon.pid) as rss:
                results = drive(mnt, args.seconds, args.workers, args.seed)
            took = time.monotonic() - started
            server.control.clear_faults()
            problems = verify(
                results,
                lambda rel: trio.run(api, lambda a: a.vm(vm_id).sync.read_file(f"/home/user/{rel}")),
                lambda rel: trio.run(api, lambda a: _ls(a, vm_id, rel)),
            )
        finally:
            server.control.clear_faults()
            if runtime.mount_entry(mnt) is not None:
                subprocess.run(["fusermount3", "-u", mnt])
            try:
                daemon.wait(60)
            except subprocess.TimeoutExpired:
                daemon.send_signal(signal.SIGKILL)
                daemon.wait()
                subprocess.run(["fusermount3", "-u", "-z", mnt])
        print(table(results, rss.samples, took))
        log_text = Path(log).read_text(errors="replace")
        noisy = [line for line in log_text.splitlines() if " WARNING " in line or " ERROR " in line or "Traceback" in line]
        print(f"daemon exit status {daemon.returncode}; {len(noisy)} WARNING/ERROR log lines")
        for line in noisy[:20]:
            print("  " + line)
        for line in problems:
            print("MISMATCH " + line)
        failed = problems or daemon.returncode != 0 or any(r.errors or r.corrupt for r in results)
        print("FAILED" if failed else "OK: every file byte-exact, no errors")
        return 1 if failed else 0


async def _fork(arker) -> str:
    vm = await arker.vm("arkuntu").fork(name="soak")
    return vm.id


async def _ls(arker, vm_id: str, rel: str) -> list[str]:
    result = await arker.vm(vm_id).run(f"ls -A /home/user/{rel}", session_id=3, timeout=60)
    return result.stdout.decode().split()


if __name__ == "__main__":
    sys.exit(main())
