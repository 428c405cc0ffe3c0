"""Everyday tools against a real mount: vim saves, rsync -a, git, tar, renameat2 flags."""

from __future__ import annotations

import ctypes
import errno
import os
import subprocess

import pytest

from tests.mountutil import Api, mounted


@pytest.fixture
def api(server):
    return Api(server)


@pytest.fixture
def m(server, control):
    with mounted(server) as mount:
        yield mount


def run(*cmd: str, cwd: str | None = None) -> str:
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, timeout=60,
                          env={**os.environ, "HOME": cwd or os.environ.get("HOME", "/")})
    assert done.returncode == 0, (cmd, done.stdout, done.stderr)
    return done.stdout


def make_tree(root: str) -> None:
    os.makedirs(os.path.join(root, "sub/deeper"))
    for i in range(12):
        with open(os.path.join(root, "sub", f"file{i}.txt"), "w") as f:
            f.write(f"line {i}\n" * (i + 1))
    with open(os.path.join(root, "sub/deeper/bin"), "wb") as f:
        f.write(os.urandom(300_000))
    os.chmod(os.path.join(root, "sub/deeper/bin"), 0o755)
    os.symlink("file1.txt", os.path.join(root, "sub/link"))
    os.utime(os.path.join(root, "sub/file3.txt"), ns=(1_600_000_000_000_000_000, 1_600_000_000_500_000_000))


@pytest.mark.parametrize("backup", ["writebackup", "backupcopy=yes"])
def test_vim_save_patterns(m, api, backup):
    path = m.p("edit.txt")
    with open(path, "w") as f:
        f.write("first\n")
    opt = f"set {backup}" if backup != "writebackup" else "set writebackup nobackup"
    run("vim", "-Nu", "NONE", "-n", "-es", "-c", opt, "-c", "normal Gosecond", "-c", "wq", path)
    assert api.read_file(m.vm_id, "/home/user/edit.txt") == b"first\nsecond\n"
    assert os.listdir(m.path).count("edit.txt") == 1 and not [n for n in os.listdir(m.path) if n.endswith("~")]


def test_rsync_round_trip_is_exact(m, tmp_path):
    src = tmp_path / "src"
    make_tree(str(src))
    run("rsync", "-a", f"{src}/", m.p("copy") + "/")
    # -c compares contents; itemize prints nothing when both trees agree (modes, times, links too)
    assert run("rsync", "-anci", "--delete", f"{src}/", m.p("copy") + "/") == ""
    back = tmp_path / "back"
    run("rsync", "-a", m.p("copy") + "/", f"{back}/")
    assert run("rsync", "-anci", "--delete", f"{src}/", f"{back}/") == ""


def test_git_init_commit_status(m, api):
    repo = m.p("repo")
    os.mkdir(repo)
    run("git", "init", "-q", cwd=repo)
    run("git", "config", "user.email", "t@example.com", cwd=repo)
    run("git", "config", "user.name", "T", cwd=repo)
    with open(os.path.join(repo, "a.txt"), "w") as f:
        f.write("hello\n")
    run("git", "add", "a.txt", cwd=repo)
    run("git", "commit", "-qm", "first", cwd=repo)
    assert run("git", "status", "--porcelain", cwd=repo) == ""
    assert api.sh(m.vm_id, "cd /home/user/repo && git log --format=%s") == "first\n"


def test_tar_extract_and_create(m, tmp_path):
    src = tmp_path / "src"
    make_tree(str(src))
    archive = tmp_path / "a.tar"
    run("tar", "-cf", str(archive), "-C", str(src), ".")
    os.mkdir(m.p("x"))
    run("tar", "-xf", str(archive), "-C", m.p("x"))
    run("tar", "-cf", m.p("again.tar"), "-C", m.p("x"), ".")
    out = tmp_path / "out"
    out.mkdir()
    run("tar", "-xf", m.p("again.tar"), "-C", str(out))
    assert run("rsync", "-anci", "--delete", f"{src}/", f"{out}/") == ""


_libc = ctypes.CDLL(None, use_errno=True)


def renameat2(old: str, new: str, flags: int) -> None:
    AT_FDCWD = -100
    if _libc.renameat2(AT_FDCWD, old.encode(), AT_FDCWD, new.encode(), flags) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))


def test_rename_noreplace_and_exchange(m, api):
    for name, data in (("a", "A"), ("b", "B")):
        with open(m.p(name), "w") as f:
            f.write(data)
    with pytest.raises(OSError) as info:
        renameat2(m.p("a"), m.p("b"), 1)  # RENAME_NOREPLACE
    assert info.value.errno == errno.EEXIST
    renameat2(m.p("a"), m.p("b"), 2)  # RENAME_EXCHANGE
    assert open(m.p("a")).read() == "B" and open(m.p("b")).read() == "A"
    assert api.sh(m.vm_id, "cat /home/user/a /home/user/b") == "BA"

