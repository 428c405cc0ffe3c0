"""Small-file read-ahead in-process: ``VFS`` over ``RemoteFS`` over ``LocalVM`` (the same shell
fragments as the mount, no kernel), so the calls each read costs are exact."""

from __future__ import annotations

import os

import pytest

from arkerfs.fs import shell as S
from arkerfs.fs.readahead import FILE_MAX
from arkerfs.fs.remote import RemoteFS
from arkerfs.fs.vfs import VFS, Options
from tests.localvm import LocalVM

HOSTILE = [b"-rf", b"a\nb", b"q'uote\"", b"$(touch pwned)", b"\xff\xfe latin", b" space "]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def vm(tmp_path):
    async with LocalVM(str(tmp_path / "vm")) as fake:
        yield fake


def make_vfs(vm, tmp_path, clock):
    spool = tmp_path / "spool"
    spool.mkdir(exist_ok=True)
    return VFS(RemoteFS(vm), b"/home/user", str(spool), Options(cache_ttl=3.0), timer=clock)


async def cat(vfs, *names: bytes) -> bytes:
    ino = 1
    for name in names:
        ino, _ = await vfs.lookup(ino, name)
    fh, _ = await vfs.open(ino, os.O_RDONLY)
    try:
        return await vfs.read(fh, 0, 1 << 20)
    finally:
        await vfs.release(fh)


def write(vm, rel: bytes, data: bytes) -> None:
    path = os.path.join(os.fsencode(vm.home), rel)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)


async def test_reading_200_small_files_of_a_directory_costs_one_content_run(vm, tmp_path):
    for i in range(200):
        write(vm, b"d/f%03d" % i, b"content %d\n" % i)
    vfs = make_vfs(vm, tmp_path, Clock())
    await vfs.readdir(vfs.opendir((await vfs.lookup(1, b"d"))[0]), 0)
    vm.calls.clear()
    for i in range(200):
        assert await cat(vfs, b"d", b"f%03d" % i) == b"content %d\n" % i
    assert dict(vm.calls) == {"run": 1}


async def test_a_single_small_file_costs_one_call(vm, tmp_path):
    write(vm, b"d/only", b"x" * 100)
    write(vm, b"d/other", b"y" * 100)
    vfs = make_vfs(vm, tmp_path, Clock())
    d, _ = await vfs.lookup(1, b"d")
    await vfs.lookup(d, b"only")
    vm.calls.clear()
    assert await cat(vfs, b"d", b"only") == b"x" * 100
    assert sum(vm.calls.values()) == 1


async def test_large_files_are_never_read_ahead_and_keep_their_own_reads(vm, tmp_path):
    big = os.urandom(FILE_MAX + 1)
    write(vm, b"d/big", big)
    write(vm, b"d/small", b"s")
    vfs = make_vfs(vm, tmp_path, Clock())
    assert await cat(vfs, b"d", b"big") == big
    assert vfs.readahead.batches == 0
    vm.calls.clear()
    assert await cat(vfs, b"d", b"small") == b"s"
    assert vfs.readahead.files == 1  # the small one alone: the large sibling stays out


async def test_a_batch_bounded_in_bytes_is_followed_by_the_next_one(vm, tmp_path):
    for i in range(30):
        write(vm, b"d/f%02d" % i, bytes([65 + i]) * 60_000)  # 1.8 MB in all, 3 batches
    vfs = make_vfs(vm, tmp_path, Clock())
    await vfs.readdir(vfs.opendir((await vfs.lookup(1, b"d"))[0]), 0)
    vm.calls.clear()
    for i in range(30):
        assert await cat(vfs, b"d", b"f%02d" % i) == bytes([65 + i]) * 60_000
    assert dict(vm.calls) == {"run": 3}


async def test_a_file_changed_in_the_vm_is_read_again_once_its_version_differs(vm, tmp_path):
    for name in [b"a", b"b", *HOSTILE]:
        write(vm, b"d/" + name, b"old " + name)
    clock = Clock()
    vfs = make_vfs(vm, tmp_path, clock)
    assert await cat(vfs, b"d", b"a") == b"old a"
    write(vm, b"d/b", b"new content of b, longer")
    os.utime(os.path.join(vm.home, "d", "b"), ns=(5 * 10**18, 5 * 10**18))
    clock.now += 10  # past the TTL: b's new version is seen
    assert await cat(vfs, b"d", b"b") == b"new content of b, longer"
    for name in HOSTILE:  # read ahead with the rest, each under its own name
        assert await cat(vfs, b"d", name) == b"old " + name
    assert not os.path.exists(os.path.join(vm.home, "pwned"))


async def test_a_version_changed_after_the_batch_is_never_served_from_it(vm, tmp_path):
    write(vm, b"d/a", b"a1")
    write(vm, b"d/b", b"b1")
    clock = Clock()
    vfs = make_vfs(vm, tmp_path, clock)
    assert await cat(vfs, b"d", b"a") == b"a1"  # b read ahead at its first version
    write(vm, b"d/b", b"b2")  # same size: only the mtime tells
    os.utime(os.path.join(vm.home, "d", "b"), ns=(6 * 10**18, 6 * 10**18))
    clock.now += 10
    vm.calls.clear()
    assert await cat(vfs, b"d", b"b") == b"b2"


async def test_the_fragment_skips_symlinks_directories_and_unreadable_files(vm, tmp_path):
    write(vm, b"d/f", b"f")
    write(vm, b"d/secret", b"s")
    os.chmod(os.path.join(vm.home, "d", "secret"), 0)
    os.symlink("f", os.path.join(vm.home, "d", "link"))
    os.mkdir(os.path.join(vm.home, "d", "sub"))
    files = await RemoteFS(vm).read_small_files(b"/home/user/d", b"f", [], FILE_MAX, 1 << 20)
    names = [f.name for f in files]
    assert names[0] == b"f" and b"link" not in names and b"sub" not in names
    if os.geteuid() != 0:
        assert b"secret" not in names
    st = os.stat(os.path.join(vm.home, "d", "f"))
    assert (files[0].size, files[0].mtime_ns, files[0].content) == (1, st.st_mtime_ns, b"f")


def test_the_parser_reads_records_with_any_bytes_in_names():
    frag = S.read_small_files(b"/home/user/d", b"x", [], 10, 100)
    out = b"R\0a\nb\x00\xff\x003\x00" + b"7\0" + b"YWJj\0" + b"X\x000\x00"
    (outcome,) = S.parse_output(out.replace(b"\x00\xff\x00", b"\xff\0"))
    assert frag.parse(outcome.records) == [S.SmallFile(b"a\nb\xff", 3, 7, b"abc")]


async def test_a_walk_of_20_directories_reads_their_contents_in_one_run(vm, tmp_path):
    for d in range(20):
        for i in range(15):
            write(vm, b"t/d%02d/f%02d" % (d, i), b"%d/%d" % (d, i))
    write(vm, b"t/d05/deeper/x", b"deep")
    vfs = make_vfs(vm, tmp_path, Clock())
    t, _ = await vfs.lookup(1, b"t")
    for d in range(20):
        await vfs.readdir(vfs.opendir((await vfs.lookup(t, b"d%02d" % d))[0]), 0)
    deeper, _ = await vfs.lookup((await vfs.lookup(t, b"d05"))[0], b"deeper")
    await vfs.readdir(vfs.opendir(deeper), 0)
    vm.calls.clear()
    for d in range(20):
        for i in range(15):
            assert await cat(vfs, b"t", b"d%02d" % d, b"f%02d" % i) == b"%d/%d" % (d, i)
    assert await cat(vfs, b"t", b"d05", b"deeper", b"x") == b"deep"
    assert dict(vm.calls) == {"run": 1}


async def test_a_file_in_the_home_or_in_one_of_its_directories_never_reads_the_whole_home(vm, tmp_path):
    write(vm, b"top", b"t")
    write(vm, b"sub/inner", b"i")
    write(vm, b"other/x", b"x")
    vfs = make_vfs(vm, tmp_path, Clock())
    assert await cat(vfs, b"top") == b"t"
    assert vfs.readahead.files == 1
    assert await cat(vfs, b"sub", b"inner") == b"i"
    assert vfs.readahead.files == 2


async def test_too_many_cached_names_to_send_fall_back_to_own_reads(vm, tmp_path, monkeypatch):
    from arkerfs.fs import readahead

    monkeypatch.setattr(readahead, "EXCLUDE_MAX", 10)  # a few names: then each read is its own
    for i in range(30):
        write(vm, b"d/f%02d" % i, bytes([65 + i]) * 60_000)
    vfs = make_vfs(vm, tmp_path, Clock())
    await vfs.readdir(vfs.opendir((await vfs.lookup(1, b"d"))[0]), 0)
    vm.calls.clear()
    for i in range(30):
        assert await cat(vfs, b"d", b"f%02d" % i) == bytes([65 + i]) * 60_000
    assert vfs.readahead.batches == 1 and sum(vm.calls.values()) == 1 + 30 - 11  # 11 came ahead
