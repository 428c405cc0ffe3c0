"""The change watcher: the VM tells the mount what changed in it, so caches can be kept long.

A service of the daemon's lifecycle, running while the kernel mount exists. It runs
``fs.vmwatch``'s bounded long poll on a session of its own (never one that serves file
operations, never session 0), one run after another; applies each report to the caches
(``fs.vmchanges``) and tells the kernel what to forget.

Live or not: the watcher is live from its first answer (a probe: can the VM be watched, and
where its clock stands) until a run fails or answers ``off``. While live, cached entries are
trusted for ``watch_ttl`` (a change shows up as soon as the report arrives: about ``quiet`` +
one round trip); while not, for ``cache_ttl`` as with ``--no-watch``, and what was stored under
the long TTL is trusted ``cache_ttl`` more from then on (the watcher vouched for it until it
stopped; an outage does not empty the caches at once). Going live is logged, and why it is not live once per
reason, at INFO: the mount works as it does without a watcher.

Failures: a run that fails (an API error, an outage, a server restart) is tried again after 1 s,
doubling to 30 s; the next run resumes from the last ``since``, so what changed meanwhile is
still reported. ``off`` (no python3, a home too large, an inotify limit) is tried again every
5 minutes. On a VM that runs one command at a time (VM-wide vm_busy), a long poll would hold
every file operation behind it: the watcher stops for good.
"""

from __future__ import annotations

import errno
import logging
import time

import trio

from arkerfs.client import ArkerError
from arkerfs.fs import vmchanges, vmwatch
from arkerfs.fs.errors import FsError
from arkerfs.fs.remote import run_alone
from arkerfs.protocol import HOME

log = logging.getLogger(__name__)

WATCH_SESSION = 6  # below the file operations' sessions (7 and up); 0 is the user's
BOUND = 45.0  # seconds a run waits for a change: about 1.3 calls a minute when nothing changes
RUN_MARGIN = 15.0  # the run's kill bound past BOUND (its set-up walk, a slow VM)
OFF_RETRY = 300.0  # seconds before a watcher that answered "off" tries again
BACKOFF_MAX = 30.0
# Runs start at least this far apart: while the mount (or the VM) changes things all the time,
# each run would end at once and the next begin with a walk of the home, in a new process. What
# changes in between is reported by the next run's look back, at most this much later.
SPACING = 0.3


class Watcher:
    """See the module doc. ``vm`` is the SDK's VM (a client of the watcher's own, whose failed
    requests it reports itself); ``pool`` the file operations' ``SessionPool`` (it says when
    the VM runs one command at a time); ``kernel(notes)`` tells the kernel what to forget (None
    in-process: no kernel)."""

    def __init__(self, vfs, vm, pool, *, watch_ttl: float, cache_ttl: float, kernel=None,
                 session_id: int = WATCH_SESSION, bound: float = BOUND) -> None:
        self.vfs = vfs
        self.vm = vm
        self.pool = pool
        self.watch_ttl = max(watch_ttl, cache_ttl)
        self.cache_ttl = cache_ttl
        self.kernel = kernel
        self.session_id = session_id
        self.bound = bound
        self.live = False
        self.mode: str | None = None
        self.why = "starting"
        self.runs = 0
        self.changes = 0  # paths reported changed and applied
        self.last_report: float | None = None  # time.time() of the last answer
        self._said: set[str] = set()

    def snapshot(self) -> dict:
        return {"state": "live" if self.live else "off", "mode": self.mode,
                "why": self.why, "ttl_s": self.vfs.cache.ttl, "runs": self.runs, "changes": self.changes,
                "last_report_at": self.last_report}

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        try:
            await self._watch()
        except Exception:  # a defect here must not take the mount down: it works on without
            log.exception("watcher: stopped by an unexpected error")
            self._not_live("stopped by an unexpected error (logged)")

    async def _watch(self) -> None:
        since, delay = 0, 1.0
        started = -SPACING
        while True:
            await trio.sleep_until(started + SPACING)
            started = trio.current_time()
            if self.pool.limit == 1:
                self._not_live("the VM runs one command at a time (vm_busy): a watch run would "
                               "hold every file operation behind it; the watcher stopped")
                return
            # until live (the first run, after a failure) a run only probes and looks back: it
            # answers at once, so the mount is live again as soon as the VM answers
            bound = self.bound if self.live else 0.0
            sent_at = self.vfs.cache.generation
            try:
                report = await run_alone(self.vm, vmwatch.watch(HOME.encode(), since, bound),
                                         session_id=self.session_id, timeout=bound + RUN_MARGIN)
            except FsError as exc:
                if exc.errno == errno.ENOTSUP:
                    self._not_live("the VM has no python3 to watch with")
                    since = 0
                    await trio.sleep(OFF_RETRY)
                    continue
                self._not_live(f"a watch run failed: {exc}")
            except ArkerError as exc:
                self._not_live(f"a watch run failed: {exc}")
            else:
                self.runs += 1
                self.last_report = time.time()
                if report.mode == "off":
                    self._not_live(f"the VM cannot be watched: {report.note}")
                    since = 0
                    await trio.sleep(OFF_RETRY)
                    continue
                await self._apply(report, sent_at)
                since, delay = report.since_ns, 1.0
                self._now_live(report.mode)
                continue
            await trio.sleep(delay)
            delay = min(delay * 2, BACKOFF_MAX)

    async def _apply(self, report: vmwatch.ChangeReport, sent_at: int) -> None:
        if report.changed or report.listed:
            log.debug("watcher: %d changed, %d listed: %s", len(report.changed), len(report.listed),
                      [p.decode("utf-8", "replace") for p in list(report.changed)[:5]])
        notes = vmchanges.apply(self.vfs, report, sent_at)
        self.changes += len(report.changed)
        if report.flush:
            log.info("watcher: too much changed in the VM at once to list; forgot every cached entry")
        if notes and self.kernel is not None:
            await self.kernel(notes)

    def _now_live(self, mode: str) -> None:
        if self.live and mode == self.mode:
            return
        self.live, self.mode, self.why = True, mode, f"watching {HOME} ({mode})"
        # set_ttl also drops fills in flight: they may have read the VM before this run began
        self.vfs.cache.set_ttl(self.watch_ttl)
        log.info("watcher: live (%s): changes made in the VM show up at once; cached entries "
                 "are kept %g s", mode, self.watch_ttl)

    def _not_live(self, why: str) -> None:
        self.why = why
        if self.live:
            self.live = False
            self.vfs.cache.set_ttl(self.cache_ttl)  # what the long TTL kept: cache_ttl from now
        self._say(f"watcher: not live ({why}); changes made in the VM show up within "
                  f"{self.cache_ttl:g} s (--cache-ttl)")

    def _say(self, line: str) -> None:
        if line not in self._said:  # once per reason: a flapping API must not flood the log
            self._said.add(line)
            log.info("%s", line)


async def tell_kernel(vfs, notes: vmchanges.KernelNotes) -> None:
    """Make the kernel forget what ``notes`` name (the daemon's ``Watcher.kernel``). Entries go
    through pyfuse3's own thread (``invalidate_entry_async``: it waits for operations on the
    directory in flight); inodes in a worker thread (``invalidate_inode`` may block)."""
    import pyfuse3

    for parent, name in notes.entries:
        pyfuse3.invalidate_entry_async(parent, name, ignore_enoent=True)
    inodes = vfs.inodes.numbers() if notes.everything else notes.inodes
    if inodes:
        await trio.to_thread.run_sync(_invalidate_inodes, inodes)


def _invalidate_inodes(inodes: list[int]) -> None:
    import pyfuse3

    for ino in inodes:
        try:
            pyfuse3.invalidate_inode(ino)
        except OSError as exc:  # ENOENT: the kernel had already forgotten it
            if exc.errno != errno.ENOENT:
                log.debug("invalidate_inode(%d): %s", ino, exc)
