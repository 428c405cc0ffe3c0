"""Everyday shell tools on a real mount, each result also checked in the VM through the API.

One mount serves the module (each test works in its own directory); the TTL test has its own
mount with a short ``--cache-ttl``.
"""

from __future__ import annotations

import ctypes
import errno
import os
import random
import stat
import subprocess
import time

import pytest

from tests.conftest import WRITE_MODES
from tests.mountutil import Api, mounted

HOME = "/home/user"


# made in the VM before the mount starts (a 3 MB file is past the inline-read limit)
BIG = random.Random(7).randbytes(3 * 1024 * 1024 + 17)


@pytest.fixture(scope="module", params=list(WRITE_MODES))
def m(server, api, request):
    vm = api.fork()
    api.write_file(vm, f"{HOME}/big.bin", BIG)
    with mounted(server, *WRITE_MODES[request.param], vm_id=vm) as mount:
        yield mount


def sh(*cmd: str, cwd: str | None = None) -> str:
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, timeout=60)
    assert done.returncode == 0, (cmd, done.stdout, done.stderr)
    return done.stdout


def write(path: str, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)


def read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


# type, mode, links, name, link target. No mtimes: until the cache entry expires, a file just
# uploaded and a directory whose entries the mount just changed show the local clock's "now"
# (docs/MOUNT.md); times set explicitly (touch, cp -a, rsync, tar) are exact and checked as such.
FIND_FMT = r"%y %m %n %P -> %l\n"


def find_local(root: str, fmt: str = FIND_FMT, *opts: str) -> list[str]:
    return sorted(sh("find", root, "-mindepth", "1", *opts, "-printf", fmt).splitlines())


def find_vm(api: Api, m, rel: str, fmt: str = FIND_FMT, *opts: str) -> list[str]:
    return sorted(api.sh(m.vm_id, f"find {HOME}/{rel} -mindepth 1 {' '.join(opts)} -printf '{fmt}'").splitlines())


def test_cp_mv_rm_mkdir_p_and_listings(m, api):
    d = m.p("tree")
    sh("mkdir", "-p", f"{d}/a/b/c", f"{d}/x y/z")
    write(f"{d}/a/b/c/file.txt", b"hello\n" * 100)
    write(f"{d}/x y/z/other", b"o")
    os.chmod(f"{d}/x y/z/other", 0o750)
    sh("cp", f"{d}/a/b/c/file.txt", f"{d}/copy.txt")
    sh("touch", "-d", "2020-02-02 02:02:02.123456789", f"{d}/a/b/c")
    sh("cp", "-a", f"{d}/a", f"{d}/a-archive")  # recursive, keeps modes and times
    sh("mv", f"{d}/x y", f"{d}/moved dir")
    sh("mv", f"{d}/copy.txt", f"{d}/moved dir/z/")
    # what a user sees through the mount is exactly what the VM has
    assert find_local(d) == find_vm(api, m, "tree")
    assert api.sh(m.vm_id, f"cat '{HOME}/tree/moved dir/z/copy.txt'") == "hello\n" * 100
    assert api.sh(m.vm_id, f"stat -c %a '{HOME}/tree/moved dir/z/other'") == "750\n"
    # cp -a kept an explicitly set time to the ns; a file just uploaded shows the mount's
    # estimate of its mtime until the cache entry expires, so its copy is close, not exact
    assert api.sh(m.vm_id, f"stat -c %.9Y {HOME}/tree/a-archive/b/c") == "1580608922.123456789\n"
    original, copied = api.sh(m.vm_id, f"stat -c %.9Y {HOME}/tree/a/b/c/file.txt "
                                       f"{HOME}/tree/a-archive/b/c/file.txt").split()
    assert abs(float(original) - float(copied)) < 2
    # ls -l: names, sizes, modes, link counts as the VM's own ls shows them
    mine = sh("ls", "-l", "--time-style=+%s.%N", f"{d}/moved dir/z").splitlines()
    theirs = api.sh(m.vm_id, f"ls -l --time-style=+%s.%N '{HOME}/tree/moved dir/z'").splitlines()
    # mode, links, size, mtime and name (owners differ: the mount shows files as the local user's)
    cols = lambda lines: [[f[i] for i in (0, 1, 4, 5, 6)] for f in map(str.split, lines[1:])]  # noqa: E731
    assert cols(mine) == cols(theirs) and len(mine) == 3  # "total" + 2 entries
    assert [ln.split()[-1] for ln in mine[1:]] == ["copy.txt", "other"]
    sh("rm", "-r", f"{d}/a", f"{d}/moved dir")
    assert sorted(os.listdir(d)) == ["a-archive"]
    assert api.sh(m.vm_id, f"ls -A {HOME}/tree") == "a-archive\n"


def test_stat_touch_chmod_and_links(m, api):
    d = m.p("meta")
    os.mkdir(d)
    f = f"{d}/f"
    write(f, b"1234567")
    sh("touch", "-d", "2019-06-07 08:09:10.987654321", f)
    sh("touch", "-a", "-d", "2001-01-01 00:00:00.000000001", f)
    sh("chmod", "u=rwx,g=rx,o=", f)
    sh("ln", f, f"{d}/hard")
    sh("ln", "-s", "f", f"{d}/soft")
    sh("ln", "-s", "../meta", f"{d}/dirlink")
    fmt = "%n|%s|%a|%h|%.9Y|%F|%N"  # no atimes: the VM's own readlink (for %N) moves a link's
    mine = sh("stat", "--printf", fmt + r"\n", f, f"{d}/hard", f"{d}/soft", f"{d}/dirlink")
    theirs = api.sh(m.vm_id, f"cd {HOME}/meta && stat --printf '{fmt}\\n' f hard soft dirlink")
    # names differ by the directory prefix; %N ends with the quoted name and link target
    norm = lambda text: [ln.split("|", 1)[1] for ln in text.splitlines()]  # noqa: E731
    assert [ln.rsplit("|", 1)[0] for ln in norm(mine)] == [ln.rsplit("|", 1)[0] for ln in norm(theirs)]
    ends = ("/f'", "/hard'", "/soft' -> 'f'", "/dirlink' -> '../meta'")
    assert all(ln.endswith(end) for ln, end in zip(mine.splitlines(), ends, strict=True)), mine
    assert sh("stat", "-c", "%a %h %s %.9Y", f) == "750 2 7 1559894950.987654321\n"
    assert os.stat(f).st_atime_ns == 978307200_000000001
    assert os.stat(f).st_ino == os.stat(f"{d}/hard").st_ino
    assert os.readlink(f"{d}/soft") == "f" and read(f"{d}/soft") == b"1234567"
    assert sorted(os.listdir(f"{d}/dirlink")) == ["dirlink", "f", "hard", "soft"]
    assert sh("ls", "-l", f"{d}/soft").rstrip().endswith("soft -> f")
    # a write through one hard link shows through the other, there and in the VM
    with open(f"{d}/hard", "ab") as fh:
        fh.write(b"89")
    assert read(f) == b"123456789"
    assert api.sh(m.vm_id, f"cat {HOME}/meta/f") == "123456789"
    os.unlink(f)
    assert os.stat(f"{d}/hard").st_nlink == 1
    assert api.sh(m.vm_id, f"stat -c %h {HOME}/meta/hard") == "1\n"


def test_cat_head_tail_dd_truncate_on_a_large_file(m, api):
    """A 3 MB file is past the inline-read limit: reads go by ranges, edits load it first."""
    data = bytearray(BIG)
    f = m.p("big.bin")
    assert subprocess.run(["cat", f], capture_output=True, check=True).stdout == data
    assert subprocess.run(["head", "-c", "1000", f], capture_output=True, check=True).stdout == data[:1000]
    assert subprocess.run(["tail", "-c", "4097", f], capture_output=True, check=True).stdout == data[-4097:]
    # dd into the middle without truncating, then past the end
    sh("dd", "if=/dev/zero", f"of={f}", "bs=1000", "seek=1500", "count=3", "conv=notrunc", "status=none")
    data[1_500_000:1_503_000] = bytes(3000)
    assert api.read_file(m.vm_id, f"{HOME}/big.bin") == data
    sh("dd", "if=/dev/zero", f"of={f}", "bs=1", f"seek={len(data) + 10}", "count=1", "conv=notrunc",
       "status=none")
    data += bytes(11)
    assert os.stat(f).st_size == len(data)
    assert api.read_file(m.vm_id, f"{HOME}/big.bin") == data
    sh("truncate", "-s", "2M", f)
    assert api.sh(m.vm_id, f"stat -c %s {HOME}/big.bin") == f"{2 * 1024 * 1024}\n"
    assert read(f) == data[:2 * 1024 * 1024]
    sh("truncate", "-s", "+5", f)
    assert api.read_file(m.vm_id, f"{HOME}/big.bin") == data[:2 * 1024 * 1024] + bytes(5)


def test_find_du_df_and_mkfifo_agree_with_the_vm(m, api):
    d = m.p("sizes")
    sh("mkdir", "-p", f"{d}/one/two")
    for i, size in enumerate((0, 1, 4095, 4096, 70_000)):
        write(f"{d}/one/f{i}", b"z" * size)
    write(f"{d}/one/two/g", b"g" * 12345)
    os.mkfifo(f"{d}/one/pipe")
    os.symlink("two/g", f"{d}/one/lg")
    assert find_local(d, r"%y %s %P -> %l\n", "-not", "-type", "d") == \
        find_vm(api, m, "sizes", r"%y %s %P -> %l\n", "-not", "-type", "d")
    assert sh("find", d, "-type", "p", "-printf", "%P\n") == "one/pipe\n"
    assert sorted(sh("find", d, "-size", "+4k", "-type", "f", "-printf", "%P\n").split()) == ["one/f4", "one/two/g"]
    # apparent sizes add up the same on both sides
    assert sh("du", "-s", "--apparent-size", "-B1", d).split()[0] == \
        api.sh(m.vm_id, f"du -s --apparent-size -B1 {HOME}/sizes").split()[0]
    # df names the VM and reports the VM's filesystem sizes
    df = sh("df", "-B1", "--output=source,size,target", m.path).splitlines()[1].split()
    assert df[0] == f"arkerfs:{m.vm_id}" and df[2] == m.path
    vm_size = int(api.sh(m.vm_id, f"df -B1 --output=size {HOME}").splitlines()[1])
    assert abs(int(df[1]) - vm_size) <= vm_size // 100
    assert stat.S_ISFIFO(os.lstat(f"{d}/one/pipe").st_mode)
    assert api.sh(m.vm_id, f"stat -c %F {HOME}/sizes/one/pipe") == "fifo\n"


_libc = ctypes.CDLL(None, use_errno=True)


def renameat2(old: str, new: str, flags: int) -> None:
    AT_FDCWD = -100
    if _libc.renameat2(AT_FDCWD, old.encode(), AT_FDCWD, new.encode(), flags) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))


def test_rename_noreplace_and_exchange(m, api):
    d = m.p("swap")
    os.mkdir(d)
    for name, data in (("a", b"A"), ("b", b"B")):
        write(f"{d}/{name}", data)
    with pytest.raises(OSError) as info:
        renameat2(f"{d}/a", f"{d}/b", 1)  # RENAME_NOREPLACE
    assert info.value.errno == errno.EEXIST
    renameat2(f"{d}/a", f"{d}/b", 2)  # RENAME_EXCHANGE
    assert read(f"{d}/a") == b"B" and read(f"{d}/b") == b"A"
    assert api.sh(m.vm_id, f"cat {HOME}/swap/a {HOME}/swap/b") == "BA"
    renameat2(f"{d}/a", f"{d}/c", 1)  # NOREPLACE onto a free name is a plain rename
    assert api.sh(m.vm_id, f"ls {HOME}/swap") == "b\nc\n"


# -- changes made in the VM ----------------------------------------------------------------------

TTL = 1.0
# docs/MOUNT.md: "a change made in the VM is visible through the mount within --cache-ttl + 1 s"
DOCUMENTED_BOUND = TTL + 1.0
SLACK = 0.5  # polling granularity and the time of one stat/read round trip on a busy machine


def test_changes_in_the_vm_show_within_the_documented_bound(server, api):
    with open(os.path.join(os.path.dirname(__file__), "..", "docs", "MOUNT.md"), encoding="utf-8") as f:
        assert "within `--cache-ttl` + 1 s" in f.read()
    with mounted(server, "--cache-ttl", str(TTL)) as m:
        write(m.p("same"), b"AAAA")
        write(m.p("doomed"), b"x")
        write(m.p("old-name"), b"r")
        # prime every cache: the kernel's and ours
        for name in ("same", "doomed", "old-name"):
            assert read(m.p(name))
        assert not os.path.exists(m.p("born"))
        sorted(os.listdir(m.path))

        def visible_within(check, what: str) -> float:
            start = time.monotonic()
            while not check():
                elapsed = time.monotonic() - start
                assert elapsed < DOCUMENTED_BOUND + SLACK, f"{what} not visible after {elapsed:.2f} s"
                time.sleep(0.05)
            return time.monotonic() - start

        took = {}
        api.sh(m.vm_id, f"printf new > {HOME}/born")
        took["create"] = visible_within(lambda: os.path.exists(m.p("born")) and read(m.p("born")) == b"new",
                                        "a new file")
        api.sh(m.vm_id, f"sleep 0.01; printf BBBB > {HOME}/same")  # same size, new mtime
        took["modify"] = visible_within(lambda: read(m.p("same")) == b"BBBB", "new content of the same size")
        api.sh(m.vm_id, f"rm {HOME}/doomed")
        took["delete"] = visible_within(lambda: not os.path.exists(m.p("doomed"))
                                        and "doomed" not in os.listdir(m.path), "a deletion")
        api.sh(m.vm_id, f"mv {HOME}/old-name {HOME}/new-name")
        took["rename"] = visible_within(lambda: os.path.exists(m.p("new-name"))
                                        and not os.path.exists(m.p("old-name"))
                                        and read(m.p("new-name")) == b"r", "a rename")
        print("visible after", {k: round(v, 2) for k, v in took.items()})
