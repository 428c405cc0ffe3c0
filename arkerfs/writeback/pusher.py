"""Ships the journal to the VM in batches: two calls for a whole burst of changes.

One batch at a time: the oldest pending changes (``plan.take``) become one upload of every new
content (a multi-entry sync write to staging names) and one run of every change in order,
stopping at the first that fails (``plan.plan``). What accumulates while a batch is in flight
forms the next one, so a burst (rsync, tar, cp -r) goes in a few batches with no fixed delay,
and a single save goes as soon as the journal has been quiet for ``QUIET`` seconds (or its
oldest change is ``MAX_DELAY`` old).

Outcomes, per step of the run:

- success: its changes are acknowledged (the journal drops them, then the overlay);
- a conflict (the VM changed the file since the mount saw it): nothing of the VM's was
  overwritten; the local version was kept beside it (``NAME.conflict-<stamp>``) or in the
  recovery directory; logged at WARNING with both paths, counted, and acknowledged;
- an errno the VM will give again (EACCES, ENOSPC, ENOENT...), for one change or, from the
  API, for the whole batch (then its first change): the change is marked failed
  (kept in the journal, retried by ``arkerfs sync``, umount and the next mount), logged at ERROR
  once, and the changes after it go on;
- an error that may pass (EIO, the API down, an ambiguous run): the whole batch is tried again
  after a capped backoff; after ``ATTEMPTS_BEFORE_FAILED`` attempts its first change is marked
  failed so one stuck change cannot hold back everything behind it forever.

Nothing is ever dropped: a change leaves the journal only when the VM acknowledged it.
"""

from __future__ import annotations

import errno
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

import trio

from arkerfs.fs import batch as B
from arkerfs.fs.cache import parent_of
from arkerfs.fs.errors import FsError
from arkerfs.fs.model import Attrs
from arkerfs.fs.remote import BatchAmbiguous
from arkerfs.writeback import plan as P
from arkerfs.writeback.journal import Change, Journal

log = logging.getLogger(__name__)

QUIET = 0.05  # s of journal silence before a push starts
MAX_DELAY = 1.0  # s: the oldest pending change never waits longer for a quiet moment
FULL = 800  # changes recorded since the last batch that make a batch worth sending at once
COMMIT_EVERY = 1.0  # s: recorded changes are on disk no later than this
BACKOFF_MAX = 30.0
ATTEMPTS_BEFORE_FAILED = 8
# errnos that say the VM will refuse this change again: marked failed at once
PERMANENT = frozenset({errno.EACCES, errno.EPERM, errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.ENOENT,
                       errno.ENOTDIR, errno.EISDIR, errno.EEXIST, errno.ENOTEMPTY, errno.EINVAL,
                       errno.ENAMETOOLONG, errno.ELOOP, errno.EMLINK, errno.EFBIG})


@dataclass
class Conflict:
    path: str
    kept: str  # where the local version went
    when: float


class Pusher:
    """See the module doc. ``landed(paths_attrs, floor, applied)`` is told, after each batch, the
    VM's attrs of the paths the batch left (path -> Attrs, or None for a name it removed), the
    newest seq below which every change is acknowledged, and the changes the VM applied, in
    order."""

    def __init__(self, journal: Journal, remote,
                 landed: Callable[[dict[bytes, Attrs | None], int, list[Change]], None], *,
                 quiet: float = QUIET, max_delay: float = MAX_DELAY, clock=time.monotonic) -> None:
        self.journal = journal
        self.remote = remote
        self._landed_cb = landed
        self._quiet, self._max_delay, self._clock = quiet, max_delay, clock
        self._wake = trio.Event()
        self._idle = trio.Event()
        self._lock = trio.Lock()
        self._last_record = clock()
        self._since_batch = 0
        self._versions: dict[bytes, B.Version] = {}  # what this mount last installed, per path
        self.conflicts: list[Conflict] = []
        self.conflicted: set[str] = set()  # paths whose last push was a conflict
        self.batches = 0
        self.pushing = False
        self.last_error: str | None = None
        self.in_flight: set[int] = set()

    # == wiring ================================================================================
    def recorded(self) -> None:
        """A change was appended to the journal."""
        self._last_record = self._clock()
        self._since_batch += 1
        self._wake.set()

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """The long-running service: commit periodically, push whenever there is work."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._commit_periodically)
            task_status.started()
            await self._push_forever()

    async def _commit_periodically(self) -> None:
        """Recorded changes are on disk within ``COMMIT_EVERY`` even while a batch is in flight
        (a push can take far longer than that: a stalled run, a large upload, an outage)."""
        while True:
            await trio.sleep(COMMIT_EVERY)
            self.journal.commit()

    async def _push_forever(self) -> None:
        failures = 0
        while True:
            with trio.move_on_after(COMMIT_EVERY):
                await self._wake.wait()
            self.journal.commit()
            if not self._has_work():
                self._wake = trio.Event()
                continue
            await self._settle()
            try:
                await self.push_batch()
                failures = 0
            except (FsError, BatchAmbiguous) as exc:
                failures += 1
                delay = min(BACKOFF_MAX, 0.2 * 2 ** min(failures, 10))
                log.warning("push failed (%s); retrying in %.1f s", exc, delay)
                await trio.sleep(delay)

    async def drain(self, *, retry_failed: bool = True, attempts: int = 5) -> list[Change]:
        """Push until nothing pushable is left. ``retry_failed``: changes marked failed get one
        more try. Returns the changes still failed; raises the last error when the VM cannot be
        reached for ``attempts`` tries in a row."""
        if retry_failed:
            for change in self.journal.pending():
                if change.failed is not None:
                    self.journal.note_attempt(change.seq, None, failed=False)
        failures = 0
        while self._has_work():
            try:
                await self.push_batch()
                failures = 0
            except (FsError, BatchAmbiguous) as exc:
                failures += 1
                if failures >= attempts:
                    raise FsError(errno.EIO, f"could not push pending changes: {exc}") from None
                await trio.sleep(min(BACKOFF_MAX, 0.2 * 2 ** failures))
        return [c for c in self.journal.pending() if c.failed is not None]

    async def batch_landed(self) -> None:
        """Return once the batch in flight, if any, has landed (or failed)."""
        async with self._lock:
            pass

    # == one batch =============================================================================
    async def push_batch(self) -> None:
        async with self._lock:
            self.journal.commit()
            changes = P.take([c for c in self.journal.pending() if c.failed is None])
            if not changes:
                return
            batch = P.fit(changes, self._versions, time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()),
                          read=lambda name: (self.journal.spool / name).read_bytes())
            changes = [c for c in changes if c.seq <= batch.last_seq]
            self._since_batch = 0
            self.pushing = True
            self.in_flight = {c.seq for c in changes}
            try:
                await self._send(batch)
            except (FsError, BatchAmbiguous) as exc:
                self.last_error = str(exc)
                # the API itself refusing the batch (403: EACCES) answers the same to every retry
                self._count_attempt(changes[0], exc, refused=isinstance(exc, FsError) and exc.errno in PERMANENT)
                raise
            finally:
                self.pushing = False
                self.in_flight = set()
            self.batches += 1

    async def _send(self, batch: P.Batch) -> None:
        if log.isEnabledFor(logging.DEBUG):
            log.debug("batch: %d upload(s), %d step(s): %s", len(batch.uploads), len(batch.steps),
                      "; ".join(f"{s.change.seq} {s.change.op} " + ",".join(os.fsdecode(p) for p in P.paths_of(s.change))
                                for s in batch.steps))
        if batch.uploads:
            await self.remote.upload_many([(u.staged, str(self.journal.spool / u.spool_name))
                                           for u in batch.uploads])
        results = await self.remote.run_batch([s.fragment for s in batch.steps]) if batch.steps else []
        done: list[int] = list(batch.skipped)
        applied: list[Change] = []
        final: dict[bytes, Attrs | None] = {}
        try:
            for step, (outcome, value) in zip(batch.steps, results):
                if isinstance(value, FsError):
                    self._refused(step.change, value)  # raises when worth another try
                    break
                done += step.seqs
                applied.append(step.change)
                self._note_result(step, value, final)
        finally:  # what the VM has is acknowledged even when the batch stopped early
            self.journal.acknowledge(done)
            pending = self.journal.pending(limit=1)
            floor = pending[0].seq - 1 if pending else batch.last_seq
            self._landed_cb(final, floor, applied)

    def _note_result(self, step: P.Step, value, final: dict[bytes, Attrs | None]) -> None:
        change = step.change
        paths = P.paths_of(change)
        if change.op != "setattr":  # an entry came or went: what the batch saw of its directory is stale
            for path in paths:
                final.pop(parent_of(path), None)
        if isinstance(value, B.Installed):
            if value.conflict is not None:
                self._conflict(paths[0], value.conflict)
                final[paths[0]] = None  # the VM's own version: re-read it
                self._versions.pop(paths[0], None)
                return
            value = value.attrs
        if change.op == "rename":  # final holds only names that exist (None: re-read it)
            old, new = paths
            final.pop(new, None)
            if old in final:
                final[new] = final.pop(old)
            if old in self._versions:
                self._versions[new] = self._versions.pop(old)
        elif change.op in ("unlink", "rmdir"):
            gone = final.pop(paths[0], None)
            self._versions.pop(paths[0], None)
            if gone is not None and gone.nlink > 1 and not gone.is_dir:  # its other names lost a link
                for path, attrs in final.items():
                    if attrs is not None and attrs.remote_ino == gone.remote_ino:
                        final[path] = replace(attrs, nlink=attrs.nlink - 1)
        elif isinstance(value, Attrs):
            for path in paths:
                self.conflicted.discard(os.fsdecode(path))
            for path in paths:  # a link's record is of the one inode both names share
                final[path] = value
            if change.op == "link":  # and every earlier name of it shows the new link count
                for path, attrs in final.items():
                    if attrs is not None and attrs.remote_ino == value.remote_ino and not attrs.is_dir:
                        final[path] = value
            if value.is_reg:
                self._versions[paths[-1]] = B.Version.of(value)

    def _refused(self, change: Change, exc: FsError) -> None:
        what = f"{change.op} {' → '.join(os.fsdecode(p) for p in P.paths_of(change))}"
        if exc.errno in PERMANENT:
            log.error("the VM refused %s: %s; the change is kept and retried by `arkerfs sync` "
                      "and at unmount", what, os.strerror(exc.errno))
            self.journal.note_attempt(change.seq, os.strerror(exc.errno), failed=True)
            self.last_error = f"{what}: {os.strerror(exc.errno)}"
        else:
            self._count_attempt(change, exc)
            raise exc

    def _count_attempt(self, change: Change, exc: Exception, *, refused: bool = False) -> None:
        """One more failed attempt of ``change``; marked failed after ``ATTEMPTS_BEFORE_FAILED``
        of them, or at once when ``refused`` (an error no retry changes)."""
        give_up = refused or change.attempts + 1 >= ATTEMPTS_BEFORE_FAILED
        self.journal.note_attempt(change.seq, str(exc), failed=give_up)
        if refused:
            log.error("the API refused pushing %s %s (%s); kept, retried by `arkerfs sync`",
                      change.op, P.paths_of(change)[0].decode("utf-8", "replace"), exc)
        elif give_up:
            log.error("gave up pushing %s %s after %d attempts (%s); kept, retried by `arkerfs sync`",
                      change.op, P.paths_of(change)[0].decode("utf-8", "replace"), change.attempts + 1, exc)

    def _conflict(self, path: bytes, kept: bytes) -> None:
        log.warning("conflict: %s was changed in the VM since this mount read it; the VM's version "
                    "stays, the local version was saved as %s", os.fsdecode(path), os.fsdecode(kept))
        self.conflicts.append(Conflict(os.fsdecode(path), os.fsdecode(kept), time.time()))
        self.conflicted.add(os.fsdecode(path))

    # == timing ================================================================================
    def _has_work(self) -> bool:
        return self.journal.has_pushable()

    async def _settle(self) -> None:
        """Wait for a quiet moment (or until the oldest change is ``max_delay`` old)."""
        started = self._clock()
        while True:
            now = self._clock()
            quiet_for = now - self._last_record
            if quiet_for >= self._quiet or now - started >= self._max_delay or self._since_batch >= FULL:
                return
            await trio.sleep(min(self._quiet - quiet_for, self._max_delay - (now - started)))
