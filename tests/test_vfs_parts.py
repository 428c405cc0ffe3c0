"""The FUSE-free building blocks: metadata cache, single-flight, write buffers, contents."""

from __future__ import annotations

import errno
import stat

import trio

from arkerfs.fs import buffers, content
from arkerfs.fs.buffers import WriteBuffer
from arkerfs.fs.cache import MetaCache, SingleFlight
from arkerfs.fs.content import ContentCache
from arkerfs.fs.errors import FsError
from arkerfs.fs.model import Attrs, Entry


def attrs(size=0, kind=stat.S_IFREG, mtime=1):
    return Attrs(kind | 0o644, size, 1, 0, 0, 0, mtime, 0)


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_listing_answers_children_and_absences_until_ttl():
    clock = Clock()
    c = MetaCache(3.0, timer=clock)
    c.store_listing(b"/h", attrs(kind=stat.S_IFDIR), [Entry(b"a", attrs(5))], c.generation)
    assert c.attrs(b"/h/a").size == 5
    assert c.is_absent(b"/h/zz")
    assert not c.is_absent(b"/h/a")
    clock.now = 3.5
    assert c.attrs(b"/h/a") is None and not c.is_absent(b"/h/zz")


def test_own_changes_apply_at_once_and_stale_fills_are_dropped():
    c = MetaCache(3.0, timer=Clock())
    c.store_listing(b"/h", attrs(kind=stat.S_IFDIR), [Entry(b"a", attrs())], c.generation)
    started = c.generation
    c.added(b"/h/new", attrs(7))
    assert [e.name for e in c.listing(b"/h")] == [b"a", b"new"]
    c.store_absent(b"/h/new", started)  # a lookup that began before the create
    assert c.attrs(b"/h/new").size == 7
    c.removed(b"/h/a", is_dir=False)
    assert c.is_absent(b"/h/a") and [e.name for e in c.listing(b"/h")] == [b"new"]


def test_renamed_directory_drops_its_subtree():
    c = MetaCache(3.0, timer=Clock())
    c.store_listing(b"/h/d", attrs(kind=stat.S_IFDIR), [Entry(b"f", attrs(1))], c.generation)
    c.renamed(b"/h/d", b"/h/e")
    assert c.attrs(b"/h/d/f") is None and c.listing(b"/h/d") is None
    assert c.attrs(b"/h/e").is_dir and c.is_absent(b"/h/d")


async def test_single_flight_shares_one_call_and_its_error():
    calls = 0
    sf = SingleFlight()

    async def slow():
        nonlocal calls
        calls += 1
        await trio.sleep(0.01)
        return calls

    results = []
    async with trio.open_nursery() as n:
        for _ in range(5):
            n.start_soon(_append, results, sf, slow)
    assert results == [1] * 5 and calls == 1

    async def boom():
        await trio.sleep(0.01)
        raise FsError(errno.EIO, "x")

    errors = []

    async def catch():
        try:
            await sf.do("k", boom)
        except FsError as exc:
            errors.append(exc.errno)

    async with trio.open_nursery() as n:
        n.start_soon(catch)
        n.start_soon(catch)
    assert errors == [errno.EIO, errno.EIO]


async def _append(results, sf, fn):
    results.append(await sf.do("k", fn))


async def test_single_flight_follower_survives_a_cancelled_leader():
    sf = SingleFlight()
    calls = 0

    async def fn():
        nonlocal calls
        calls += 1
        await trio.sleep(0.05)
        return "ok"

    got = []
    async with trio.open_nursery() as n:
        leader_scope = trio.CancelScope()

        async def leader():
            with leader_scope:
                await sf.do("k", fn)

        async def follower():
            got.append(await sf.do("k", fn))

        n.start_soon(leader)
        await trio.sleep(0.01)
        n.start_soon(follower)
        await trio.sleep(0.01)
        leader_scope.cancel()
    assert got == ["ok"] and calls == 2


def test_write_buffer_offsets_sparse_truncate_and_spill(tmp_path, monkeypatch):
    monkeypatch.setattr(buffers, "MEMORY_LIMIT", 16)
    b = WriteBuffer(str(tmp_path))
    assert not b.dirty
    b.write(0, b"hello")
    b.write(8, b"xy")
    assert b.read(0, 100) == b"hello\0\0\0xy" and b.dirty
    b.truncate(3)
    assert b.read(0, 100) == b"hel"
    b.write(20, b"Z")  # past the memory limit: moves to a spool file
    assert b.spilled and b.size == 21
    assert b.read(0, 100) == b"hel" + bytes(17) + b"Z"
    src = b.source()
    assert src.read_bytes() == b"hel" + bytes(17) + b"Z"
    saved = b.rescue(str(tmp_path / "rescue"), "f")
    assert open(saved, "rb").read() == b"hel" + bytes(17) + b"Z"
    b.close()


class FakeRemoteFile:
    def __init__(self, data, inline, log):
        self.data, self.inline, self.size, self.log = data, inline, len(data), log
        self.expired = False

    async def read_all(self):
        return self.data

    async def read_range(self, off, n):
        self.log.append((off, n))
        return self.data[off:off + n]

    async def read_range_into(self, off, n, sink):
        sink(off, await self.read_range(off, n))

    def continues(self, previous):
        pass


async def test_ranged_content_fetches_only_needed_aligned_chunks(tmp_path, monkeypatch):
    monkeypatch.setattr(content, "CHUNK", 4)
    data = bytes(range(20))
    log = []
    opens = []

    async def opener(path):
        opens.append(path)
        return FakeRemoteFile(data, False, log)

    cache = ContentCache(opener, str(tmp_path))
    key = (b"/h/f", 20, 1)
    c = await cache.get(key)
    assert await cache.read(key, c, 5, 4) == data[5:9]
    assert log == [(4, 8)]  # both chunks of the read in one GET
    assert await cache.read(key, c, 6, 2) == data[6:8] and len(log) == 1  # cached chunk
    assert await cache.get(key) is c and opens == [b"/h/f"]
    c._file.expired = True
    assert await cache.read(key, c, 16, 10) == data[16:]
    assert opens == [b"/h/f", b"/h/f"]  # renewed URL


async def test_whole_content_spools_large_files(tmp_path, monkeypatch):
    monkeypatch.setattr(content, "MEMORY_LIMIT", 8)
    data = b"0123456789abcdef"

    async def opener(path):
        return FakeRemoteFile(data, True, [])

    cache = ContentCache(opener, str(tmp_path))
    c = await cache.get((b"/h/f", 16, 1))
    assert await c.read(10, 100) == data[10:]
    cache.forget(b"/h/f")
    assert await cache.get((b"/h/f", 16, 1)) is not c


async def test_content_cache_is_bounded_in_bytes(tmp_path):
    async def opener(path):
        return FakeRemoteFile(b"x" * 600, True, [])

    cache = ContentCache(opener, str(tmp_path), max_bytes=1000)
    first = await cache.get((b"/a", 600, 1))
    await cache.get((b"/b", 600, 1))
    assert await cache.get((b"/a", 600, 1)) is not first  # evicted to make room


def test_a_ttl_switch_keeps_fills_in_flight_with_the_shorter_ttl():
    clock = Clock()
    c = MetaCache(3.0, timer=clock)
    began = c.generation  # a listing on its way when the change watcher went live
    c.set_ttl(60.0)
    c.store_listing(b"/h", attrs(kind=stat.S_IFDIR), [Entry(b"a", attrs(5))], began)
    c.store_attrs(b"/h/b", attrs(7), c.generation)  # begun after the switch
    clock.now = 3.5
    assert c.listing(b"/h") is None and c.attrs(b"/h/a") is None  # it may have read the VM before
    assert c.attrs(b"/h/b").size == 7
    clock.now = 59.0
    c.set_ttl(3.0)  # the watcher stopped vouching: 3 s more, from now
    assert c.attrs(b"/h/b").size == 7
    clock.now = 62.5
    assert c.attrs(b"/h/b") is None
    began = c.generation
    c.added(b"/h/c", attrs())  # any other change still drops a fill begun before it
    c.store_attrs(b"/h/d", attrs(), began)
    assert c.attrs(b"/h/d") is None
