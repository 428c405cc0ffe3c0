"""The write-back journal: an ordered, durable log of changes not yet in the VM, plus their contents.

Layout, under ``$XDG_STATE_HOME/arkerfs/<vm-id>/`` (mode 0700; keyed by VM id, never by
mountpoint, so a journal can only ever be replayed into the VM it was written for):

- ``journal.sqlite3``: SQLite in WAL mode, ``synchronous=FULL``. One row per change, in the
  order applications made them (``seq``). A row names its operation and arguments as JSON and,
  for a file's content, the spool file that holds it.
- ``spool/<name>``: one file per recorded content, written, fsynced and renamed into place
  *before* the row that names it is committed; removed after the row is acknowledged.
- ``lock``: held (``flock``) by the one daemon using this journal; a second mount of the same VM
  cannot take it and must not write back. ``left_behind`` (``arkerfs status``/``sync``) takes it
  shared for a moment to list the journals of VMs no daemon has mounted.

Durability is the caller's choice per commit, as in a local filesystem's ordered journal:
``append`` adds rows to an open transaction, ``commit`` makes every row so far durable at once
(group commit). ``close()``/``fsync()`` commit before returning; other operations are committed
by the next of those or by a periodic commit within about a second.

On open, what a crash left is reconciled: spool files no row names (their ``close()`` never
returned) are moved to ``rescue/`` rather than deleted, since they may still be someone's data.

The journal is synchronous and not thread-safe: the daemon calls it from one thread (its trio
loop, or one worker thread at a time).
"""

from __future__ import annotations

import fcntl
import json
import os
import sqlite3
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS changes (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    op TEXT NOT NULL,
    args TEXT NOT NULL,
    content TEXT,
    size INTEGER NOT NULL DEFAULT 0,
    created REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    failed TEXT
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
-- spool files of acknowledged changes, named in the transaction that drops the changes and
-- forgotten once unlinked: a crash in between leaves pushed content, not an orphan to rescue
CREATE TABLE IF NOT EXISTS pushed_spool (content TEXT PRIMARY KEY);
"""
COPY_CHUNK = 8 * 1024 * 1024
# s a daemon waits for the lock: ``left_behind`` (arkerfs status/sync) holds it for a moment
LOCK_PATIENCE = 2.0


class JournalError(Exception):
    """A journal that cannot be used: locked by another daemon, or written for another VM."""


@dataclass(frozen=True)
class Change:
    seq: int
    op: str
    args: dict
    content: str | None  # spool file name
    size: int  # bytes of content
    created: float  # wall-clock time it was recorded
    attempts: int
    failed: str | None  # last error, once the change is marked failed


def state_root() -> Path:
    """``$XDG_STATE_HOME/arkerfs`` (default ``~/.local/state/arkerfs``)."""
    from platformdirs import user_state_path

    return user_state_path("arkerfs")


def _private(path: Path) -> Path:
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path, 0o700)
    return path


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Journal:
    def __init__(self, directory: Path, vm_id: str) -> None:
        """Open (creating) the journal of ``vm_id`` in ``directory``; takes its lock."""
        self.directory = _private(directory)
        self.spool = _private(directory / "spool")
        self.rescue_dir = directory / "rescue"
        self._lock_fd = os.open(directory / "lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        if not _lock(self._lock_fd, fcntl.LOCK_EX, patience=LOCK_PATIENCE):
            os.close(self._lock_fd)
            raise JournalError(f"the journal {directory} is in use by another arkerfs daemon "
                               "(is this VM mounted elsewhere?)")
        self._in_transaction = False
        self._db = sqlite3.connect(directory / "journal.sqlite3", isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(SCHEMA)
        owner = self._db.execute("SELECT value FROM meta WHERE key='vm_id'").fetchone()
        if owner is None:
            self._db.execute("INSERT INTO meta VALUES ('vm_id', ?)", (vm_id,))
        elif owner[0] != vm_id:
            self.close()
            raise JournalError(f"the journal {directory} belongs to VM {owner[0]}, not {vm_id}")
        self.vm_id = vm_id
        self.rescued = self._rescue_orphans()
        self._held = self._db.execute("SELECT COALESCE(SUM(size), 0) FROM changes").fetchone()[0]

    @classmethod
    def for_vm(cls, vm_id: str, root: Path | None = None) -> Journal:
        if not vm_id or "/" in vm_id or vm_id in (".", ".."):
            raise JournalError(f"not a usable VM id for a journal directory: {vm_id!r}")
        return cls(_private(root or state_root()) / vm_id, vm_id)

    def close(self) -> None:
        if self._in_transaction:
            self.commit()
        self._db.close()
        os.close(self._lock_fd)  # releases the flock

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # == recording =============================================================================
    def store_content(self, source: bytes | int, size: int | None = None) -> tuple[str, int]:
        """Copy ``source`` (bytes, or a readable file descriptor read from offset 0) into a new
        spool file, durably (fsync, rename, fsync of the directory). Returns (name, size); name
        it in the ``append`` that follows."""
        name = uuid.uuid4().hex
        tmp = self.spool / f".{name}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            written = _copy_into(fd, source, size)
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            tmp.unlink(missing_ok=True)
            raise
        os.close(fd)
        os.rename(tmp, self.spool / name)
        _fsync_dir(self.spool)
        return name, written

    def append(self, op: str, args: dict, content: tuple[str, int] | None = None) -> int:
        """Record one change in the open transaction (durable at the next ``commit``)."""
        self._begin()
        name, size = content if content is not None else (None, 0)
        cursor = self._db.execute(
            "INSERT INTO changes (op, args, content, size, created) VALUES (?, ?, ?, ?, ?)",
            (op, json.dumps(args, separators=(",", ":")), name, size, time.time()))
        self._held += size
        return cursor.lastrowid

    def rewrite(self, seq: int, args: dict) -> None:
        """Replace a pending change's arguments (a rename of a file whose write is pending)."""
        self._begin()
        self._db.execute("UPDATE changes SET args=? WHERE seq=?", (json.dumps(args, separators=(",", ":")), seq))

    def commit(self) -> None:
        """Make every change recorded so far durable (one fsync for all of them)."""
        if self._in_transaction:
            self._db.execute("COMMIT")
            self._in_transaction = False

    @property
    def uncommitted(self) -> bool:
        return self._in_transaction

    # == pushing ===============================================================================
    def pending(self, limit: int | None = None) -> list[Change]:
        """Changes not yet acknowledged, oldest first (failed ones included)."""
        sql = "SELECT seq, op, args, content, size, created, attempts, failed FROM changes ORDER BY seq"
        rows = self._db.execute(sql + (f" LIMIT {int(limit)}" if limit else "")).fetchall()
        return [Change(seq, op, json.loads(args), content, size, created, attempts, failed)
                for seq, op, args, content, size, created, attempts, failed in rows]

    def is_failed(self, seq: int) -> bool:
        """Whether change ``seq`` is pending and marked failed."""
        return self._db.execute("SELECT 1 FROM changes WHERE seq=? AND failed IS NOT NULL", (seq,)).fetchone() is not None

    def has_pushable(self) -> bool:
        """Whether a change not marked failed is pending."""
        return self._db.execute("SELECT 1 FROM changes WHERE failed IS NULL LIMIT 1").fetchone() is not None

    def content_path(self, change: Change) -> Path:
        assert change.content is not None, change
        return self.spool / change.content

    def acknowledge(self, seqs: list[int]) -> None:
        """The VM has these changes: drop their rows (durably), then their spool files."""
        if not seqs:
            return
        self._begin()
        names = []
        for chunk in _chunks(seqs, 500):
            marks = ",".join("?" * len(chunk))
            for name, size in self._db.execute(
                    f"SELECT content, size FROM changes WHERE seq IN ({marks}) AND content IS NOT NULL", chunk):
                names.append(name)
                self._held -= size
            self._db.execute(f"DELETE FROM changes WHERE seq IN ({marks})", chunk)
        self._db.executemany("INSERT OR IGNORE INTO pushed_spool VALUES (?)", [(n,) for n in names])
        self.commit()
        self._unlink_pushed(names)

    def _unlink_pushed(self, names: list[str]) -> None:
        """Unlink acknowledged spool files, then forget their names (committed with the next
        change: a crash before that only makes the next open unlink them again)."""
        for name in names:
            (self.spool / name).unlink(missing_ok=True)
        if names:
            self._begin()
            for chunk in _chunks(names, 500):
                self._db.execute(f"DELETE FROM pushed_spool WHERE content IN ({','.join('?' * len(chunk))})", chunk)

    def note_attempt(self, seq: int, error: str | None, *, failed: bool) -> None:
        """Count a push attempt of ``seq``; ``failed`` marks it failed (kept, retried later)."""
        self._begin()
        self._db.execute("UPDATE changes SET attempts = attempts + 1, failed = ? WHERE seq = ?",
                         (error if failed else None, seq))
        self.commit()

    def held_bytes(self) -> int:
        """The bytes of content pending (what ``--journal-max-bytes`` bounds): a running count,
        cheap enough for every close(), unlike ``summary``."""
        return self._held

    def summary(self) -> dict:
        changes, paths, size, oldest, failed = self._db.execute(
            "SELECT COUNT(*), COUNT(DISTINCT COALESCE(json_extract(args, '$.new'), json_extract(args, '$.path'))),"
            " COALESCE(SUM(size), 0), MIN(created), COUNT(failed) FROM changes").fetchone()
        return {"changes": changes, "paths": paths, "bytes": size, "oldest": oldest, "failed": failed}

    # == internals =============================================================================
    def _begin(self) -> None:
        if not self._in_transaction:
            self._db.execute("BEGIN IMMEDIATE")
            self._in_transaction = True

    def _rescue_orphans(self) -> list[Path]:
        """Spool files that no change names (after the pushed ones went): a crash came between
        writing one and committing the change that names it, so no application was told it was
        saved. Kept, not deleted
        (they may still be someone's work), in ``rescue/``; half-written ``.tmp`` files go."""
        self._unlink_pushed([n for (n,) in self._db.execute("SELECT content FROM pushed_spool")])
        self.commit()
        named = {n for (n,) in self._db.execute("SELECT content FROM changes WHERE content IS NOT NULL")}
        rescued = []
        for entry in sorted(self.spool.iterdir()):
            if entry.name.startswith("."):
                entry.unlink(missing_ok=True)
            elif entry.name not in named:
                _private(self.rescue_dir)
                target = self.rescue_dir / f"unrecorded-{time.strftime('%Y%m%dT%H%M%S')}-{entry.name}"
                os.rename(entry, target)
                rescued.append(target)
        return rescued


@dataclass(frozen=True)
class LeftBehind:
    """A journal no daemon holds that still has changes not in the VM (a crash, or an unmount
    that gave up, left them): the next mount of ``vm_id`` pushes them."""

    vm_id: str
    directory: Path
    changes: int
    bytes: int
    oldest: float | None  # wall-clock time of its oldest change
    failed: int  # changes the VM refused so far


def left_behind(root: Path | None = None) -> list[LeftBehind]:
    """The journals under ``root`` (default ``state_root()``) that hold changes and that no
    daemon is using, read without changing them. A journal in use is its daemon's to report."""
    root = root or state_root()
    found = []
    for db in sorted(root.glob("*/journal.sqlite3")):
        try:
            fd = os.open(db.parent / "lock", os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            fd = None
        except OSError:
            continue
        try:
            if fd is not None and not _lock(fd, fcntl.LOCK_SH, patience=0.0):
                continue  # a daemon has it
            summary = _read_summary(db)
        except sqlite3.Error:
            continue  # not a journal we can read; nothing to say about it
        finally:
            if fd is not None:
                os.close(fd)
        if summary is not None and summary[1]:
            found.append(LeftBehind(summary[0], db.parent, *summary[1:]))
    return found


def _read_summary(db: Path) -> tuple | None:
    """(vm id, changes, bytes, oldest, failed) of a journal, opened read-only."""
    conn = sqlite3.connect(f"{db.as_uri()}?mode=ro", uri=True)
    try:
        owner = conn.execute("SELECT value FROM meta WHERE key='vm_id'").fetchone()
        changes, size, oldest, failed = conn.execute(
            "SELECT COUNT(*), COALESCE(SUM(size), 0), MIN(created), COUNT(failed) FROM changes").fetchone()
    finally:
        conn.close()
    return None if owner is None else (owner[0], changes, size, oldest, failed)


def _lock(fd: int, kind: int, *, patience: float) -> bool:
    """``flock(fd, kind)`` without blocking, tried again for up to ``patience`` seconds."""
    deadline = time.monotonic() + patience
    while True:
        try:
            fcntl.flock(fd, kind | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)


def _copy_into(fd: int, source: bytes | int, size: int | None) -> int:
    if isinstance(source, (bytes, bytearray, memoryview)):
        view = memoryview(source)
        while view:
            view = view[os.write(fd, view):]
        return len(source)
    written, offset = 0, 0
    while size is None or written < size:
        want = COPY_CHUNK if size is None else min(COPY_CHUNK, size - written)
        try:  # shares extents where the filesystem can (reflink), else copies in the kernel
            n = os.copy_file_range(source, fd, want, offset, written)
        except OSError:  # a source copy_file_range cannot take (a pipe, another kind of fs)
            data = memoryview(os.pread(source, want, offset))
            n, at = len(data), written
            while data:
                done = os.pwrite(fd, data, at)
                data, at = data[done:], at + done
        if n == 0:
            break
        written += n
        offset += n
    if size is not None and written != size:
        raise OSError(f"content shrank while it was journaled ({written} of {size} bytes)")
    return written


def _chunks(items: list[int], n: int) -> Iterator[list[int]]:
    for i in range(0, len(items), n):
        yield items[i:i + n]
