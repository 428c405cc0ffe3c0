"""Read-ahead of small files: the first read of a small file not cached brings, in the same
single run, the other small files of its directory and then those of its parent's subtree (its
directory's siblings, recursively) into the content cache.

A sequential walk of a tree (``grep -r``, ``cp -r``, ``tar -c``, ``rsync --checksum``) then
costs one run per ``BATCH_MAX`` bytes of small files for contents instead of one sync read per
file, and a single ``cat`` still costs one call (the file itself comes first in that run). A
file in the home or in one of its directories brings only its own directory's files (never the
whole home). A walk stops after ``entries_max`` entries (``shell.read_small_files``).

Every file is filed under the version it was read at (``(path, size, mtime_ns)``, the
``ContentCache`` key), so a reader whose attributes name another version never gets these
bytes: it misses and reads the file on its own. Files above ``FILE_MAX`` are never part of a
batch (large files keep their ranged reads and their first byte is never delayed). A batch
holds at most ``BATCH_MAX`` bytes: base64 keeps the run's output near 1 MiB (PROTOCOL §7.6);
a later miss under the same base fetches the next batch, leaving out what is still cached.

In write-back mode a path the overlay decides (pending changes) is never read ahead, nor is
anything in a directory the overlay decides: its bytes are the journal's, not the VM's.
"""

from __future__ import annotations

import errno
import logging

import cachetools

from arkerfs.fs.cache import SingleFlight
from arkerfs.fs.content import ContentCache, ContentKey
from arkerfs.fs.errors import FsError
from arkerfs.fs.shell import HOME_B, parent_of

log = logging.getLogger(__name__)

FILE_MAX = 64 * 1024  # files read ahead are at most this big
BATCH_MAX = 700 * 1024  # bytes of content per run (about 1 MiB of base64 output)
EXCLUDE_MAX = 64 * 1024  # bytes of names left out of a batch sent in the command


class ReadAhead:
    """Fills ``content`` with the small files of a directory on the first miss in it."""

    def __init__(self, remote, content: ContentCache, *, file_max: int = FILE_MAX,
                 batch_max: int = BATCH_MAX) -> None:
        self._remote = remote
        self._content = content
        self._file_max = file_max
        self._batch_max = batch_max
        self._flights = SingleFlight()
        self._sent: cachetools.LRUCache = cachetools.LRUCache(4096)  # directory -> names read ahead
        self.enabled = hasattr(remote, "read_small_files")  # off for good where the VM has no python3
        self.batches = self.files = 0  # runs made / files filed (for arkerfs status and tests)

    async def prefetch(self, key: ContentKey) -> None:
        """Before a read of version ``key``: if it is small and not cached, fetch it with its
        small neighbours in one run. Never raises: a failed batch leaves the read to do its own."""
        path, size, _ = key
        if not self.enabled or size > self._file_max or key in self._content:
            return
        directory = parent_of(path)
        if self._decided(path) or self._decided(directory):
            return
        # the parent's subtree: a walk's next directories are the file's directory's siblings
        # (never the whole home: a directory that is the home or in it brings its own files)
        base = parent_of(directory)
        if directory == HOME_B or base == HOME_B:
            base = directory
        await self._flights.do(base, lambda: self._batch(base, key))

    async def _batch(self, base: bytes, key: ContentKey) -> None:
        if key in self._content:  # a batch that just ended brought it
            return
        first = key[0][len(base) + 1:]
        sent = self._sent.get(base, set())
        exclude = [r for r in sent if r != first and self._content.holds(base + b"/" + r)]
        deep = base != parent_of(key[0])
        if sum(len(r) + 1 for r in exclude) > EXCLUDE_MAX:  # too much cached to name: stay in
            top = parent_of(b"/" + first)  # the file's own directory (b"/" when it is the base)
            exclude, deep = [r for r in exclude if parent_of(b"/" + r) == top], False
            if sum(len(r) + 1 for r in exclude) > EXCLUDE_MAX:
                return  # the read does its own call rather than bring back what is cached
        try:
            files = await self._remote.read_small_files(
                base, first, exclude, self._file_max, self._batch_max, deep=deep)
        except FsError as exc:
            if exc.errno == errno.ENOTSUP:
                log.info("no python3 in the VM: small files are read one by one")
                self.enabled = False
            return  # the read does its own call (and reports its own error)
        self.batches += 1
        names = self._sent.setdefault(base, set())
        for small in files:
            child = base + b"/" + small.name
            if self._decided(child) or self._decided(parent_of(child)):  # changed here meanwhile
                continue
            if (child, small.size, small.mtime_ns) not in self._content:  # else kept as it is
                self._content.put((child, small.size, small.mtime_ns), small.content)
            names.add(small.name)
            self.files += 1

    def _decided(self, path: bytes) -> bool:
        """Whether the write-back overlay, not the VM, says what ``path`` is."""
        decided = getattr(self._remote, "decided", None)
        return decided is not None and decided(path)[0]
