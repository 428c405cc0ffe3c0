"""What the side-by-side benchmark runs: local fixture trees and one shell command per workload.

Write workloads run in a fresh remote directory per run (seeded empty, or with the tree they
edit); read workloads read trees seeded once per target, or, when they name a ``seed`` (git
status rewrites the index; the VM-change workload edits its tree), a fresh copy per run. Every
command is a real tool (rsync, tar, cp, vim, git, ls, cat, find, grep, python3) run through the
mount, as a user would; the one exception, "change in the VM -> visible in the mount", is a
Python measurement (``bench/vmchange.py``) since it acts on both sides of the mount.
"""

from __future__ import annotations

import os
import random
import shlex
import shutil
import subprocess
import tarfile
from dataclasses import dataclass
from pathlib import Path

MODES = (0o644, 0o600, 0o755, 0o640)
BASE_MTIME = 1_600_000_000  # fixed past mtimes, so rsync -a / cp -p have something to carry


@dataclass(frozen=True)
class Sizes:
    small_tree: int     # rsync, cp -r in, grep, cp -r out (10 dirs)
    tar_files: int      # tar -x (20 dirs)
    git_files: int      # git add -A && git commit
    flat_dir: int       # ls -l, cat
    find_files: int     # find -ls (20 dirs)
    big_bytes: int      # sequential write and read
    repo_files: int     # git status (20 dirs)
    rand_bytes: int     # the file random reads go to
    rand_reads: int     # 4 KiB preads per run

    @staticmethod
    def for_run(quick: bool) -> "Sizes":
        if quick:
            return Sizes(30, 100, 10, 100, 200, 10_000_000, 50, 5_000_000, 50)
        # 100,000,000 bytes: the largest file arkerfs accepts (EFBIG past it).
        return Sizes(300, 1000, 50, 1000, 2000, 100_000_000, 500, 50_000_000, 200)


@dataclass(frozen=True)
class Workload:
    key: str            # for --workloads
    title: str
    kind: str           # "write" (fresh remote dir per run) or "read" (trees seeded once, cold mount)
    files: int
    command: str | None  # shell; {mnt} mount root, {dir} this run's remote dir, {fx} fixtures, {out} local scratch
    seed: str | None = None   # fixture tree copied into {dir} before each run (write and read)
    reads: str | None = None  # read: the fixture under read/ it needs on the remote side
    sdk: str | None = None    # "write" / "read": also measured through the SDK alone
    warmup: str | None = None   # shell, like command: run on the fresh mount before the timer and the call count
    measure: str | None = None  # instead of command: a Python measurement (bench.vmchange.MEASURES)


def workloads(sizes: Sizes) -> list[Workload]:
    big_mb = sizes.big_bytes // 1_000_000
    rand_mb = sizes.rand_bytes / 1_000_000
    return [
        Workload("rsync", f"rsync -a {sizes.small_tree} files (10 dirs)", "write", sizes.small_tree,
                 "rsync -a {fx}/tree/ {dir}/"),
        Workload("tar", f"tar -x {sizes.tar_files} files (20 dirs)", "write", sizes.tar_files,
                 "tar -xf {fx}/tar.tar -C {dir}"),
        Workload("cp-in", f"cp -r {sizes.small_tree} files in", "write", sizes.small_tree,
                 "cp -r {fx}/tree {dir}/tree"),
        Workload("vim", "vim save (writebackup)", "write", 1, vim_save_command("{dir}/notes.txt"),
                 seed="vim"),
        Workload("git", f"git add -A && commit {sizes.git_files} files", "write", sizes.git_files,
                 "cd {dir} && git add -A && git commit -q -m bench", seed="git"),
        Workload("seq-write", f"write {big_mb} MB sequentially (cp)", "write", 1,
                 "cp {fx}/big.bin {dir}/big.bin", sdk="write"),
        Workload("ls", f"ls -l {sizes.flat_dir} files (cold)", "read", sizes.flat_dir,
                 "ls -l {mnt}/read/flat > /dev/null", reads="flat"),
        Workload("cat", f"cat {sizes.flat_dir} small files (cold)", "read", sizes.flat_dir,
                 "cat {mnt}/read/flat/* > /dev/null", reads="flat"),
        Workload("find", f"find -ls over {sizes.find_files} files (cold)", "read", sizes.find_files,
                 "find {mnt}/read/deep -ls > /dev/null", reads="deep"),
        Workload("grep", f"grep -r {sizes.small_tree} files (cold)", "read", sizes.small_tree,
                 "grep -r -l needle {mnt}/read/tree > /dev/null", reads="tree"),
        Workload("cp-out", f"cp -r {sizes.small_tree} files out (cold)", "read", sizes.small_tree,
                 "cp -r {mnt}/read/tree {out}/tree", reads="tree"),
        Workload("seq-read", f"read {big_mb} MB sequentially (cat, cold)", "read", 1,
                 "cat {mnt}/read/big.bin > /dev/null", reads="big.bin", sdk="read"),
        Workload("git-status", f"git status {sizes.repo_files} files (cold)", "read", sizes.repo_files,
                 clean_git_status("{dir}"), seed="repo"),
        Workload("git-status-warm", f"git status {sizes.repo_files} files (2nd)", "read", sizes.repo_files,
                 clean_git_status("{dir}"), seed="repo", warmup=clean_git_status("{dir}")),
        Workload("rand-read", f"{sizes.rand_reads} random 4 KiB reads in {rand_mb:g} MB (cold)", "read", 1,
                 random_reads_command("{mnt}/read/rand.bin", sizes.rand_reads), reads="rand.bin"),
        Workload("vm-change", "change in VM -> visible (max of 4)", "read", 4, None, seed="vm-change",
                 warmup="ls -l {dir} > /dev/null && cat {dir}/notes.txt > /dev/null", measure="vm-change"),
    ]


def clean_git_status(repo: str) -> str:
    """`git status --porcelain` in ``repo``, failing (so the row shows FAILED) unless it is clean:
    the fixture is committed, so any output means the mount served wrong metadata or content.
    git may rewrite the index (its stat data is stale on a fresh copy): that is what users get."""
    return (f"cd {repo} && changes=$(git status --porcelain) && "
            '{{ [ -z "$changes" ] || {{ printf "not clean:\\n%s\\n" "$changes" >&2; exit 1; }}; }}')


def random_reads_command(path: str, reads: int) -> str:
    """``reads`` preads of 4 KiB at 4 KiB-aligned offsets drawn with a fixed seed (the same
    offsets on every target and run); fails on a short read."""
    script = ("import os,random,sys; r=random.Random(7); fd=os.open(sys.argv[1],os.O_RDONLY); "
              "n=os.fstat(fd).st_size//4096; "
              f"short=[o for o in (r.randrange(n)*4096 for _ in range({reads})) if len(os.pread(fd,4096,o))!=4096]; "
              "sys.exit(f'short reads at {{short[:5]}}' if short else 0)")
    return f"python3 -c {shlex.quote(script)} {path}"


def vim_save_command(path: str) -> str:
    """Real vim when installed (its writebackup save: the old file kept aside until the new one
    is written and fsynced); else the same steps by hand: temp file, fsync, rename over."""
    if shutil.which("vim"):
        return ("vim -es -n -u NONE -i NONE -c 'set nocompatible writebackup nobackup fsync' "
                "-c '$put =\"saved by the benchmark\"' -c 'wq' " + path)
    script = ("import os,sys; p=sys.argv[1]; d=open(p,'rb').read()+b'saved by the benchmark\\n'; "
              "t=p+'.tmp'; f=open(t,'wb'); f.write(d); f.flush(); os.fsync(f.fileno()); f.close(); "
              "os.chmod(t, os.stat(p).st_mode); os.rename(t,p)")
    return f"python3 -c {shlex.quote(script)} {path}"


# -- fixtures, built once per benchmark run in a local directory --


def build_fixtures(root: Path, sizes: Sizes, seed: int = 1) -> Path:
    """Write every tree the workloads use under ``root`` and return it."""
    rng = random.Random(seed)
    _small_files(root / "tree", 10, sizes.small_tree, rng, text=True)
    tar_src = root / "tar-src"
    _small_files(tar_src, 20, sizes.tar_files, rng)
    with tarfile.open(root / "tar.tar", "w") as tar:
        for child in sorted(tar_src.iterdir()):
            tar.add(child, arcname=child.name)
    shutil.rmtree(tar_src)
    _vim_file(root / "vim" / "notes.txt", rng)
    _git_repo(root / "git", sizes.git_files, rng)
    _big_file(root / "big.bin", sizes.big_bytes)
    _committed_repo(root / "repo", sizes.repo_files, rng)
    _vm_change_tree(root / "vm-change")
    # Read-side trees (seeded under read/ on each target).
    _small_files(root / "read" / "flat", 1, sizes.flat_dir, rng, flat=True)
    _small_files(root / "read" / "deep", 20, sizes.find_files, rng)
    shutil.copytree(root / "tree", root / "read" / "tree")
    _big_file(root / "read" / "rand.bin", sizes.rand_bytes)
    return root


def _small_files(root: Path, dirs: int, files: int, rng: random.Random, *, text: bool = False,
                 flat: bool = False) -> None:
    """``files`` files of 100 B - 4 KiB spread over ``dirs`` directories, varied modes and mtimes."""
    root.mkdir(parents=True)
    for i in range(files):
        sub = root if flat else root / f"dir{i % dirs:02d}"
        sub.mkdir(exist_ok=True)
        path = sub / f"file{i:04d}.txt"
        size = rng.randint(100, 4096)
        if text:  # grep has something to find in a third of them
            words = " ".join(rng.choice(("alpha", "beta", "gamma", "delta")) for _ in range(size // 6))
            body = (words + ("\nneedle\n" if i % 3 == 0 else "\n")).encode()
        else:
            body = rng.randbytes(size)
        path.write_bytes(body)
        os.chmod(path, MODES[i % len(MODES)])
        os.utime(path, (BASE_MTIME + i * 61, BASE_MTIME + i * 61))
    for sub in root.iterdir():
        if sub.is_dir():
            os.utime(sub, (BASE_MTIME, BASE_MTIME))


def _vim_file(path: Path, rng: random.Random) -> None:
    path.parent.mkdir(parents=True)
    lines = [f"{n:5d} " + " ".join(rng.choice(("note", "todo", "done", "idea")) for _ in range(8))
             for n in range(2000)]
    path.write_text("\n".join(lines) + "\n")


def _git_repo(root: Path, files: int, rng: random.Random) -> None:
    """A repo with one commit and ``files`` new files in 5 directories, ready for add + commit."""
    root.mkdir(parents=True)
    (root / "README").write_text("benchmark repo\n")
    _git(root, "init", "-q", "-b", "main")
    _git(root, "add", "README")
    _git(root, "commit", "-q", "-m", "initial")
    for i in range(files):
        sub = root / f"src{i % 5}"
        sub.mkdir(exist_ok=True)
        (sub / f"module{i:03d}.py").write_text(
            "".join(f"value_{i}_{n} = {rng.randint(0, 10**6)}\n" for n in range(rng.randint(5, 60))))


def _committed_repo(root: Path, files: int, rng: random.Random) -> None:
    """A clean repo: ``files`` files in 20 directories, all committed, so `git status` prints
    nothing. The index is built here: on the remote copy its inode and ctime stamps do not match,
    so a first `git status` re-reads every file (the cold case), a second one only stats them."""
    root.mkdir(parents=True)
    for i in range(files):
        sub = root / f"pkg{i % 20:02d}"
        sub.mkdir(exist_ok=True)
        path = sub / f"module{i:03d}.py"
        path.write_text("".join(f"value_{i}_{n} = {rng.randint(0, 10**6)}\n" for n in range(rng.randint(5, 60))))
        os.utime(path, (BASE_MTIME + i * 61, BASE_MTIME + i * 61))
    _git(root, "init", "-q", "-b", "main")
    _git(root, "add", "-A")
    _git(root, "commit", "-q", "-m", "benchmark repo")


def _vm_change_tree(root: Path) -> None:
    """What the VM-change workload watches: a file it modifies, next to a few it leaves alone."""
    root.mkdir(parents=True)
    (root / "notes.txt").write_text("first version\n")
    for i in range(5):
        (root / f"other{i}.txt").write_text(f"untouched {i}\n")


def _git(repo: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=repo, env=git_env(), check=True, stdout=subprocess.DEVNULL)


def git_env() -> dict[str, str]:
    """A git identity and no user/system config, so runs are the same on every machine."""
    return {**os.environ, "GIT_AUTHOR_NAME": "bench", "GIT_AUTHOR_EMAIL": "bench@example.invalid",
            "GIT_COMMITTER_NAME": "bench", "GIT_COMMITTER_EMAIL": "bench@example.invalid",
            "GIT_CONFIG_GLOBAL": "/dev/null", "GIT_CONFIG_NOSYSTEM": "1",
            # The repo on a mount may look owned by someone else; git would refuse it.
            "GIT_CONFIG_COUNT": "1", "GIT_CONFIG_KEY_0": "safe.directory", "GIT_CONFIG_VALUE_0": "*"}


def _big_file(path: Path, size: int) -> None:
    with open(path, "wb") as f:
        left = size
        while left:
            chunk = min(left, 8 * 1024 * 1024)
            f.write(os.urandom(chunk))
            left -= chunk
