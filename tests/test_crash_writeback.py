"""Crash safety of write-back mode: ``kill -9`` of the daemon during real workloads.

Each workload (``cp -r``, ``rsync -a``, ``tar -x``, a 50 MB write) is cut at two points:

- after the tool exited (every ``close()`` returned 0; the metadata calls after the last one are
  on disk within about a second): the kill lands while the journal is being pushed (the server's
  runs are stalled so that a push is in flight). The next mount of the VM replays the journal
  before it serves; afterwards the VM holds exactly what the mount showed before the kill: same
  bytes, modes and nanosecond mtimes.
- while the tool runs (after a random number of its files): every file the VM has is whole (its
  new content, or empty where only its creation was pushed; never a mix), no arkerfs temporary
  name and no conflict copy appear, and running the tool again converges to the exact tree.

Points are drawn from a seeded random: ``ARKERFS_CRASH_SEED=<seed>`` replays a failure (the seed is
printed, and named in every assertion).

And a journal left by a crash belongs to its VM: another VM mounted on the same mount point does
not touch it, ``arkerfs status`` and ``arkerfs sync`` report it, the next mount of its VM pushes it.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import re
import signal
import stat
import sqlite3
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass

import pytest

from arkerfs import exitcodes
from arkerfs.mount import runtime
from tests.mountutil import daemon_command, log_problems, teardown, wait_for_mount
from tests.test_tools_apps import HOME, run
from tests.test_writeback_mount import make_tree

SEED = int(os.environ.get("ARKERFS_CRASH_SEED", random.SystemRandom().randrange(2**32)))
# Each run of the server sleeps STALL_MS, so the last batch is acknowledged no sooner than that
# after the tool's last change: a kill less than that after the tool exited lands with a push in
# flight; drawn between COMMIT_WINDOW (every recorded change has reached the disk) and
# KILL_WITHIN, which leaves time for looking at the mount before the kill.
STALL_MS = 5000
KILL_WITHIN = 3.0
COMMIT_WINDOW = 1.2  # s: a recorded metadata change is on disk within about a second
MB = 1024 * 1024
# The killed daemon's last run may still be running in the VM (stalled) when the next mount
# starts: the VM answers busy for a moment; and that run installs the staged files the next
# mount has just uploaded again, so the next mount's first install finds its staged file gone
# (exit 5, retried: the retry finds its version already there). Nothing else may be logged.
RACING_THE_DEAD_DAEMONS_RUN = (r"arkerfs\.client: POST \S+/run: giving up after \d+ attempts: vm_busy"
                               r"|arkerfs\.fs\.remote: vm_busy across sessions"
                               r"|arkerfs\.fs\.remote: script failed with unexpected status 5: $"
                               r"|arkerfs\.writeback\.pusher: push failed \(EIO: script exit 5\)")


@pytest.fixture
def rng(request):
    seed = SEED + sum(request.node.name.encode())  # each test its own draws, one seed to replay
    print(f"replay with ARKERFS_CRASH_SEED={SEED} (this test's seed {seed})")
    return random.Random(seed), f"ARKERFS_CRASH_SEED={SEED}"


# == mounts sharing one state directory (the journal outlives a killed daemon) ================
@dataclass
class Daemon:
    proc: subprocess.Popen
    log_path: str
    killed: bool = False

    def log(self) -> str:
        with open(self.log_path, encoding="utf-8", errors="replace") as f:
            return f.read()


class Place:
    """One mount point and one XDG state directory, mounted again and again."""

    def __init__(self, server, state: str) -> None:
        self.server = server
        self.state = state
        self.workdir = tempfile.mkdtemp(prefix="arkerfs-crash-wb-")
        self.mnt = os.path.realpath(os.path.join(self.workdir, "mnt"))
        os.mkdir(self.mnt)
        self.count = 0

    def env(self) -> dict:
        env = {**os.environ, "XDG_RUNTIME_DIR": self.workdir, "XDG_CACHE_HOME": self.workdir,
               "XDG_STATE_HOME": self.state, "ARKER_API_KEY": self.server.api_key}
        return env

    def p(self, *parts: str) -> str:
        return os.path.join(self.mnt, *parts)

    @contextlib.contextmanager
    def mounted(self, vm: str, allow: str | None = None):
        """``arkerfs mount --write-back`` of ``vm`` here; always unmounted (a killed daemon's dead
        mount too); a daemon that was not killed must exit 0 with a log clean of warnings and
        errors (but those matching the regex ``allow``)."""
        self.count += 1
        os.makedirs(self.mnt, exist_ok=True)  # mountutil's teardown removes it
        log_path = os.path.join(self.workdir, f"daemon-{self.count}.log")
        with open(log_path, "ab") as out:  # the command's own messages, before its log starts
            proc = subprocess.Popen(daemon_command(vm, self.mnt, self.server.base_url, log_path,
                                                   "--write-back", "--cache-ttl", "600"),
                                    env=self.env(), stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
        daemon = Daemon(proc, log_path)
        failed = True
        try:
            wait_for_mount(proc, self.mnt, log_path)
            yield daemon
            failed = False
        finally:
            if daemon.killed and runtime.mount_entry(self.mnt) is not None:
                subprocess.run(["fusermount3", "-u", "-z", self.mnt], capture_output=True)
            problems = teardown(proc, self.mnt)
            if not failed and not daemon.killed:
                text = daemon.log()
                problems += [f"log: {line}" for line in log_problems(text, [re.compile(allow)] if allow else [])]
                if proc.returncode != 0:
                    problems.append(f"daemon exit status {proc.returncode}")
                if problems:
                    pytest.fail("; ".join(problems) + f"\n--- daemon log ---\n{text}")

    def kill(self, daemon: Daemon) -> None:
        """``kill -9`` of the daemon; its dead mount is released at once (``fusermount3 -u -z``)."""
        daemon.killed = True
        daemon.proc.send_signal(signal.SIGKILL)
        daemon.proc.wait()
        subprocess.run(["fusermount3", "-u", "-z", self.mnt], capture_output=True)

    def arkerfs(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "arkerfs", *args], env=self.env(), capture_output=True,
                              text=True, timeout=300, stdin=subprocess.DEVNULL)

    def sync(self) -> None:
        done = self.arkerfs("sync", self.mnt)
        assert done.returncode == 0, done.stdout + done.stderr

    def close(self) -> None:
        assert runtime.mount_entry(self.mnt) is None, self.mnt
        subprocess.run(["rm", "-rf", self.workdir])


@pytest.fixture
def place(server, control, tmp_path):
    where = Place(server, str(tmp_path / "state"))
    yield where
    where.close()


# == what a tree is: the same listing of the mount and of the VM ==============================
# One line per entry: type, mode, mtime as find's %T@ prints it, name (and link target);
# then each file's sha256 as sha256sum prints it. ``dir_times``: whether directories' mtimes are
# the tool's (set by rsync -a and tar) rather than whenever their entries last changed;
# ``file_times``: the same for the other entries (``cp -r`` keeps none: a copy elsewhere differs).
def _formats(dir_times: bool, file_times: bool) -> tuple[str, str]:
    return ("%y %m %T@ %P\\n" if dir_times else "%y %m %P\\n",
            "%y %m %T@ %P -> %l\\n" if file_times else "%y %m %P -> %l\\n")


def _sorted(entries: list[str], sums: list[str]) -> str:
    return "\n".join(sorted(entries) + sorted(sums, key=lambda line: line.split("  ", 1)[1])) + "\n"


def vm_listing(api, vm: str, top: str, *, dir_times: bool, file_times: bool = True) -> str:
    dirs, others = _formats(dir_times, file_times)
    text = api.sh(vm, f"cd {HOME}/{top} && find . -mindepth 1 -type d -printf '{dirs}'"
                      f" && find . -mindepth 1 ! -type d -printf '{others}'"
                      " && echo --sums-- && find . -type f -print0 | xargs -0r sha256sum")
    entries, _, sums = text.partition("--sums--\n")
    return _sorted(entries.splitlines(), sums.splitlines())


def local_listing(root: str, *, dir_times: bool, file_times: bool = True) -> str:
    """The same listing of a local tree or of the mount (os.walk: no statfs, which a write-back
    mount answers from the VM, behind a push in flight)."""
    entries, sums = [], []
    for directory, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = os.path.join(directory, name)
            rel = os.path.relpath(path, root)
            st = os.lstat(path)
            kind = "d" if stat.S_ISDIR(st.st_mode) else "l" if stat.S_ISLNK(st.st_mode) else "f"
            mode = f"{stat.S_IMODE(st.st_mode):o}"
            when = f"{st.st_mtime_ns // 10**9}.{st.st_mtime_ns % 10**9:09d}0"
            if kind == "d":
                entries.append(f"d {mode} {when} {rel}" if dir_times else f"d {mode} {rel}")
                continue
            target = os.readlink(path) if kind == "l" else ""
            entries.append(f"{kind} {mode} {when} {rel} -> {target}" if file_times else f"{kind} {mode} {rel} -> {target}")
            if kind == "f":
                sums.append(f"{sha(path)}  ./{rel}")
    return _sorted(entries, sums)


def same(got: str, want: str, where) -> None:
    """Two listings are equal; else the lines only one of them has."""
    a, b = got.splitlines(), want.splitlines()
    assert a == b, (where, {"only got": sorted(set(a) - set(b))[:20], "only wanted": sorted(set(b) - set(a))[:20]})


def sha(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def no_arkerfs_leftovers(api, vm: str, where: str) -> None:
    """No conflict copy (no conflict happened), no recovered file, no staging or temporary name
    of arkerfs anywhere in the home (hidden staging area included: every staged upload was
    installed)."""
    names = api.sh(vm, f"cd {HOME} && find . -mindepth 1 -print")
    bad = [n for n in names.splitlines() if ".conflict-" in n or "arkerfs-recovered" in n
           or ".arkerfs-tmp-" in n or "/wb-" in n]
    assert not bad, (where, bad)


# == the workloads ============================================================================
@dataclass
class Workload:
    name: str
    top: str  # the tree it makes under the home
    dir_times: bool  # rsync -a and tar set directories' mtimes
    exact_names: bool  # a file at its final name is always whole and exact (rsync renames it there)

    def command(self, src: str, archive: str, mnt: str, *, again: bool = False) -> list[str]:
        dst = os.path.join(mnt, self.top)
        if self.name == "cp -r":
            return ["stdbuf", "-oL", "cp", "-rTv", src, dst]
        if self.name == "rsync -a":
            return ["rsync", "-av", *(["--delete"] if again else []), f"{src}/", f"{dst}/"]
        return ["stdbuf", "-oL", "tar", "-xvf", archive, "-C", mnt]


WORKLOADS = [Workload("cp -r", "copy", dir_times=False, exact_names=False),
             Workload("rsync -a", "dst", dir_times=True, exact_names=True),
             Workload("tar -x", "x", dir_times=True, exact_names=False)]
DIRS, FILES = 5, 100  # 5 directories of 20 files


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """The tree every workload copies (and the archive tar extracts: the same tree)."""
    base = tmp_path_factory.mktemp("crash-src")
    src = make_tree(str(base / "x"), dirs=DIRS, files=FILES // DIRS)
    archive = str(base / "t.tar")
    with tarfile.open(archive, "w") as tar:
        tar.add(src, arcname="x")
    return src, archive


def reference(work: Workload, src: str, archive: str) -> str:
    """The listing of what the tool makes on a local disk (``cp -r``: without file times)."""
    ref = tempfile.mkdtemp(prefix="arkerfs-crash-ref-")
    try:
        run(*work.command(src, archive, ref), timeout=120)
        return local_listing(os.path.join(ref, work.top), dir_times=work.dir_times, file_times=work.dir_times)
    finally:
        subprocess.run(["rm", "-rf", ref])


def source_of(src: str, rel: str) -> str | None:
    """The source entry a name in the copy comes from (rsync's ``.NAME.XXXXXX`` temp names too)."""
    directory, name = os.path.split(rel)
    candidates = [name]
    if name.startswith(".") and name.count(".") >= 2:
        candidates.append(name[1:].rsplit(".", 1)[0])
    for candidate in candidates:
        path = os.path.join(src, directory, candidate)
        if os.path.lexists(path):
            return path
    return None


@pytest.mark.parametrize("work", WORKLOADS, ids=[w.name for w in WORKLOADS])
def test_kill_9_after_the_tool_exited_loses_nothing_it_was_told(place, server, api, control, source, rng, work):
    """Every close() returned: the VM ends up with what the mount showed, exactly, although the
    daemon died with the push in flight (a run the server may finish after the kill: sending it
    again must not change the result)."""
    rng, replay = rng
    src, archive = source
    vm = api.fork()
    with place.mounted(vm) as first:
        control.set_faults(run_stall_ms=STALL_MS)
        run(*work.command(src, archive, place.mnt), timeout=120)
        exited = time.monotonic()
        shown = local_listing(place.p(work.top), dir_times=work.dir_times)
        shown_as_compared = local_listing(place.p(work.top), dir_times=work.dir_times, file_times=work.dir_times)
        kill_at(place, first, exited + rng.uniform(COMMIT_WINDOW, KILL_WITHIN), replay)
        assert "journal:" not in first.log()  # nothing was left by an earlier mount
    control.clear_faults()
    with place.mounted(vm, allow=RACING_THE_DEAD_DAEMONS_RUN) as second:
        same(local_listing(place.p(work.top), dir_times=work.dir_times), shown, (replay, "mount after replay"))
        place.sync()
        replayed = second.log()  # (the mount is live a moment before it logs so)
        assert "left by an earlier mount" in replayed, (replay, replayed)
        assert replayed.index("left by an earlier mount") < replayed.index("mounted VM"), replay
    same(vm_listing(api, vm, work.top, dir_times=work.dir_times), shown, (replay, "VM"))
    no_arkerfs_leftovers(api, vm, replay)
    same(shown_as_compared, reference(work, src, archive), (replay, "local"))  # as the tool makes it on a disk


def kill_at(place: Place, daemon: Daemon, when: float, where) -> None:
    """Kill the daemon at ``when`` (time.monotonic), in time for a push to be in flight."""
    late = time.monotonic() - when
    assert late < STALL_MS / 1000 - KILL_WITHIN - 1.0, (where, f"looking at the mount took {late:.1f} s too long")
    time.sleep(max(0.0, -late))
    place.kill(daemon)


def _kill_after_lines(place: Place, daemon: Daemon, tool: subprocess.Popen, lines: int) -> int:
    """Kill the daemon once ``tool`` printed ``lines`` lines (its progress); returns how many it had."""
    seen = 0
    while seen < lines and tool.stdout.readline():
        seen += 1
    place.kill(daemon)
    tool.stdout.read()
    tool.wait(60)
    return seen


@pytest.mark.parametrize("work", WORKLOADS, ids=[w.name for w in WORKLOADS])
def test_kill_9_while_the_tool_runs_leaves_whole_files_and_converges(place, server, api, control, source, rng, work):
    """The daemon dies mid-way (the pusher running meanwhile): whatever reached the VM is whole;
    after the next mount replayed the journal, running the tool again gives the exact tree."""
    rng, replay = rng
    src, archive = source
    vm = api.fork()
    cut = rng.randrange(FILES // 10, FILES * 8 // 10)
    with place.mounted(vm) as first:
        tool = subprocess.Popen(work.command(src, archive, place.mnt), stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, text=True)
        seen = _kill_after_lines(place, first, tool, cut)
    where = (replay, work.name, f"killed after {seen} lines")
    assert seen == cut and tool.returncode != 0, where  # the kill cut the tool off
    with place.mounted(vm, allow=RACING_THE_DEAD_DAEMONS_RUN):
        place.sync()
        # what reached the VM is whole: the file's content, or nothing yet
        files = api.sh(vm, f"cd {HOME}/{work.top} 2>/dev/null && find . -type f -printf '%P\\n' || true").split()
        sums = dict(reversed(line.split("  ", 1)) for line in api.sh(  # (tar's placeholders: empty, mode 0)
            vm, f"cd {HOME}/{work.top} && find . -type f -size +0 -print0 | xargs -0r sha256sum").splitlines()) if files else {}
        sizes = dict(reversed(line.split(" ", 1)) for line in api.sh(
            vm, f"cd {HOME}/{work.top} && find . -type f -printf '%s %P\\n'").splitlines()) if files else {}
        for rel in files:
            origin = source_of(src, rel)
            assert origin is not None, (where, rel, "a name the tool never made")
            whole = os.path.isfile(origin) and not os.path.islink(origin) and sums.get(f"./{rel}") == sha(origin)
            if work.exact_names and not os.path.basename(rel).startswith("."):
                assert whole, (where, rel, "torn or empty at its final name")
            else:  # empty: its creation went, its content not yet (or tar's placeholder of a link)
                assert whole or sizes[rel] == "0", (where, rel, "torn")
        no_arkerfs_leftovers(api, vm, where)
        run(*work.command(src, archive, place.mnt, again=True), timeout=120)
        place.sync()
        shown = local_listing(place.p(work.top), dir_times=work.dir_times)
        same(local_listing(place.p(work.top), dir_times=work.dir_times, file_times=work.dir_times),
             reference(work, src, archive), (where, "local"))
    same(vm_listing(api, vm, work.top, dir_times=work.dir_times), shown, (where, "VM"))
    no_arkerfs_leftovers(api, vm, where)


def test_a_change_made_while_a_push_is_in_flight_survives_a_kill_a_second_later(place, server, api, control):
    """A symlink (recorded, not closed) made while the batch before it is stuck in the VM is on
    disk within about a second: the periodic commit does not wait for the push to return."""
    vm = api.fork()
    with place.mounted(vm) as first:
        control.set_faults(run_stall_ms=4000)
        with open(place.p("a"), "wb") as f:
            f.write(b"a")
        time.sleep(0.3)  # the batch with "a" is on its way: its run stalls 4 s
        os.symlink("a", place.p("link"))
        time.sleep(COMMIT_WINDOW + 0.3)
        place.kill(first)
    control.clear_faults()
    with place.mounted(vm, allow=RACING_THE_DEAD_DAEMONS_RUN):
        place.sync()
    assert api.sh(vm, f"readlink {HOME}/link; cat {HOME}/a") == "a\na"


# == a 50 MB write ============================================================================
WRITER = r"""
import os, random, sys, time
path, size, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
chunk = random.Random(seed).randbytes(1024 * 1024)
with open(path, "wb") as out:
    for i in range(size // len(chunk)):
        out.write(chunk[:8] + i.to_bytes(8, "big") + chunk[16:])
        out.flush()
        print("mb", i, flush=True)
        time.sleep(0.005)
print("closed", flush=True)  # close() returned 0
"""


def written_by_writer(size: int, seed: int) -> str:
    """The sha256 of what WRITER writes."""
    chunk = random.Random(seed).randbytes(MB)
    digest = hashlib.sha256()
    for i in range(size // MB):
        digest.update(chunk[:8] + i.to_bytes(8, "big") + chunk[16:])
    return digest.hexdigest()


def test_kill_9_during_and_after_a_50_mb_write(place, server, api, control, rng, tmp_path):
    """Killed mid-write: the VM keeps the old file whole. Killed after close() returned, during
    its upload and install: the next mount pushes it; the VM has it byte-exact with the mode and
    mtime the mount showed."""
    rng, replay = rng
    vm = api.fork()
    old = os.urandom(2 * MB + 5)
    api.write_file(vm, f"{HOME}/big.bin", old)
    size = 50 * MB
    # killed while writing: after a random number of megabytes
    cut = rng.randrange(5, 45)
    with place.mounted(vm) as first:
        writer = subprocess.Popen([sys.executable, "-c", WRITER, place.p("big.bin"), str(size), "1"],
                                  stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        seen = _kill_after_lines(place, first, writer, cut)
    where = (replay, f"killed after {seen} MB")
    assert writer.returncode != 0, where
    with place.mounted(vm):
        place.sync()
    got = hashlib.sha256(api.read_file(vm, f"{HOME}/big.bin")).hexdigest()
    assert got == hashlib.sha256(old).hexdigest(), (where, "the old file is not whole")
    # killed after close() returned, with the upload or the install in flight
    with place.mounted(vm) as first:
        control.set_faults(run_stall_ms=STALL_MS)
        seed = rng.randrange(2**32)
        writer = subprocess.Popen([sys.executable, "-c", WRITER, place.p("big.bin"), str(size), str(seed)],
                                  stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        out = writer.stdout.read()
        closed = time.monotonic()
        assert writer.wait(120) == 0 and out.endswith("closed\n"), out[-200:]
        st = os.stat(place.p("big.bin"))
        delay = rng.uniform(0, KILL_WITHIN)  # the upload or the stalled install run is in flight
        where = (replay, f"killed {delay:.2f} s after close")
        kill_at(place, first, closed + delay, where)
    written = written_by_writer(size, seed)
    control.clear_faults()
    with place.mounted(vm, allow=RACING_THE_DEAD_DAEMONS_RUN) as second:
        assert "left by an earlier mount" in second.log(), where  # its install had not been acknowledged
        place.sync()
    data = api.read_file(vm, f"{HOME}/big.bin")
    assert len(data) == size and hashlib.sha256(data).hexdigest() == written, where
    mode, mtime = api.sh(vm, f"stat -c '%a %.9Y' {HOME}/big.bin").split()
    assert (int(mode, 8), mtime) == (st.st_mode & 0o7777, f"{st.st_mtime_ns // 10**9}.{st.st_mtime_ns % 10**9:09d}"), where
    no_arkerfs_leftovers(api, vm, where)


# == a journal belongs to its VM ==============================================================
def journal_rows(state: str, vm: str) -> list[tuple]:
    """The journal's rows, read without touching it (read-only, no lock)."""
    path = os.path.join(state, "arkerfs", vm, "journal.sqlite3")
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return db.execute("SELECT seq, op, args, content FROM changes ORDER BY seq").fetchall()
    finally:
        db.close()


def spool_files(state: str, vm: str) -> dict[str, str]:
    spool = os.path.join(state, "arkerfs", vm, "spool")
    return {name: sha(os.path.join(spool, name)) for name in sorted(os.listdir(spool))}


def test_a_journal_left_by_a_crash_is_pushed_only_to_its_vm_and_reported(place, server, api, control):
    vm_a, vm_b = api.fork(), api.fork()
    with place.mounted(vm_a) as first:
        control.set_faults(fail_rate=1.0, fail_status=503)  # nothing reaches the VM: all stays pending
        os.mkdir(place.p("kept"))
        for i in range(3):
            with open(place.p("kept", f"f{i}"), "wb") as f:
                f.write(b"kept %d\n" % i)
        time.sleep(COMMIT_WINDOW)
        place.kill(first)
    control.clear_faults()
    rows, spool = journal_rows(place.state, vm_a), spool_files(place.state, vm_a)
    assert len(rows) >= 4 and len(spool) == 3, (rows, spool)

    # reported while no mount runs
    status = place.arkerfs("status")
    assert vm_a in status.stdout and "not mounted" in status.stdout, status
    done = place.arkerfs("sync")
    assert done.returncode == exitcodes.PENDING and vm_a in done.stderr, done

    # another VM on the same mount point: A's journal is not replayed, not pushed, not changed
    with place.mounted(vm_b) as other:
        assert "left by an earlier mount" not in other.log()
        assert not os.path.exists(place.p("kept"))
        with open(place.p("b-file"), "wb") as f:
            f.write(b"b\n")
        status = place.arkerfs("status")
        assert place.mnt in status.stdout and vm_a in status.stdout, status
        place.sync()
    assert journal_rows(place.state, vm_a) == rows
    assert spool_files(place.state, vm_a) == spool
    assert api.sh(vm_b, f"ls -A {HOME}/kept 2>/dev/null || echo none") == "none\n"
    assert api.sh(vm_a, f"ls -A {HOME}/kept 2>/dev/null || echo none") == "none\n"

    # the next mount of A pushes it; then nothing is reported any more
    with place.mounted(vm_a):
        place.sync()
        assert sorted(os.listdir(place.p("kept"))) == ["f0", "f1", "f2"]  # still shown once pushed
    assert api.sh(vm_a, f"cat {HOME}/kept/f0 {HOME}/kept/f1 {HOME}/kept/f2") == "kept 0\nkept 1\nkept 2\n"
    assert journal_rows(place.state, vm_a) == []
    status = place.arkerfs("status")
    assert vm_a not in status.stdout + status.stderr, status
    done = place.arkerfs("sync")
    assert done.returncode == exitcodes.OK, done


# == a batch sent again after a crash, with more coalesced into it ============================
def _run_planned(batch, home: str, spool: str) -> None:
    """Run a planned batch as the pusher would, on a local directory standing for the home."""
    from arkerfs.fs import batch as B

    for upload in batch.uploads:
        staged = os.fsdecode(upload.staged).replace(HOME, home)
        os.makedirs(os.path.dirname(staged), exist_ok=True)
        with open(os.path.join(spool, upload.spool_name), "rb") as src, open(staged, "wb") as dst:
            dst.write(src.read())
    script = _rehomed(B.batch_script([step.fragment for step in batch.steps]), home)
    done = subprocess.run(["bash", "-c", script], capture_output=True, timeout=30)
    assert done.returncode == 0, done.stderr


def _rehomed(script: str, home: str) -> str:
    """``script`` with every /home/user path moved to ``home``: in the text, and in the base64
    fields of the install lines a run of installs carries (``shell.install_line``)."""
    import base64
    import re

    def line(text: str) -> str:  # the op and an install's content marker are not base64
        return " ".join(f if i in (0, 8) else base64.b64encode(base64.b64decode(f).replace(HOME.encode(), home.encode()))
                        .decode() for i, f in enumerate(text.split(" ")))

    def lines(match: re.Match) -> str:
        return match.group(1) + "\n".join(line(t) for t in match.group(2).split("\n")) + match.group(3)

    end = "ARKERFS_INSTALLS_END"
    script = re.sub(rf"(_pi <<'{end}'\n)(.*?)(\n{end}\n)", lines, script, flags=re.S)
    return script.replace(HOME, home)


def test_a_batch_sent_again_with_a_later_write_coalesced_makes_no_conflict(tmp_path):
    """tar -x / cp -r: a batch ends with a file's create; it runs in the VM (an empty file) but
    the daemon is killed before the acknowledgement. After the replay the create and the write
    that followed are coalesced into one install: it must replace the mount's own empty file,
    not keep it and file the content away as a conflict copy."""
    import stat as st

    from arkerfs.fs.model import Attrs
    from arkerfs.writeback import plan as P
    from arkerfs.writeback.journal import Change

    home, spool = str(tmp_path / "home"), tmp_path / "spool"
    os.makedirs(home)
    spool.mkdir()
    (spool / "c0ffee").write_bytes(b"content\n")
    made = Attrs(st.S_IFREG | 0o644, 0, 1, 1000, 1000, 1_700_000_000_000_000_001, 1_700_000_000_000_000_001,
                 1_700_000_000_000_000_001, 1 << 60)
    written = Attrs(st.S_IFREG | 0o644, 8, 1, 1000, 1000, 1_700_000_000_500_000_002, 1_700_000_000_500_000_002,
                    1_700_000_000_500_000_002, (1 << 60) + 1)
    create = Change(1, "create", {"path": f"{HOME}/f", "attrs": P.encode_attrs(made), "base": None},
                    None, 0, 0.0, 0, None)
    write = Change(2, "write", {"path": f"{HOME}/f", "attrs": P.encode_attrs(written), "base": P.CHAIN},
                   "c0ffee", 8, 0.0, 0, None)
    _run_planned(P.plan([create], {}, "STAMP"), home, str(spool))  # ran; its answer lost
    _run_planned(P.plan([create, write], {}, "STAMP"), home, str(spool))  # after the replay
    assert sorted(os.listdir(home)) == [".arkerfs", "f"]
    with open(os.path.join(home, "f"), "rb") as f:
        assert f.read() == b"content\n"


def test_a_utimens_and_chmod_after_a_write_ride_on_its_install_and_repeat_cleanly(tmp_path):
    """tar/rsync/cp -p set times and mode right after each file's content: one install step
    sets them (no step of their own), and the batch sent again changes nothing."""
    import stat as st

    from arkerfs.fs.model import Attrs
    from arkerfs.writeback import plan as P
    from arkerfs.writeback.journal import Change

    home, spool = str(tmp_path / "home"), tmp_path / "spool"
    os.makedirs(home)
    spool.mkdir()
    changes, seq = [], 0
    for i in range(6):
        (spool / f"c{i}").write_bytes(b"content %d\n" % i)
        written = Attrs(st.S_IFREG | 0o644, 10, 1, 1000, 1000, 1_700_000_000_000_000_000, 1_700_000_000_000_000_000,
                        1_700_000_000_000_000_000, (1 << 60) + i)
        changes += [Change(seq + 1, "write", {"path": f"{HOME}/f{i}", "attrs": P.encode_attrs(written), "base": None},
                           f"c{i}", 10, 0.0, 0, None),
                    Change(seq + 2, "setattr", {"path": f"{HOME}/f{i}", "mode": 0o751, "atime_ns": None,
                                                "mtime_ns": 1_500_000_000_000_000_007 + i,
                                                "attrs": P.encode_attrs(written)}, None, 0, 0.0, 0, None)]
        seq += 2
    batch = P.plan(changes, {}, "STAMP")
    assert [step.change.op for step in batch.steps] == ["write"] * 6
    assert sorted(s for step in batch.steps for s in step.seqs) == list(range(1, 13))
    for _ in range(2):  # the second run: a batch sent again after its answer was lost
        _run_planned(batch, home, str(spool))
        for i in range(6):
            found = os.lstat(os.path.join(home, f"f{i}"))
            assert (st.S_IMODE(found.st_mode), found.st_mtime_ns) == (0o751, 1_500_000_000_000_000_007 + i)
        assert sorted(os.listdir(home)) == [".arkerfs"] + [f"f{i}" for i in range(6)]
        assert os.listdir(os.path.join(home, ".arkerfs", "staging")) == []
