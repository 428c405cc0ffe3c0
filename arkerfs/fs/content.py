"""File contents fetched from the remote, shared by every handle that reads the same version.

One ``FileContent`` is one version of one remote file, keyed by ``(path, size, mtime_ns)``:

- ``WholeContent``: the sync read returned the bytes inline. They are kept in memory when
  small (``MEMORY_LIMIT``, and while the cache's in-memory total stays under ``MEMORY_BUDGET``),
  else in an anonymous file in the private spool directory.
- ``RangedContent``: the sync read returned a presigned URL. Nothing is downloaded up front;
  ``read`` fetches the aligned chunks it needs (``CHUNK`` bytes each) and keeps them, streamed
  straight into an anonymous spool file (never gathered in memory: the daemon's size does not
  grow with the files it reads). One ranged GET fetches a run of missing chunks: a read that
  lands on the chunk right after the previous fetch is sequential and doubles the run (1, 2, 4,
  ... up to 32 chunks), and starts the GET of the run after it at once, in the background, so a
  sequential reader always has the next run on its way (``cat`` of 20 MB is 5 GETs, of 100 MB
  8); any other read starts again at one chunk (random access stays cheap), and a read spanning several chunks fetches them together.

One version per handle: every ranged answer is checked to be of the version first read (the
SDK's ``object_changed``), and an expired URL is renewed with another ``open_read`` that must
continue that same version. Otherwise the read fails with ``ESTALE`` rather than mixing
versions; chunks already held stay readable, and the version leaves the cache.

``ContentCache`` bounds the bytes kept (LRU). An evicted version stays usable by handles that
already hold it; it is freed when the last of them lets go.

Concurrency contract: reads await the remote only to fetch missing chunks; the chunk and
in-flight tables are updated without awaiting, so concurrent readers of one version never fetch
a chunk twice (a reader waits for the GET that covers its chunk and shares its error).
"""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import Awaitable, Callable
from typing import Any

import cachetools
import trio

from arkerfs.client.errors import ArkerError
from arkerfs.fs.buffers import WriteBuffer
from arkerfs.fs.cache import SingleFlight
from arkerfs.fs.errors import FsError, errno_for_api_error

log = logging.getLogger(__name__)

CHUNK = 1024 * 1024  # ranged reads fetch aligned chunks of this size
READAHEAD_MAX = 32  # chunks one ranged GET may fetch (a sequential reader's run grows up to it)
MEMORY_LIMIT = 1024 * 1024  # whole contents above this go to a spool file
MEMORY_BUDGET = 32 * 1024 * 1024  # whole contents kept in memory by the cache, in total

ContentKey = tuple[bytes, int, int]  # (path, size, mtime_ns)
Opener = Callable[[bytes], Awaitable[Any]]  # path -> RemoteFile (RemoteFS.open_read)


class FileContent:
    size: int
    in_memory: int = 0  # of the bytes held, those in memory (the rest are in the spool)

    @property
    def charge(self) -> int:
        """Bytes this version holds, for the cache bound."""
        raise NotImplementedError

    async def read(self, offset: int, length: int) -> bytes:
        raise NotImplementedError


class WholeContent(FileContent):
    """All bytes of a version, in memory or in an anonymous spool file."""

    def __init__(self, data: bytes, spool_dir: str, *, in_memory: bool | None = None) -> None:
        self.size = len(data)
        if in_memory is None:
            in_memory = self.size <= MEMORY_LIMIT
        self._bytes = WriteBuffer(spool_dir, memory_limit=self.size if in_memory else 0, anonymous=True)
        self._bytes.write(0, data)
        self.in_memory = 0 if self._bytes.spilled else self.size

    @property
    def charge(self) -> int:
        return self.size

    async def read(self, offset: int, length: int) -> bytes:
        return self._bytes.read(offset, length)


class RangedContent(FileContent):
    """A presigned version read on demand by aligned chunks, kept in a spool file."""

    def __init__(self, path: bytes, remote_file: Any, opener: Opener, spool_dir: str) -> None:
        self.path = path
        self.size = remote_file.size
        self._file = remote_file
        self._opener = opener
        self._chunks = WriteBuffer(spool_dir, memory_limit=0, anonymous=True)  # at their offsets
        self._held: set[int] = set()  # indexes of the chunks in ``_chunks``
        self._fetching: dict[int, _Fetch] = {}  # chunk index -> the GET bringing it
        self._next = 0  # the chunk right after the last fetched run: reading it is sequential
        self._run = 0  # chunks in the last sequential run
        self._uncached = False  # the spool failed (disk full): reads go straight to the store

    @property
    def charge(self) -> int:
        return min(len(self._held) * CHUNK, self.size)

    async def read(self, offset: int, length: int) -> bytes:
        end = min(offset + length, self.size)
        if offset >= end:
            return b""
        first, last = offset // CHUNK, (end - 1) // CHUNK
        for i in range(first, last + 1):
            await self._chunk(i, last)
        if self._uncached and not all(i in self._held for i in range(first, last + 1)):
            try:
                return await (await self._url()).read_range(offset, end - offset)
            except ArkerError as exc:
                raise _read_error(self.path, exc) from exc
        return self._chunks.read(offset, end - offset)

    async def _chunk(self, index: int, last: int) -> None:
        """Wait until chunk ``index`` (of a read that needs chunks up to ``last``) is held."""
        while index not in self._held and not self._uncached:
            fetch = self._fetching.get(index)
            if fetch is None:
                await self._fetch(index, last)
                continue
            await fetch.done.wait()
            if isinstance(fetch.error, FsError):  # a fresh copy: one exception object per raiser
                raise FsError(fetch.error.errno, fetch.error.detail)
            # else stored, or its fetcher was cancelled: look again (and fetch it ourselves)

    async def _fetch(self, index: int, last: int) -> None:
        """One ranged GET from chunk ``index``: its run doubles when the read is sequential,
        covers the rest of the read (``last``), and stops at a chunk held or in flight. A
        sequential run also starts the next one in the background (``_ahead``), so a reader
        going on finds it on its way rather than waiting a round trip and a whole run."""
        sequential = index == self._next and index > 0
        run = min(max(self._run * 2, 1), READAHEAD_MAX) if index == self._next else 1
        count = max(run, min(last - index + 1, READAHEAD_MAX))
        fetch, stop = self._claim(index, count)
        self._next, self._run = stop, run
        if sequential:
            self._ahead(stop, min(run * 2, READAHEAD_MAX))
        await self._transfer(fetch, index, stop)

    def _claim(self, index: int, count: int) -> tuple[_Fetch, int]:
        """Register a GET of up to ``count`` chunks from ``index`` (stopping at one held or in
        flight); returns it and the chunk after its last."""
        stop, limit = index, min(index + count, self._chunk_count())
        while stop < limit and stop not in self._held and stop not in self._fetching:
            stop += 1
        fetch = _Fetch()
        for i in range(index, stop):
            self._fetching[i] = fetch
        return fetch, stop

    def _chunk_count(self) -> int:
        return (self.size + CHUNK - 1) // CHUNK

    def _ahead(self, index: int, count: int) -> None:
        """Start the GET of the next sequential run now, in a task of its own. If it fails, its
        readers fetch those chunks themselves (and get the error, if any, from their own GET)."""
        if index >= self._chunk_count() or index in self._held or index in self._fetching or self._uncached:
            return
        fetch, stop = self._claim(index, count)
        self._next, self._run = stop, count

        async def fetch_ahead() -> None:
            try:
                await self._transfer(fetch, index, stop)
            except BaseException as exc:  # noqa: BLE001 - a system task must not raise; see the doc
                fetch.error = None  # never handed to a reader: it fetches for itself
                if not isinstance(exc, (Exception, trio.Cancelled)):
                    raise
                log.debug("read-ahead of %r from chunk %d failed: %r", self.path, index, exc)

        trio.lowlevel.spawn_system_task(fetch_ahead)

    async def _transfer(self, fetch: _Fetch, index: int, stop: int) -> None:
        try:
            remote = await self._url()
            try:  # each piece goes to the spool as it arrives
                await remote.read_range_into(index * CHUNK, (stop - index) * CHUNK, self._chunks.write)
            except ArkerError as exc:  # RemoteFile is the SDK's: map its errors here
                raise _read_error(self.path, exc) from exc
            except FsError:
                if self._chunks.broken is None:
                    raise
                log.warning("local spool failed while caching %r; reading it without a cache", self.path)
                self._uncached = True
                return
            self._held.update(range(index, stop))
        except Exception as exc:
            fetch.error = exc
            raise
        finally:
            for i in range(index, stop):
                del self._fetching[i]
            fetch.done.set()

    async def _url(self) -> Any:
        """The RemoteFile to read from, renewed (same version, or ESTALE) once expired."""
        if self._file.expired:
            fresh = await self._opener(self.path)
            try:
                fresh.continues(self._file)
            except ArkerError as exc:
                raise _read_error(self.path, exc) from exc
            self._file = fresh
        return self._file


def _read_error(path: bytes, exc: ArkerError) -> FsError:
    if exc.code == "object_changed":  # reading on would mix two versions
        return FsError(errno.ESTALE, f"{path!r} changed while being read: {exc.message}")
    return FsError(errno_for_api_error(exc), f"ranged read of {path!r}: {exc}")


class LocalContent(FileContent):
    """A version held in a local file we do not own (a journal spool file of a change not yet
    pushed). Its descriptor is opened at once: if the file is deleted (the change was pushed),
    readers that hold this keep reading the same bytes."""

    def __init__(self, path, size: int) -> None:
        self.size = size
        self._fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC) if path is not None and size else None

    @property
    def charge(self) -> int:
        return 0  # the bytes are on local disk already, not held by the cache

    async def read(self, offset: int, length: int) -> bytes:
        if self._fd is None or offset >= self.size:
            return b""
        return os.pread(self._fd, min(length, self.size - offset), offset)

    def __del__(self) -> None:
        if getattr(self, "_fd", None) is not None:
            os.close(self._fd)


class _Fetch:
    """One ranged GET in flight, for the readers waiting on its chunks."""

    __slots__ = ("done", "error")

    def __init__(self) -> None:
        self.done = trio.Event()
        self.error: Exception | None = None


class _Versions(cachetools.LRUCache):
    """The LRU of versions, indexed by path and summing the bytes held in memory, so a close()
    or a read never scans every cached version."""

    def __init__(self, max_bytes: int) -> None:
        super().__init__(max_bytes, getsizeof=lambda c: max(c.charge, 1))
        self.by_path: dict[bytes, set[ContentKey]] = {}
        self.in_memory = 0

    def __setitem__(self, key: ContentKey, content: FileContent) -> None:
        old = self.get(key)
        super().__setitem__(key, content)  # may evict others (through __delitem__)
        self.in_memory += content.in_memory - (old.in_memory if old is not None else 0)
        self.by_path.setdefault(key[0], set()).add(key)

    def __delitem__(self, key: ContentKey) -> None:
        content = self[key]
        super().__delitem__(key)
        self.in_memory -= content.in_memory
        keys = self.by_path.get(key[0])
        if keys is not None:
            keys.discard(key)
            if not keys:
                del self.by_path[key[0]]

    def clear(self) -> None:
        for key in list(self.keys()):
            del self[key]


class ContentCache:
    """LRU of file versions bounded in bytes, with single-flight opens."""

    def __init__(self, opener: Opener, spool_dir: str, max_bytes: int = 256 * 1024 * 1024) -> None:
        self._opener = opener
        self._spool_dir = spool_dir
        self._lru = _Versions(max_bytes)
        self._max_bytes = max_bytes
        self._flights = SingleFlight()
        self.hits = self.misses = 0  # versions found in / fetched into the cache (arkerfs status)

    async def get(self, key: ContentKey) -> FileContent:
        """The version ``key`` (fetched on first use: one sync read)."""
        content = self._lru.get(key)
        if content is None:
            self.misses += 1
            content = await self._flights.do(key, lambda: self._open(key))
        else:
            self.hits += 1
        return content

    async def read(self, key: ContentKey, content: FileContent, offset: int, length: int) -> bytes:
        try:
            data = await content.read(offset, length)
        except FsError as exc:
            if exc.errno == errno.ESTALE and self._lru.get(key) is content:
                del self._lru[key]  # that version is gone: the next open reads the file again
            raise
        if isinstance(content, RangedContent) and self._lru.get(key) is content:
            self._store(key, content)  # its charge grew: re-insert so the bound stays true
        return data

    def __contains__(self, key: ContentKey) -> bool:
        return key in self._lru

    def holds(self, path: bytes) -> bool:
        """Whether some version of ``path`` is cached."""
        return path in self._lru.by_path

    def forget(self, path: bytes) -> None:
        for key in list(self._lru.by_path.get(path, ())):
            del self._lru[key]

    def put(self, key: ContentKey, data: bytes) -> None:
        """Seed a version we know exactly (what we just uploaded)."""
        self._store(key, self._whole(data))

    async def _open(self, key: ContentKey) -> FileContent:
        path = key[0]
        remote_file = await self._opener(path)
        if isinstance(remote_file, FileContent):  # pending local content (write-back)
            content: FileContent = remote_file
        elif remote_file.inline:
            content = self._whole(await remote_file.read_all())  # no I/O: inline
        else:
            content = RangedContent(path, remote_file, self._opener, self._spool_dir)
        if content.size == key[1]:
            self._store(key, content)
        # else: the file changed since its attrs were cached; serve it but don't file it
        # under a key that does not describe it.
        return content

    def _whole(self, data: bytes) -> WholeContent:
        """In memory only while small and while the cached ones in memory stay in budget."""
        in_memory = self._lru.in_memory
        return WholeContent(data, self._spool_dir,
                            in_memory=len(data) <= MEMORY_LIMIT and in_memory + len(data) <= MEMORY_BUDGET)

    def _store(self, key: ContentKey, content: FileContent) -> None:
        if content.charge <= self._max_bytes:
            self._lru[key] = content
