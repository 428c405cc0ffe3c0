"""Metadata caches keyed by remote path: attributes, directory listings, negative lookups, statfs.

``cachetools.TTLCache`` is used only as a data structure (its ``cached`` decorator would cache
coroutine objects). Fills are single-flight: concurrent misses for one key share one remote
call. The timer is injectable so tests can drive expiry without sleeping.

Consistency model: an entry is trusted for ``ttl`` seconds after the remote reported it, so a
change made inside the VM shows up here at most ``ttl`` later; while the change watcher runs
(``mount.watcher``) ``ttl`` is long and its reports change the affected entries at once
(``fs.vmchanges``). The mount's own changes are
applied to the caches at once (``added``/``removed``/``renamed``), so they are never stale.

Refresh by listing: the cache also remembers, beyond the TTL, which directories it has listed
and how many entries they had (``listed_size``). Once such a listing expires, the layer above
may refresh a child's attributes or absence by listing the whole directory again (one call for
every sibling) instead of asking about each name; the refreshed listing is as fresh as a
per-name answer, so the ``ttl`` bound above holds unchanged, and it only fills what had expired
(``keep_fresh``): an entry still cached changes at its own expiry, as before.

Concurrency contract: methods are synchronous (atomic between awaits). A fill that raced with a
local mutation must not store its older result over the newer state: every mutation bumps
``generation``, and ``store_*`` calls carry the generation seen when their fill started and are
dropped if it changed.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Hashable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

import cachetools
import trio

from arkerfs.fs.errors import FsError
from arkerfs.fs.model import Attrs, Entry, StatFs

Timer = Callable[[], float]


class SingleFlight:
    """Concurrent callers of ``do(key, fn)`` share one execution of ``fn`` per key.

    If the leading task is cancelled, a waiting task runs ``fn`` itself rather than inheriting a
    cancellation that was not aimed at it.
    """

    def __init__(self) -> None:
        self._inflight: dict[Hashable, _Flight] = {}

    async def do(self, key: Hashable, fn: Callable[[], Awaitable[Any]]) -> Any:
        while True:
            flight = self._inflight.get(key)
            if flight is None:
                break
            await flight.done.wait()
            if flight.finished:
                return flight.result()
        flight = self._inflight[key] = _Flight()
        try:
            flight.value = await fn()
            flight.finished = True
        except Exception as exc:
            flight.error = exc
            flight.finished = True
            raise
        finally:
            del self._inflight[key]
            flight.done.set()
        return flight.value


class _Flight:
    __slots__ = ("done", "finished", "value", "error")

    def __init__(self) -> None:
        self.done = trio.Event()
        self.finished = False
        self.value: Any = None
        self.error: Exception | None = None

    def result(self) -> Any:
        if self.error is None:
            return self.value
        if isinstance(self.error, FsError):  # a fresh copy: one exception object per raiser
            raise FsError(self.error.errno, self.error.detail)
        raise self.error


def parent_of(path: bytes) -> bytes:
    return path.rsplit(b"/", 1)[0]


def name_of(path: bytes) -> bytes:
    return path.rsplit(b"/", 1)[1]


class MetaCache:
    """Attributes, listings and negative entries by path, plus the statfs result."""

    def __init__(self, ttl: float, *, statfs_ttl: float = 30.0, timer: Timer = time.monotonic,
                 max_entries: int = 200_000, max_listings: int = 4096) -> None:
        self.ttl = ttl
        self.generation = 0
        # each entry expires ``ttl`` after it was stored, with the ttl of that moment
        self._attrs = self._expiring(max_entries, timer)
        self._negative = self._expiring(max_entries // 4 or 1, timer)
        # dir path -> {name: Attrs} in listing order
        self._listings = self._expiring(max_listings, timer)
        # dir path -> entry count when last listed (no TTL: it only says a listing is worth taking)
        self._listed: cachetools.LRUCache = cachetools.LRUCache(max_listings * 4)
        self._statfs: cachetools.TTLCache = cachetools.TTLCache(1, statfs_ttl, timer=timer)
        # path -> the generation of the mount's last change to it (``changed_since``)
        self._changed_at: cachetools.LRUCache = cachetools.LRUCache(max_entries // 2 or 1)
        # path -> (VM inode, VM ctime, ctime shown) of a version the mount pushed (``keep_ctime``)
        self._shown_ctime: cachetools.LRUCache = cachetools.LRUCache(max_entries // 2 or 1)
        self._recording = True
        # a TTL switch (``set_ttl``): fills begun just before it are still stored, with the
        # shorter of the two TTLs (``_fill_ttl``)
        self._before_switch = self._switched_at = -1
        self._shorter_ttl = ttl
        self._fill_ttl: float | None = None

    def _expiring(self, maxsize: int, timer: Timer) -> cachetools.TLRUCache:
        return cachetools.TLRUCache(maxsize, lambda _key, _value, now: now + (self._fill_ttl or self.ttl),
                                    timer=timer)

    def set_ttl(self, ttl: float) -> None:
        """Trust entries stored from now on for ``ttl`` seconds (the change watcher lengthens it
        while it runs). Shortening it also cuts every entry kept longer to ``ttl`` from now (as
        if each had just been read: the watcher vouched for them until now), so an outage does
        not empty the caches at once, but nothing stays trusted past the short TTL."""
        shorter = ttl < self.ttl
        # a fill in flight may have read the VM before the switch: stored with the shorter TTL
        self._before_switch, self._shorter_ttl = self.generation, min(ttl, self.ttl)
        self.generation += 1
        self._switched_at = self.generation
        self.ttl = ttl
        if shorter:
            for cache in (self._attrs, self._negative, self._listings):
                for key, value in list(cache.items()):
                    cache[key] = value  # stored again: expires ``ttl`` from now

    def forget_entries(self) -> None:
        """Forget every attribute, absence and listing (not which directories were listed)."""
        self.generation += 1
        for cache in (self._attrs, self._negative, self._listings):
            cache.clear()

    # -- reads ----------------------------------------------------------------------------
    def attrs(self, path: bytes) -> Attrs | None:
        """Cached attributes of ``path``, from its own entry or its parent's listing."""
        hit = self._attrs.get(path)
        if hit is not None:
            return hit
        listing = self._listings.get(parent_of(path))
        return None if listing is None else listing.get(name_of(path))

    def is_absent(self, path: bytes) -> bool:
        """True if ``path`` is known not to exist (negative entry, or missing from a fresh listing)."""
        if path in self._negative:
            return True
        if path in self._attrs:
            return False
        listing = self._listings.get(parent_of(path))
        return listing is not None and name_of(path) not in listing

    def listing(self, path: bytes) -> list[Entry] | None:
        listing = self._listings.get(path)
        if listing is None:
            return None
        return [Entry(name, self._attrs.get(path + b"/" + name, attrs)) for name, attrs in listing.items()]

    def listed_size(self, path: bytes) -> int | None:
        """How many entries directory ``path`` had when it was last listed (even if that listing
        has expired since); None if it was never listed or has been removed/renamed since."""
        return self._listed.get(path)

    def unlisted(self, path: bytes) -> None:
        """Forget that ``path`` was listed (it could not be listed again)."""
        self._listed.pop(path, None)

    def cached_names(self, directory: bytes) -> set[bytes]:
        """Every name in ``directory`` something is cached about. Scans the cache."""
        listing = self._listings.get(directory)
        names = set(listing) if listing is not None else set()
        prefix = directory + b"/"
        for cache in (self._attrs, self._negative):
            names.update(name_of(k) for k in list(cache.keys()) if k.startswith(prefix) and parent_of(k) == directory)
        return names

    def statfs(self) -> StatFs | None:
        return self._statfs.get("statfs")

    # -- fills (carry the generation seen when the remote call started) -------------------
    @contextmanager
    def _filling(self, generation: int) -> Iterator[bool]:
        """Whether a fill begun at ``generation`` may be stored (nothing changed since, but for a
        TTL switch: then with the shorter TTL)."""
        straddles = generation == self._before_switch and self.generation == self._switched_at
        self._fill_ttl = self._shorter_ttl if straddles else None
        try:
            yield generation == self.generation or straddles
        finally:
            self._fill_ttl = None

    def store_attrs(self, path: bytes, attrs: Attrs, generation: int) -> None:
        with self._filling(generation) as fresh:
            if fresh:
                self._attrs[path] = self._as_stored(path, attrs)
                self._negative.pop(path, None)

    def store_absent(self, path: bytes, generation: int) -> None:
        with self._filling(generation) as fresh:
            if fresh:
                self._negative[path] = True
                self._attrs.pop(path, None)

    def store_listing(self, path: bytes, attrs: Attrs, entries: list[Entry], generation: int, *,
                      keep_fresh: bool = False) -> None:
        """``keep_fresh`` (a refresh by listing, taken for one expired name): attrs still cached
        for the directory or its entries stay as they are until their own expiry, exactly as if
        each had been asked about by name; the listing fills only what had expired."""
        with self._filling(generation) as fresh:
            if fresh:
                self._store_listing(path, attrs, entries, keep_fresh)

    def _store_listing(self, path: bytes, attrs: Attrs, entries: list[Entry], keep_fresh: bool) -> None:
        if not (keep_fresh and path in self._attrs):
            self._attrs[path] = self._as_stored(path, attrs)
        stored = {e.name: self._as_stored(path + b"/" + e.name, e.attrs) for e in entries}
        self._listings[path] = stored
        self._listed[path] = len(entries)
        for name, child_attrs in stored.items():
            child = path + b"/" + name
            if not (keep_fresh and child in self._attrs):
                self._attrs[child] = child_attrs
            self._negative.pop(child, None)

    def store_statfs(self, value: StatFs) -> None:
        self._statfs["statfs"] = value

    # -- the mount's own changes ----------------------------------------------------------
    def added(self, path: bytes, attrs: Attrs) -> None:
        """``path`` now exists with ``attrs`` (create, mkdir, upload, setattr...)."""
        self._changed(path)
        attrs = self._as_stored(path, attrs)
        self._attrs[path] = attrs
        self._negative.pop(path, None)
        listing = self._listings.get(parent_of(path))
        if listing is not None:
            listing[name_of(path)] = attrs

    def removed(self, path: bytes, *, is_dir: bool = True) -> None:
        """``path`` is gone; anything cached below it too (scanned only when ``is_dir``)."""
        self._changed(path)
        self._forget_subtree(path, is_dir)
        self._negative[path] = True
        listing = self._listings.get(parent_of(path))
        if listing is not None:
            listing.pop(name_of(path), None)

    def renamed(self, old: bytes, new: bytes) -> None:
        """``old`` moved to ``new`` (replacing it). Cached entries below either are dropped:
        they are refetched under their new names on demand."""
        attrs, replaced = self.attrs(old), self.attrs(new)
        # a name known to be absent or a non-directory has nothing cached below it (no scan:
        # rsync renames hundreds of files into place)
        self.removed(new, is_dir=not self.is_absent(new) and (replaced is None or replaced.is_dir))
        self.removed(old, is_dir=attrs is None or attrs.is_dir)
        if attrs is not None:
            self.added(new, attrs)
        else:
            self._negative.pop(new, None)
            self.invalidate(parent_of(new))

    def exchanged(self, a: bytes, b: bytes) -> None:
        attrs_a, attrs_b = self.attrs(a), self.attrs(b)
        self.invalidate(a)
        self.invalidate(b)
        if attrs_a is not None and attrs_b is not None:
            self.added(b, attrs_a)
            self.added(a, attrs_b)
        else:
            self.invalidate(parent_of(a))
            self.invalidate(parent_of(b))

    def dir_changed(self, path: bytes, nlink_delta: int = 0, when_ns: int | None = None) -> None:
        """The mount added or removed an entry of directory ``path``: the remote changed its mtime
        and ctime (and its link count by ``nlink_delta`` for a subdirectory). Until the entry
        expires we show ``when_ns`` — the new entry's own ctime when the operation returned one,
        which is the very time the VM's kernel stamped on the directory in the same system
        call — else the local clock's "now" (tools such as rsync re-stamp a directory whose
        mtime moved); a stat of it still costs nothing."""
        attrs = self.attrs(path)
        if attrs is None:
            return
        now = time.time_ns() if when_ns is None else when_ns
        changed = replace(attrs, mtime_ns=now, ctime_ns=now, nlink=max(attrs.nlink + nlink_delta, 1))
        self._changed(path)
        if path in self._attrs:
            self._attrs[path] = changed
        listing = self._listings.get(parent_of(path))
        if listing is not None and name_of(path) in listing:
            listing[name_of(path)] = changed

    def xattrs_changed(self, path: bytes) -> None:
        """The mount set or removed an xattr of ``path``: its names are asked of the VM again."""
        self._changed(path)
        attrs = self._attrs.get(path)
        if attrs is not None:
            self._attrs[path] = replace(attrs, xattrs=None)
        listing = self._listings.get(parent_of(path))
        if listing is not None and name_of(path) in listing:
            listing[name_of(path)] = replace(listing[name_of(path)], xattrs=None)

    def keep_ctime(self, path: bytes, landed: Attrs, shown_ctime_ns: int) -> None:
        """The mount's own change of ``path`` landed as the VM's ``landed`` version: that version
        goes on showing the ctime the mount showed (the VM stamps its own when the push runs; a
        ctime that moves with no change makes git take every pushed file for modified)."""
        if landed.ctime_ns != shown_ctime_ns:
            self._shown_ctime[path] = (landed.remote_ino, landed.ctime_ns, shown_ctime_ns)

    def as_shown(self, path: bytes, attrs: Attrs) -> Attrs:
        """``attrs`` as the VM gives them, with the ctime the mount showed for that very version
        (``keep_ctime``); any later change in the VM moves the ctime, and the VM's shows."""
        alias = self._shown_ctime.get(path)
        if alias is not None and alias[:2] == (attrs.remote_ino, attrs.ctime_ns):
            return replace(attrs, ctime_ns=alias[2])
        return attrs

    def entries_as_shown(self, directory: bytes, entries: list[Entry]) -> list[Entry]:
        """``as_shown`` for every entry of ``directory`` (nothing to do until a push landed)."""
        if not self._shown_ctime:
            return entries
        return [Entry(e.name, self.as_shown(directory + b"/" + e.name, e.attrs)) for e in entries]

    def _as_stored(self, path: bytes, attrs: Attrs) -> Attrs:
        return self._keep_xattrs(path, self.as_shown(path, attrs))

    def _keep_xattrs(self, path: bytes, attrs: Attrs) -> Attrs:
        """``attrs`` with the xattr names a listing gave for this very version of ``path`` (same
        inode, same ctime: setting or removing an xattr moves the ctime), so a directory's own
        attrs or an lstat do not lose what its parent's listing said."""
        if attrs.xattrs is None:
            known = self.attrs(path)
            if (known is not None and known.xattrs is not None and known.remote_ino == attrs.remote_ino
                    and known.ctime_ns == attrs.ctime_ns):
                return replace(attrs, xattrs=known.xattrs)
        return attrs

    def invalidate(self, path: bytes) -> None:
        """Forget everything known about ``path`` (and below): the next access asks the remote."""
        self._changed(path)
        self._forget_subtree(path)
        listing = self._listings.get(parent_of(path))
        if listing is not None and name_of(path) in listing:
            del self._listings[parent_of(path)]

    def settled(self, path: bytes) -> None:
        """The mount's own change of ``path`` reached the VM: what a report saw of it before
        then is older than the mount's view (``changed_since``)."""
        self._changed(path)

    def _changed(self, path: bytes) -> None:
        self.generation += 1
        if self._recording:
            self._changed_at[path] = self.generation

    def changed_since(self, path: bytes, generation: int) -> bool:
        """Whether the mount changed ``path`` after the cache was at ``generation``."""
        return self._changed_at.get(path, 0) > generation

    @contextmanager
    def reporting(self) -> Iterator[None]:
        """Changes made inside this block are the VM's (a watcher's report), not the mount's."""
        self._recording = False
        try:
            yield
        finally:
            self._recording = True

    def names_of(self, remote_ino: int) -> set[bytes]:
        """Every cached name of the (hard-linked) remote file ``remote_ino``. Scans the cache."""
        names = {path for path, attrs in list(self._attrs.items())
                 if attrs.remote_ino == remote_ino and not attrs.is_dir}
        for directory, listing in list(self._listings.items()):
            names.update(directory + b"/" + name for name, attrs in listing.items()
                         if attrs.remote_ino == remote_ino and not attrs.is_dir)
        return names

    def invalidate_listing(self, path: bytes) -> None:
        self._changed(path)
        self._listings.pop(path, None)

    def clear(self) -> None:
        self.generation += 1
        for cache in (self._attrs, self._negative, self._listings, self._listed, self._statfs):
            cache.clear()

    def _forget_subtree(self, path: bytes, scan: bool = True) -> None:
        prefix = path + b"/"
        for cache in (self._attrs, self._negative, self._listings, self._listed):
            cache.pop(path, None)
            if not scan:
                continue
            for key in [k for k in cache.keys() if k.startswith(prefix)]:
                cache.pop(key, None)
