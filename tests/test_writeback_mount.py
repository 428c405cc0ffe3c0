"""Write-back mode through a real mount: what applications see, what reaches the VM, and the
calls it costs (counted on the server from the start of a workload until everything pending
is in the VM: an ``fsync`` in the mount waits for that).

The in-process model (``tests/test_model_writeback.py``) checks the same code step by step;
here the kernel, the pusher running as a service, the daemon's lifecycle and crashes are real.
"""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import tarfile
import tempfile
import time

from tests.mountutil import mounted
from tests.test_tools_apps import HOME, SIZE_FMT, TREE_FMT, run, tree_lines, vim

WRITE_BACK = ("--write-back", "--cache-ttl", "600", "--no-watch")  # no watcher: calls are counted


def make_tree(root: str, dirs: int = 10, files: int = 30) -> str:
    """``dirs`` directories of ``files`` small files (varied modes, exact mtimes), 2 symlinks."""
    for d in range(dirs):
        os.makedirs(os.path.join(root, f"d{d}"))
        for i in range(files):
            path = os.path.join(root, f"d{d}", f"f{i}.txt")
            with open(path, "wb") as f:
                f.write(os.urandom(200 + 37 * i))
            os.chmod(path, (0o644, 0o600, 0o755, 0o640)[i % 4])
            os.utime(path, ns=(1_600_000_000_000_000_000, 1_500_000_000_123_456_789 + 1000 * d + i))
        os.utime(os.path.join(root, f"d{d}"), ns=(1_600_000_000_000_000_000, 1_400_000_000_000_000_000 + d))
    os.symlink("d0/f0.txt", os.path.join(root, "link-a"))
    os.symlink("../d1", os.path.join(root, "d2", "link-b"))
    os.utime(os.path.join(root, "d2"), ns=(1_600_000_000_000_000_000, 1_400_000_000_000_000_002))
    return root


def pushed(mnt: str) -> None:
    """``arkerfs sync MNT``: returns once everything pending is in the VM."""
    env = {**os.environ, "XDG_RUNTIME_DIR": os.path.dirname(mnt)}  # where mountutil puts the socket
    done = subprocess.run([sys.executable, "-m", "arkerfs", "sync", mnt], env=env, stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr


def vm_tree(api, vm: str, top: str) -> tuple[list, list]:
    return (tree_lines(api.sh(vm, f"find {HOME}/{top} -mindepth 1 -printf '{TREE_FMT}'")),
            tree_lines(api.sh(vm, f"find {HOME}/{top} -type f -printf '{SIZE_FMT}'")))


def local_tree(src: str) -> tuple[list, list]:
    return (tree_lines(run("find", src, "-mindepth", "1", "-printf", TREE_FMT)),
            tree_lines(run("find", src, "-type", "f", "-printf", SIZE_FMT)))


def calls(control) -> int:
    return sum(control.nonzero_calls().values())


def test_rsync_of_300_files_costs_a_few_batches(server, api, control, tmp_path):
    src = make_tree(str(tmp_path / "src"))
    with mounted(server, *WRITE_BACK) as m:
        control.reset_stats()
        run("rsync", "-a", f"{src}/", m.p("dst/"))
        pushed(m.path)
        first = control.nonzero_calls()
        assert sum(first.values()) <= 20, first
        assert vm_tree(api, m.vm_id, "dst") == local_tree(src)
        assert run("rsync", "-a", "--checksum", "--dry-run", "--itemize-changes", f"{src}/", m.p("dst/")) == ""
        control.reset_stats()
        run("rsync", "-a", f"{src}/", m.p("dst/"))
        pushed(m.path)
        again = control.nonzero_calls()
        assert sum(again.values()) <= 3, again


def test_tar_x_of_1000_files_costs_a_few_batches(server, api, control, tmp_path):
    src = tmp_path / "src"
    make_tree(str(src), dirs=20, files=50)
    archive = str(tmp_path / "t.tar")
    with tarfile.open(archive, "w") as tar:
        tar.add(str(src), arcname="x")
    with mounted(server, *WRITE_BACK) as m:
        control.reset_stats()
        run("tar", "-xf", archive, "-C", m.path)
        pushed(m.path)
        cost = control.nonzero_calls()
        assert sum(cost.values()) <= 20, cost
        reference = tmp_path / "ref"  # the archive keeps whole seconds: compare with a local extraction
        reference.mkdir()
        run("tar", "-xf", archive, "-C", str(reference))
        assert vm_tree(api, m.vm_id, "x") == local_tree(str(reference / "x"))


def test_cp_r_of_300_files_costs_a_few_batches(server, api, control, tmp_path):
    src = make_tree(str(tmp_path / "src"))
    with mounted(server, *WRITE_BACK) as m:
        control.reset_stats()
        run("cp", "-r", src, m.p("copy"))
        pushed(m.path)
        cost = control.nonzero_calls()
        assert sum(cost.values()) <= 15, cost
        assert vm_tree(api, m.vm_id, "copy")[1] == local_tree(src)[1]


def test_vim_edit_and_save_costs_a_few_calls(server, api, control):
    vm = api.fork()
    api.sh(vm, f"mkdir {HOME}/v && printf 'one\\ntwo\\n' > {HOME}/v/notes.txt")
    with mounted(server, *WRITE_BACK, vm_id=vm) as m:
        path = m.p("v/notes.txt")
        os.listdir(m.p("v"))  # the directory is known, as in an editor's file browser
        control.reset_stats()
        # swap file (fsynced by vim), backup made while writing (writebackup), save, quit
        vim(path, "set swapfile writebackup directory=.", "normal Gothree", "preserve", swap=True)
        pushed(m.path)
        cost = control.nonzero_calls()
        assert sum(cost.values()) <= 4, cost
        assert api.read_file(vm, f"{HOME}/v/notes.txt") == b"one\ntwo\nthree\n"
        assert api.sh(vm, f"ls -A {HOME}/v") == "notes.txt\n"


def test_the_mount_shows_its_pending_changes_until_pushed_and_after(server, api, control, tmp_path):
    with mounted(server, "--write-back", "--cache-ttl", "1") as m:
        control.stall_runs(3000) if hasattr(control, "stall_runs") else None
        os.mkdir(m.p("d"))
        with open(m.p("d/a"), "wb") as f:
            f.write(b"hello")
        os.rename(m.p("d/a"), m.p("d/b"))
        time.sleep(1.5)  # every cache entry has expired; the overlay still shows the changes
        assert os.listdir(m.p("d")) == ["b"]
        with open(m.p("d/b"), "rb") as f:
            assert f.read() == b"hello"
        pushed(m.path)
        assert api.sh(m.vm_id, f"cat {HOME}/d/b") == "hello"
        assert api.sh(m.vm_id, f"ls -A {HOME}/d") == "b\n"


def test_a_change_made_in_the_vm_meanwhile_is_never_overwritten(server, api, control, tmp_path):
    vm = api.fork()
    api.sh(vm, f"printf 'line-1\\n' > {HOME}/notes.txt")
    with mounted(server, "--write-back", "--cache-ttl", "600", vm_id=vm) as m:
        m.allow_log("conflict")
        with open(m.p("notes.txt"), "rb") as f:
            assert f.read() == b"line-1\n"
        # the VM changes the file after the mount read it, before the mount's change is pushed
        api.sh(vm, f"printf 'vm-line-2\\n' >> {HOME}/notes.txt")
        with open(m.p("notes.txt"), "ab") as f:
            f.write(b"local-line-2\n")
        pushed(m.path)
        assert api.sh(vm, f"cat {HOME}/notes.txt") == "line-1\nvm-line-2\n"
        copies = api.sh(vm, f"ls {HOME} | grep '^notes.txt.conflict-' || true").split()
        assert len(copies) == 1, copies
        assert api.sh(vm, f"cat {HOME}/{copies[0]}") == "line-1\nlocal-line-2\n"
        assert os.getxattr(m.p("notes.txt"), "user.arkerfs.state") == b"conflict"


def test_kill_9_after_close_loses_nothing(server, api, tmp_path):
    """close() returned: the data is in the journal; a daemon killed before pushing it pushes it
    at the next mount of the same VM, before that mount serves."""
    vm = api.fork()
    state = tempfile.mkdtemp(prefix="arkerfs-state-")
    src = make_tree(str(tmp_path / "src"), dirs=3, files=20)
    with mounted(server, "--write-back", vm_id=vm, state_home=state) as m:
        m.allow_log(".")
        os.kill(m.proc.pid, signal.SIGSTOP)  # the pusher cannot run: everything stays pending
        try:
            copier = subprocess.Popen(["cp", "-a", src, m.p("copy")])
            time.sleep(0.1)
        finally:
            os.kill(m.proc.pid, signal.SIGCONT)
        assert copier.wait(60) == 0
        # cp -a's last chmod/utime calls return once recorded; they are on disk within about a
        # second (or at the next close/fsync), like metadata in a local filesystem's journal
        time.sleep(1.5)
        os.kill(m.proc.pid, signal.SIGKILL)
        m.expect_exit = None
    with mounted(server, "--write-back", vm_id=vm, state_home=state) as m:
        pushed(m.path)
        assert vm_tree(api, vm, "copy") == local_tree(src)


def test_kill_9_of_the_server_mid_batch_is_sent_again_with_the_same_result(tmp_path):
    """The server dies while batches are in flight (an upload, or the install run, cut off);
    after its restart the pusher sends the batch again, and the VM ends up exactly as if
    nothing had happened: every file whole, modes and times exact, no staging name visible."""
    from tests.test_faults_mount import private_server
    from tests.test_faults_outage import restart
    from tests.mountutil import Api

    src = make_tree(str(tmp_path / "src"), dirs=6, files=40)
    with private_server(tmp_path) as srv:
        api = Api(srv)
        vm = api.fork()
        with mounted(srv, "--write-back", "--outage-timeout", "120", vm_id=vm) as m:
            m.allow_log(r"WARNING|ERROR arkerfs\.(client|writeback|fs|mount)")
            copier = subprocess.Popen(["cp", "-a", src, m.p("copy")])
            time.sleep(0.4)  # the first batches are on their way
            srv.kill()
            assert copier.wait(120) == 0  # close() does not need the server in write-back mode
            restart(srv, 1.0)
            pushed(m.path)
            assert vm_tree(api, vm, "copy") == local_tree(src)
            names = api.sh(vm, f"find {HOME} -name '.arkerfs*' -prune -o -print")
            assert "wb-" not in names and ".conflict-" not in names


def test_a_full_journal_makes_writers_wait_for_pushes_not_fail(server, api, control, tmp_path):
    """--journal-max-bytes 1M: 8 files of 400 KB each still all close() with 0 (each waits
    for the pushes that make room), and all of them reach the VM."""
    data = {f"f{i}": os.urandom(400_000) for i in range(8)}
    with mounted(server, "--write-back", "--journal-max-bytes", "1M") as m:
        os.mkdir(m.p("big"))
        for name, content in data.items():
            with open(m.p("big", name), "wb") as f:
                f.write(content)
        pushed(m.path)
        for name, content in data.items():
            assert api.read_file(m.vm_id, f"{HOME}/big/{name}") == content
        assert "journal full" in open(m.log_path).read()  # the bound was really reached


def test_fsync_reports_a_change_the_vm_refused_and_it_holds_back_nothing_else(server, api):
    """The VM refuses a change the mount accepted (its directory was made read-only inside the
    VM meanwhile): fsync of that file says EIO (the data stays in the journal), while changes
    elsewhere, even one applied through a barrier (a directory rename), still go."""
    from arkerfs import exitcodes
    from tests.test_mount import errno_of

    vm = api.fork()
    api.sh(vm, f"mkdir {HOME}/ro")
    with mounted(server, "--write-back", "--cache-ttl", "600", vm_id=vm) as m:
        m.allow_log(r"ERROR arkerfs\.(writeback\.pusher: the VM refused|fs\.vfs: (unmounting|kept))")
        m.allow_log(r"WARNING arkerfs\.mount\.ops: fsync")
        m.expect_exit = exitcodes.PENDING  # the refused change is kept in the journal at unmount
        assert os.listdir(m.p("ro")) == []  # known to the mount as writable
        api.sh(vm, f"chmod 555 {HOME}/ro")
        fd = os.open(m.p("ro/f"), os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            os.write(fd, b"kept")
            assert errno_of(os.fsync, fd) == errno.EIO
        finally:
            os.close(fd)
        os.mkdir(m.p("d"))
        os.rename(m.p("d"), m.p("d2"))  # a barrier: not held back by the refused change
        assert os.listdir(m.path) and "d2" in os.listdir(m.path)
    names = api.sh(vm, f"ls -A {HOME}").split()
    assert "d2" in names and "d" not in names
    assert api.sh(vm, f"ls -A {HOME}/ro") == ""  # refused: the VM's directory stays as it was


def test_git_add_and_commit_of_50_changed_files_costs_a_few_batches(server, api, control):
    """A repository made and edited through the mount: ``git add -A && git commit`` of 50
    changed files. Git writes each object under a temporary name and publishes it with a hard
    link (then unlinks the temporary name): those links are journaled like any other change."""
    from tests.test_tools_apps import GIT_ENV

    with mounted(server, *WRITE_BACK) as m:
        repo = m.p("repo")
        os.mkdir(repo)

        def git(*args: str) -> str:
            return run("git", *args, cwd=repo, env=GIT_ENV)

        git("init", "-q", "-b", "main")
        for i in range(50):
            os.makedirs(os.path.join(repo, f"src{i % 5}"), exist_ok=True)
            with open(os.path.join(repo, f"src{i % 5}", f"m{i:02d}.py"), "w") as f:
                f.write(f"value = {i}\n")
        git("add", "-A")
        git("commit", "-qm", "first")
        for i in range(50):
            with open(os.path.join(repo, f"src{i % 5}", f"m{i:02d}.py"), "a") as f:
                f.write(f"more = {i * i}\n")
        pushed(m.path)
        control.reset_stats()
        git("add", "-A")
        git("commit", "-qm", "second")
        pushed(m.path)
        cost = control.nonzero_calls()
        print("git add -A && git commit of 50 files:", cost)
        assert sum(cost.values()) <= 10, cost
        assert git("status", "--porcelain") == ""
        vm_git = f"git -c safe.directory='*' -C {HOME}/repo"
        assert api.sh(m.vm_id, f"{vm_git} log --format=%s") == "second\nfirst\n"
        assert api.sh(m.vm_id, f"{vm_git} fsck --full --strict 2>&1; echo rc=$?").endswith("rc=0\n")
        assert api.sh(m.vm_id, f"{vm_git} status --porcelain") == ""


def test_a_pushed_file_keeps_its_ctime_so_git_sees_nothing_modified(server, api, control):
    """The VM stamps its own ctime when a push installs a file, a moment after the mount
    showed one: the mount goes on showing its own, so a stat never moves without a change
    (git compares ctimes: it would take every file it wrote for modified)."""
    from tests.test_tools_apps import GIT_ENV

    with mounted(server, *WRITE_BACK) as m:
        repo = m.p("repo")
        os.mkdir(repo)
        run("git", "init", "-q", "-b", "main", cwd=repo, env=GIT_ENV)
        control.set_faults(latency_ms=300)  # every push lands well after git's stats
        for i in range(5):
            with open(os.path.join(repo, f"f{i}"), "w") as f:
                f.write(f"{i}\n")
        before = [os.stat(os.path.join(repo, f"f{i}")) for i in range(5)]
        run("git", "add", "-A", cwd=repo, env=GIT_ENV)
        control.clear_faults()
        pushed(m.path)
        after = [os.stat(os.path.join(repo, f"f{i}")) for i in range(5)]
        assert [s.st_ctime_ns for s in after] == [s.st_ctime_ns for s in before]
        vm_ctime = api.sh(m.vm_id, f"python3 -c 'import os; print(os.lstat(\"{HOME}/repo/f0\").st_ctime_ns)'")
        assert int(vm_ctime) != before[0].st_ctime_ns  # the VM's own stamp, which the mount does not show
        # no file stat-dirty against git's index, without git refreshing it
        assert subprocess.run(["git", "diff-files", "--quiet"], cwd=repo, env={**os.environ, **GIT_ENV}).returncode == 0
