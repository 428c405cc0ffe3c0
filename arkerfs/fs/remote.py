"""RemoteFS: every POSIX operation mapped onto the fewest Arker calls.

This file is the contract between the remote-operations work and the FUSE layer.

Rules for every method:
- paths are absolute VM paths as bytes (b"/home/user/x"); names may be any bytes but b"/" and NUL;
- one method = one round trip (one ``run`` or one ``sync`` call) unless its docstring says otherwise;
- failures raise ``arkerfs.fs.errors.FsError(errno)``: script failures from exit codes the script
  set on purpose, API failures through ``errno_for_api_error``; never a bare ArkerError;
- nothing here caches: caching lives above this layer.

How (see ``arkerfs.fs.shell`` for the script conventions): each metadata method sends one
script fragment as one ``run`` on a small pool of dedicated sessions (never session 0) and
parses its NUL-framed output; methods that create or change a node get its fresh attrs from
the same run. Contents are read through ``sync`` (names it cannot carry, non-UTF-8 or refused
by the server, through a run and ``/home/user/.arkerfs/staging``). A new content is installed by
one run, the compare-and-swap ``batch.install`` that write-back batches use as well: the bytes
travel in the script when small, else they are first uploaded to a staging name by ``sync``.

A ``run`` is never replayed blindly. Read-only scripts are repeated once after an ambiguous
failure (502/504 or ``outcome_unknown``); a mutating one is *reconciled*: one probe run looks
at the remote state and decides whether the change happened (mkdir: the directory exists;
unlink/rmdir: the name is gone; rename: source gone and target present; ...), else EIO. An
install carrying its bytes is sent again: it finds its own version there and does nothing.
A probe cannot tell "my mkdir made it" from "it existed already", so after an ambiguous
failure an existing directory counts as success rather than EEXIST.

Names under the hidden staging dir are refused locally: ENOENT for lookups, EPERM for creation.

An API that accepts connections but never answers (a hung server, a black-holed proxy) counts
toward the outage deadline like one that refuses them: with ``outage_timeout`` set, every
request (run, sync read/write, presigned read) is watched by ``Liveness``; once it has waited
until ``PROBE_TIMEOUT`` s before the deadline (at least ``PROBE_AFTER`` s), a cheap probe asks
whether the API answers anything at all. A slow answer with a live API is waited for; when
nothing has answered for ``outage_timeout`` s (and a probe went unanswered) the request is
abandoned with EIO (``NoAnswer``). A run abandoned that way is
never replayed; its session is marked abandoned (see ``SessionPool``).
"""

from __future__ import annotations

import errno as E
import logging
import os
import stat
import time
from collections.abc import Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import outcome
import trio

from arkerfs.client import ArkerError, RemoteFile
from arkerfs.client.retry import Retry, RetryPolicy, retrying
from arkerfs.fs import batch as B
from arkerfs.fs import shell as S
from arkerfs.fs.errors import FsError, errno_for_api_error
from arkerfs.fs.model import Attrs, Entry, StatFs
from arkerfs.protocol import CLIENT_MAX_FILE_BYTES, PathRuleError, check_sync_path, new_ulid

log = logging.getLogger(__name__)

DEFAULT_SESSIONS = 4
INLINE_READ_MAX = 1024 * 1024  # run-based reads of unsyncable names return up to this inline
# A new content up to this size travels base64 in its install run (one call in all); the
# script stays well under the 128 KiB a single command line may hold.
INLINE_WRITE_MAX = 48 * 1024
PATH_MAX = 4096
NAME_MAX = 255
XATTR_NAME_MAX = 255
XATTR_SIZE_MAX = 65536
AMBIGUOUS_STATUSES = frozenset({502, 504})
BUSY_CODES = frozenset({"vm_busy", "resource_busy"})
BUSY_RETRIES = 5
# After the transport's own retries: 0.05, 0.1, 0.2, 0.4, 0.8 s, no jitter.
BUSY_POLICY = RetryPolicy(attempts=BUSY_RETRIES + 1, base_delay=0.05, max_delay=0.05 * 2 ** (BUSY_RETRIES - 1),
                          jitter=0.0)
CLEANUP_TIMEOUT = 10.0
PROBE_AFTER = 2.0  # s a request waits at least before we ask whether the API answers at all
PROBE_TIMEOUT = 3.0  # a probe with no answer by then counts as "the API is silent"
PROBE_PATH = S.HOME + "/.arkerfs/liveness-probe"  # never exists: any answer (404) will do


class NoAnswer(FsError):
    """The API answered nothing, not even a probe, for the outage deadline."""


class Liveness:
    """Tells a slow answer from an API that answers nothing; see the module docstring.

    ``last_answer`` is when the API last answered anything (any watched request completing, or
    a probe). Concurrent requests share one probe."""

    def __init__(self, probe: Callable[[], Awaitable[Any]], outage_timeout: float | None) -> None:
        self._probe = probe
        self.outage_timeout = outage_timeout
        self.last_answer = -float("inf")
        self._probing: trio.Event | None = None
        self._probe_answered: bool | None = None

    async def watch(self, operation: Callable[[], Awaitable[Any]]) -> Any:
        """``await operation()``, abandoned with ``NoAnswer`` (EIO) when the API is silent for
        ``outage_timeout`` s. Errors of ``operation`` pass through unchanged."""
        if self.outage_timeout is None:
            return await operation()
        started = trio.current_time()
        with trio.CancelScope() as request:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._watchdog, request, started)
                result = await outcome.acapture(operation)
                nursery.cancel_scope.cancel()
            if _answered(result):
                self.last_answer = trio.current_time()
            return result.unwrap()
        silent = trio.current_time() - max(started, self.last_answer)
        log.warning("no answer from the API for %.1f s (--outage-timeout %g): failing the request with EIO",
                    silent, self.outage_timeout)
        raise NoAnswer(E.EIO, f"no answer from the API for {silent:.0f} s")

    async def _watchdog(self, request: trio.CancelScope, started: float) -> None:
        # Only a probe near the deadline can end the wait, so none before (slow requests cost
        # no extra calls); at least PROBE_AFTER s, so that a short deadline is not a hair trigger.
        await trio.sleep(max(PROBE_AFTER, self.outage_timeout - PROBE_TIMEOUT))
        while True:
            answered = await self._shared_probe()
            now = trio.current_time()
            if answered:
                self.last_answer = now
            silent_since = max(started, self.last_answer)
            if answered is False and now - silent_since >= self.outage_timeout:
                request.cancel()
                return
            # Few probes: the next one when an unanswered probe could end the wait.
            await trio.sleep(max(silent_since + self.outage_timeout - PROBE_TIMEOUT - now, 0.5))

    async def _shared_probe(self) -> bool | None:
        """True: the API answered; False: it did not within PROBE_TIMEOUT; None: the probe was
        cut short by the end of the request that ran it (ask again)."""
        if self._probing is not None:
            event = self._probing
            await event.wait()
            return self._probe_answered
        self._probing = event = trio.Event()
        self._probe_answered = None
        try:
            with trio.move_on_after(PROBE_TIMEOUT) as scope:
                try:
                    await self._probe()
                except ArkerError as exc:
                    self._probe_answered = exc.status != 0  # 0: no HTTP answer at all
                except FsError:
                    self._probe_answered = True
                else:
                    self._probe_answered = True
            if scope.cancelled_caught:
                self._probe_answered = False
        finally:
            self._probing = None
            event.set()
        return self._probe_answered


def _answered(result: outcome.Outcome) -> bool:
    """Did the API answer? Not if the request was cancelled or never got an HTTP answer."""
    if not isinstance(result, outcome.Error):
        return True
    error = result.error
    return not (isinstance(error, trio.Cancelled) or (isinstance(error, ArkerError) and error.status == 0))


class _WatchedFile:
    """A ``RemoteFile`` whose reads (presigned GETs) are watched like every other request."""

    def __init__(self, inner: RemoteFile, live: Liveness) -> None:
        self._inner = inner
        self._live = live

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def read_range(self, offset: int, length: int) -> bytes:
        return await self._live.watch(lambda: self._inner.read_range(offset, length))

    async def read_all(self) -> bytes:
        return await self._live.watch(self._inner.read_all)

    async def download_to(self, target) -> int:
        return await self._live.watch(lambda: self._inner.download_to(target))


class _Ambiguous(Exception):
    """The run may or may not have executed."""


class BatchAmbiguous(Exception):
    """A batch run that may or may not have executed: send it again."""


async def run_alone(vm, fragment: S.Fragment, *, session_id: int, timeout: float) -> Any:
    """``fragment`` as one run of ``vm`` on ``session_id``, outside any ``RemoteFS``'s pool and
    outage watch: the change watcher's long poll, which no file operation must ever wait for.
    Its parsed value; FsError for its status or an unusable answer; ArkerError as it comes."""
    result = await vm.run(S.script([fragment]), session_id=session_id, timeout=timeout)
    problem = result.stderr[-300:].decode(errors="replace").strip()
    if not result.completed:
        raise FsError(E.EIO, f"run did not complete (exit {result.exit_code}): {problem}")
    try:
        (outcome,) = S.parse_output(result.stdout)
        return S.check_result(fragment, outcome)
    except (S.FramingError, ValueError) as exc:
        raise FsError(E.EIO, f"unusable answer ({exc}): {problem}") from None


class SessionPool:
    """Up to ``len(ids)`` runs in flight, each on its own session; drops to one on VM-wide busy."""

    def __init__(self, ids: list[int]) -> None:
        self._free = list(ids)
        self.limit = len(ids)
        self.in_flight = 0
        self._lot = trio.lowlevel.ParkingLot()
        # Sessions whose last run was abandoned (cancelled): the VM may still be running it,
        # so a vm_busy there says nothing about the VM-wide limit.
        self.abandoned: set[int] = set()

    @asynccontextmanager
    async def session(self):
        while self.in_flight >= self.limit or not self._free:
            await self._lot.park()
        sid = self._free.pop(0)
        self.in_flight += 1
        try:
            yield sid
        finally:
            self._free.append(sid)
            self.in_flight -= 1
            self._lot.unpark_all()

    def busy(self, sid: int) -> None:
        """``sid`` answered vm_busy: VM-wide if other sessions are running and ``sid`` is clean."""
        if sid not in self.abandoned and self.in_flight > 1 and self.limit > 1:
            log.warning("vm_busy across sessions: the VM runs one command at a time; using one session")
            self.limit = 1


class RemoteFS:
    def __init__(self, vm, *, session_id: int = 7, run_timeout: float = 60.0,
                 sessions: int = DEFAULT_SESSIONS, inline_read_max: int = INLINE_READ_MAX,
                 inline_write_max: int = INLINE_WRITE_MAX, outage_timeout: float | None = None) -> None:
        """``vm`` is an ``arkerfs.client.VM``. Runs use the dedicated sessions ``session_id``,
        ``session_id + 1``, ... (``sessions`` of them), never 0. ``outage_timeout``: abandon a
        request (EIO) when the API answers nothing for that long (None: never)."""
        if session_id < 1 or sessions < 1:
            raise ValueError("session ids start at 1 (session 0 is the user's) and sessions >= 1")
        self._vm = vm
        self._run_timeout = run_timeout
        self._inline_read_max = inline_read_max
        self._inline_write_max = inline_write_max
        self.pool = SessionPool([session_id + i for i in range(sessions)])
        self.live = Liveness(lambda: vm.sync.open_read(PROBE_PATH), outage_timeout)

    # -- running fragments --------------------------------------------------------------------
    async def _run(self, fragments: list[S.Fragment], *,
                   stop_at_failure: bool = False) -> tuple[list[S.Outcome], bytes]:
        """One run of ``fragments``: one Outcome per fragment and the run's stderr (with
        ``stop_at_failure``, one per fragment that ran: the last one is the one that failed)."""
        command = S.script(fragments, stop_at_failure=stop_at_failure)

        async def attempt(tries: int) -> Any:
            async with self.pool.session() as sid:
                try:
                    result = await self.live.watch(
                        lambda: self._vm.run(command, session_id=sid, timeout=self._run_timeout))
                except (trio.Cancelled, NoAnswer):  # the VM may still run it: never replayed
                    self.pool.abandoned.add(sid)
                    raise
                except ArkerError as exc:
                    if exc.code in BUSY_CODES and tries + 1 < BUSY_POLICY.attempts:
                        self.pool.busy(sid)  # while this session still counts as in flight
                        raise  # retried below
                    if exc.outcome_unknown or exc.status in AMBIGUOUS_STATUSES:
                        self.pool.abandoned.add(sid)
                        raise _Ambiguous(str(exc)) from exc
                    raise FsError(errno_for_api_error(exc), str(exc)) from exc
                self.pool.abandoned.discard(sid)
                return result

        # busy: the run never started, so retrying is safe; the session is free while we wait.
        result = await retrying(BUSY_POLICY, attempt, catch=ArkerError,
                                classify=lambda exc: Retry() if exc.code in BUSY_CODES else None)
        if not result.completed:
            log.error("run did not complete (exit %s, timed_out=%s): %s", result.exit_code,
                      result.timed_out, result.stderr[-500:].decode(errors="replace"))
            raise FsError(E.EIO, "run did not complete")
        try:
            outcomes = S.parse_output(result.stdout)
        except S.FramingError as exc:
            outcomes, problem = [], str(exc)
        else:
            problem = f"{len(outcomes)} fragment statuses for {len(fragments)} fragments"
        complete = len(outcomes) == len(fragments) or (
            stop_at_failure and 0 < len(outcomes) < len(fragments) and outcomes[-1].status != 0)
        if not complete or outcomes[-1].status != result.exit_code:
            log.error("script output unusable (%s; exit %s): %s", problem, result.exit_code,
                      result.stderr[-500:].decode(errors="replace"))
            raise FsError(E.EIO, "script output unusable")
        return outcomes, result.stderr

    async def run_batch(self, fragments: list[S.Fragment]) -> list[tuple[S.Outcome, Any]]:
        """One run of ``fragments`` in order, stopping at the first that fails: (outcome, value)
        of each fragment that ran, value being its parsed result or the ``FsError`` it failed
        with. Raises ``BatchAmbiguous`` when the run may or may not have executed (the caller
        sends the whole batch again: its fragments are repeatable, see ``fs.batch``)."""
        try:
            outcomes, stderr = await self._run(fragments, stop_at_failure=True)
        except _Ambiguous as exc:
            raise BatchAmbiguous(str(exc)) from None
        done = []
        for fragment, outcome in zip(fragments, outcomes):
            try:
                done.append((outcome, self._value(fragment, outcome, stderr)))
            except FsError as exc:
                done.append((outcome, exc))
        return done

    async def upload_many(self, uploads: list[tuple[bytes, str]]) -> None:
        """Write each local file to its VM path (staging names: plain ASCII), as few requests as
        the SDK can pack them in. Creates the staging directory when the server wants it."""
        entries = [(path.decode(), Path(local)) for path, local in uploads]
        for first in (True, False):
            try:
                writer = getattr(self._vm.sync, "write_files", None)
                if writer is not None:
                    await self.live.watch(lambda: writer(entries))
                else:
                    for path, local in entries:
                        await self.live.watch(lambda: self._vm.sync.write_file(path, local))
                return
            except ArkerError as exc:
                if not (first and exc.code == "not_found"):
                    raise FsError(errno_for_api_error(exc), str(exc)) from exc
            await self._call(S.make_staging_dir())

    @staticmethod
    def _value(fragment: S.Fragment, outcome: S.Outcome, stderr: bytes) -> Any:
        errno = S.errno_for_exit(outcome.status)
        if outcome.status and (errno == E.EIO or outcome.status != errno):
            log.error("script failed with unexpected status %d: %s", outcome.status,
                      stderr[-500:].decode(errors="replace"))
        try:
            return S.check_result(fragment, outcome)
        except S.FramingError as exc:
            log.error("script records unusable: %s", exc)
            raise FsError(E.EIO, str(exc)) from None

    async def _call(self, fragment: S.Fragment, *, readonly: bool = False,
                    reconcile: Callable[[], Awaitable[Any]] | None = None) -> Any:
        """Run one fragment. After an ambiguous failure a read-only fragment runs once more and
        a mutating one is settled by ``reconcile`` (EIO without one)."""
        try:
            (outcome,), stderr = await self._run([fragment])
        except _Ambiguous as exc:
            log.warning("ambiguous failure of a run (%s); %s", exc,
                        "repeating the read-only script" if readonly else "reconciling")
            if readonly:
                try:
                    (outcome,), stderr = await self._run([fragment])
                except _Ambiguous as again:
                    raise FsError(E.EIO, str(again)) from None
            elif reconcile is not None:
                return await reconcile()
            else:
                raise FsError(E.EIO, f"outcome unknown: {exc}") from None
        return self._value(fragment, outcome, stderr)

    async def _probe(self, *paths: bytes) -> list[Attrs | int]:
        """lstat of each path in one run (one fragment each): Attrs, or the errno it failed with."""
        fragments = [S.lstat(p) for p in paths]
        try:
            outcomes, stderr = await self._run(fragments)
        except _Ambiguous as exc:
            raise FsError(E.EIO, f"reconcile probe failed too: {exc}") from None
        found: list[Attrs | int] = []
        for fragment, outcome in zip(fragments, outcomes):
            try:
                found.append(self._value(fragment, outcome, stderr))
            except FsError as exc:
                found.append(exc.errno)
        return found

    @staticmethod
    def _settled(ok: bool, what: str, value: Any = None) -> Any:
        if not ok:
            raise FsError(E.EIO, f"{what}: outcome unknown and the remote state does not show it")
        log.info("%s: reconciled as done", what)
        return value

    # -- path hygiene ---------------------------------------------------------------------------
    @staticmethod
    def _check(path: bytes, *, creating: bool = False) -> bytes:
        if not isinstance(path, bytes) or b"\0" in path or not (
                path == S.HOME_B or path.startswith(S.HOME_B + b"/")):
            raise FsError(E.EINVAL, f"not a VM path under {S.HOME_B!r}: {path!r}")
        if len(path) >= PATH_MAX or any(len(c) > NAME_MAX for c in path.split(b"/")):
            raise FsError(E.ENAMETOOLONG)
        if path == S.STAGING_DIR or path.startswith(S.STAGING_DIR + b"/"):
            raise FsError(E.EPERM if creating else E.ENOENT, "arkerfs staging area")
        return path

    def _removable(self, path: bytes) -> bytes:
        if self._check(path) == S.HOME_B:
            raise FsError(E.EBUSY, "the home directory is the mount root")
        return path

    @staticmethod
    def _sync_path(path: bytes) -> str | None:
        """``path`` as the sync API takes it, or None when it cannot carry it."""
        try:
            return check_sync_path(path.decode("utf-8"))
        except (UnicodeDecodeError, PathRuleError):
            return None

    # -- metadata -------------------------------------------------------------------------
    async def list_dir(self, path: bytes) -> tuple[Attrs, list[Entry]]:
        """The directory's own attrs and every entry with its attrs: one run, or one run per
        ``S.LIST_PAGE`` entries for a larger directory, so no listing outgrows what a run may
        print (PROTOCOL.md §7.6). ENOENT/ENOTDIR."""
        path = self._check(path)
        attrs, entries = await self._call(S.list_dir(path), readonly=True)
        if len(entries) <= S.LIST_PAGE:
            return attrs, entries
        try:
            attrs, entries, more = await self._call(S.list_dir_page(path, None), readonly=True)
        except FsError as exc:
            if exc.errno != E.ENOTSUP:
                raise
            log.warning("no python3 in the VM: %r is listed in one run, whatever its size", path)
            return await self._call(S.list_dir(path, limit=None), readonly=True)
        while more and entries:
            _, page, more = await self._call(S.list_dir_page(path, entries[-1].name), readonly=True)
            entries += page
        return attrs, entries

    async def list_tree(self, path: bytes) -> tuple[Attrs, dict[bytes, list[Entry]]]:
        """The directory's attrs and its subtree's listings, breadth first, each directory whole,
        bounded (one run; ``S.list_tree``). ENOTSUP where the VM has no python3."""
        return await self._call(S.list_tree(self._check(path)), readonly=True)

    async def lstat(self, path: bytes) -> Attrs:
        """Attributes of ``path`` without following a final symlink. ENOENT."""
        return await self._call(S.lstat(self._check(path)), readonly=True)

    async def statfs(self) -> StatFs:
        return await self._call(S.statfs(), readonly=True)

    async def readlink(self, path: bytes) -> bytes:
        return await self._call(S.readlink(self._check(path)), readonly=True)

    # -- namespace ------------------------------------------------------------------------
    async def mkdir(self, path: bytes, mode: int) -> Attrs:
        self._check(path, creating=True)

        async def reconcile() -> Attrs:
            (found,) = await self._probe(path)
            return self._settled(isinstance(found, Attrs) and found.is_dir, "mkdir", found)

        return await self._call(S.mkdir(path, mode), reconcile=reconcile)

    async def rmdir(self, path: bytes) -> None:
        return await self._call(S.rmdir(self._removable(path)), reconcile=self._gone(path, "rmdir"))

    async def unlink(self, path: bytes) -> None:
        return await self._call(S.unlink(self._removable(path)), reconcile=self._gone(path, "unlink"))

    def _gone(self, path: bytes, what: str) -> Callable[[], Awaitable[None]]:
        async def reconcile() -> None:
            (found,) = await self._probe(path)
            return self._settled(found == E.ENOENT, what)
        return reconcile

    async def rename(self, old: bytes, new: bytes, flags: int = 0) -> None:
        """flags: 0, RENAME_NOREPLACE (1) or RENAME_EXCHANGE (2); unsupported -> EINVAL.

        RENAME_EXCHANGE runs renameat2 through python3 in the VM; where that is unavailable
        it is refused with EINVAL, never degraded to a plain rename."""
        if flags not in (0, S.RENAME_NOREPLACE, S.RENAME_EXCHANGE):
            raise FsError(E.EINVAL, f"rename flags {flags:#x}")
        self._removable(old)
        if self._check(new, creating=True) == S.HOME_B:
            raise FsError(E.EBUSY, "the home directory is the mount root")

        async def reconcile() -> None:
            if flags == S.RENAME_EXCHANGE:  # both names exist either way: nothing to look at
                return self._settled(False, "rename exchange")
            gone, there = await self._probe(old, new)
            return self._settled(gone == E.ENOENT and isinstance(there, Attrs), "rename")

        return await self._call(S.rename(old, new, flags), reconcile=reconcile)

    async def symlink(self, target: bytes, path: bytes) -> Attrs:
        self._check(path, creating=True)
        if b"\0" in target:
            raise FsError(E.EINVAL, "symlink target with NUL")
        if len(target) >= PATH_MAX:
            raise FsError(E.ENAMETOOLONG)

        async def reconcile() -> Attrs:
            (found,) = await self._probe(path)
            ok = isinstance(found, Attrs) and found.symlink_target == target
            return self._settled(ok, "symlink", found)

        return await self._call(S.symlink(target, path), reconcile=reconcile)

    async def link(self, existing: bytes, new: bytes) -> Attrs:
        """Hard link; returns the attrs of the new name (nlink already incremented)."""
        self._check(existing)
        self._check(new, creating=True)

        async def reconcile() -> Attrs:
            src, dst = await self._probe(existing, new)
            ok = isinstance(src, Attrs) and isinstance(dst, Attrs) and src.remote_ino == dst.remote_ino
            return self._settled(ok, "link", dst)

        return await self._call(S.link(existing, new), reconcile=reconcile)

    async def mknod(self, path: bytes, mode: int, rdev: int = 0) -> Attrs:
        """Regular files (an empty one, as ``create``), fifos and sockets; others -> EPERM."""
        self._check(path, creating=True)
        if stat.S_ISREG(mode):
            return await self._create_empty(path, stat.S_IMODE(mode), exclusive=True)
        if not (stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)):
            raise FsError(E.EPERM, f"mknod of type {stat.S_IFMT(mode):#o}")

        async def reconcile() -> Attrs:
            (found,) = await self._probe(path)
            ok = isinstance(found, Attrs) and stat.S_IFMT(found.mode) == stat.S_IFMT(mode)
            return self._settled(ok, "mknod", found)

        return await self._call(S.mknod(path, mode), reconcile=reconcile)

    async def create_empty(self, path: bytes, mode: int, *, exclusive: bool = True) -> Attrs:
        """Create (or, if not exclusive, truncate) an empty regular file with ``mode``."""
        return await self._create_empty(path, mode, exclusive)

    async def _create_empty(self, path: bytes, mode: int | None, exclusive: bool) -> Attrs:
        """``mode`` None keeps an existing file's mode (0644 for a new one)."""
        self._check(path, creating=True)

        async def reconcile() -> Attrs:
            (found,) = await self._probe(path)
            ok = isinstance(found, Attrs) and found.is_reg and found.size == 0
            return self._settled(ok, "create", found)

        return await self._call(S.create_empty(path, mode, exclusive=exclusive), reconcile=reconcile)

    # -- attributes -----------------------------------------------------------------------
    async def setattr(self, path: bytes, *, mode: int | None = None, uid: int | None = None,
                      gid: int | None = None, size: int | None = None,
                      atime_ns: int | None = None, mtime_ns: int | None = None) -> Attrs:
        """Apply any combination in ONE run (never following a final symlink for times/owner)
        and return the resulting attrs."""
        self._check(path)
        if size is not None and size < 0:
            raise FsError(E.EINVAL, "negative size")
        if size is not None and size > CLIENT_MAX_FILE_BYTES:
            raise FsError(E.EFBIG)

        async def reconcile() -> Attrs:
            (found,) = await self._probe(path)
            ok = isinstance(found, Attrs) and all(want is None or want == have for want, have in (
                (None if mode is None or found.is_symlink else mode & 0o7777, stat.S_IMODE(found.mode)),
                (uid, found.uid), (gid, found.gid), (size, found.size),
                (atime_ns, found.atime_ns), (mtime_ns, found.mtime_ns)))
            if not ok and isinstance(found, Attrs):
                # Every value is absolute (chown, truncate -s, chmod, touch -d): applying them a
                # second time is harmless, so a change the probe does not show is re-issued once.
                log.info("setattr: not applied according to the probe; re-issuing it (idempotent)")
                return await self._call(fragment)
            return self._settled(ok, "setattr", found)

        fragment = S.setattr(path, mode=mode, uid=uid, gid=gid, size=size, atime_ns=atime_ns, mtime_ns=mtime_ns)
        return await self._call(fragment, reconcile=reconcile)

    # -- contents -------------------------------------------------------------------------
    async def open_read(self, path: bytes):
        """One sync read. Returns an ``arkerfs.client.RemoteFile`` (inline bytes, or a presigned
        URL readable by ranges). Names the sync API cannot carry fall back to a run-based read:
        one run for files up to ``inline_read_max`` bytes (content base64 in the output), else
        run (hard-link to staging) + sync read + run (cleanup), returned as inline bytes."""
        self._check(path)
        sync_path = self._sync_path(path)
        if sync_path is not None:
            try:
                return self._watched(await self.live.watch(lambda: self._vm.sync.open_read(sync_path)))
            except ArkerError as exc:
                if exc.code != "bad_request":
                    raise FsError(errno_for_api_error(exc), str(exc)) from exc
                log.info("sync read of %r refused (%s); reading through a run", path, exc)
        staging = S.STAGING + b"/" + new_ulid().encode()
        got: S.StagedRead = await self._call(
            S.read_small_or_stage(path, staging, self._inline_read_max), readonly=True)
        if got.content is None:
            try:
                remote = self._watched(await self.live.watch(lambda: self._vm.sync.open_read(staging.decode())))
                data = await remote.read_all()
            except ArkerError as exc:
                raise FsError(errno_for_api_error(exc), str(exc)) from exc
            finally:
                await self._cleanup(staging)
        else:
            data = got.content
        return RemoteFile(None, path=os.fsdecode(path), size=len(data), content=data)

    async def read_small_files(self, base: bytes, first: bytes, exclude: list[bytes], file_max: int,
                               batch_max: int, *, deep: bool = False) -> list[S.SmallFile]:
        """One run: ``first`` and other small files under ``base`` (``S.read_small_files``)."""
        self._check(base)
        return await self._call(S.read_small_files(base, first, exclude, file_max, batch_max, deep=deep),
                                readonly=True)

    def _watched(self, remote_file: RemoteFile) -> RemoteFile:
        """Presigned reads of ``remote_file`` watched for answers like every other request."""
        return remote_file if self.live.outage_timeout is None else _WatchedFile(remote_file, self.live)

    async def _cleanup(self, staging: bytes) -> None:
        """Remove a staging file; failures only log (a later staging run sweeps leftovers)."""
        with trio.move_on_after(CLEANUP_TIMEOUT) as scope:
            scope.shield = True
            try:
                await self._call(S.remove_staged(staging))
            except FsError as exc:
                log.warning("could not remove staging file %r: %s", staging, exc)

    async def write_file(self, path: bytes, source, size: int, *, mode: int | None = None,
                         in_place: bool = False, base: Attrs | None = None,
                         mtime_ns: int | None = None, atime_ns: int | None = None) -> B.Installed:
        """Replace the whole file with ``size`` bytes from ``source`` (bytes or a local file
        path), as a compare-and-swap (``batch.install``, the prelude's ``_inst``): installed only
        if the VM's file is still ``base``, the version the change was made on (None: install
        whatever is there). Otherwise nothing is overwritten: the new content goes beside it as
        ``NAME.conflict-<UTC stamp>`` (or under ``batch.RECOVERY`` when the directory is gone)
        and ``Installed.conflict`` says where; the caller reports it.

        The one run sets everything: ``mode`` (None: ``base``'s, else the file's own, 0644 for
        a new one), ``mtime_ns`` (None:
        now) and ``atime_ns`` (None: the mtime), and returns the fresh attrs. A new file lands
        atomically (staged, then renamed), so on failure the remote keeps its old content.
        ``in_place`` (a file with hard links): the bytes are copied into the existing inode so
        every link sees them (not atomic).

        Costs: up to ``inline_write_max`` bytes, ONE run (the content travels in the script);
        larger, one sync write to a staging name plus that run."""
        self._check(path, creating=True)
        if size > CLIENT_MAX_FILE_BYTES:
            raise FsError(E.EFBIG)
        data = Path(source) if isinstance(source, str) else source
        if isinstance(data, (bytearray, memoryview)):
            data = bytes(data)
        content = None
        if 0 < size <= self._inline_write_max:
            content = data.read_bytes() if isinstance(data, Path) else data
        mtime = time.time_ns() if mtime_ns is None else mtime_ns
        perm = mode if mode is not None or base is None else stat.S_IMODE(base.mode)
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        staging = S.STAGING + b"/" + new_ulid().encode()
        if size and content is None:
            await self._upload_staged(staging, data)
        fragment = B.install(staging, path, mode=perm, mtime_ns=mtime, atime_ns=atime_ns,
                             base=None if base is None else B.Version.of(base), check=base is not None,
                             stamp=stamp, size=size, empty=size == 0, content=content, in_place=in_place)

        async def reconcile() -> B.Installed:
            if size == 0 or content is not None:
                # the script carries everything and finds its own earlier install done: send it again
                log.info("write of %r: sending the install again (repeatable)", path)
                return await self._call(fragment)
            found, kept = await self._probe(path, B.conflict_name(path, stamp))
            if isinstance(found, Attrs) and (found.size, found.mtime_ns) == (size, mtime):
                return self._settled(True, "install", B.Installed(found, None))
            if isinstance(kept, Attrs) and kept.size == size:
                return self._settled(True, "install", B.Installed(None, B.conflict_name(path, stamp)))
            return self._settled(False, "install")

        return await self._call(fragment, reconcile=reconcile)

    async def _upload_staged(self, staging: bytes, data) -> None:
        """One sync write of ``data`` to the staging name (creating the staging directory when
        the server does not make parents)."""
        for first in (True, False):
            try:
                await self.live.watch(lambda: self._vm.sync.write_file(staging.decode(), data))
                return
            except ArkerError as exc:
                if not (first and exc.code == "not_found"):
                    raise FsError(errno_for_api_error(exc), str(exc)) from exc
            await self._call(S.make_staging_dir())

    # -- extended attributes --------------------------------------------------------------
    # Only the user.* namespace reaches the VM. Other namespaces are answered locally without
    # a round trip (the kernel asks for security.capability on every write): ENOTSUP, the same
    # answer the VFS layer gives; listxattr shows user.* names only. A missing user.* name is
    # ENODATA, also where the VM's filesystem stores no user xattrs (see ``shell.getxattr``).
    @staticmethod
    def _xattr_name(name: bytes) -> bool:
        if not name or len(name) > XATTR_NAME_MAX or b"\0" in name:
            raise FsError(E.ERANGE, "bad xattr name")
        return name.startswith(b"user.")

    async def getxattr(self, path: bytes, name: bytes) -> bytes:
        self._check(path)
        if not self._xattr_name(name):
            raise FsError(E.ENOTSUP, "only user.* xattrs are supported")
        return await self._call(S.getxattr(path, name), readonly=True)

    async def setxattr(self, path: bytes, name: bytes, value: bytes, flags: int = 0) -> None:
        self._check(path)
        if not self._xattr_name(name):
            raise FsError(E.ENOTSUP, "only user.* xattrs are supported")
        if len(value) > XATTR_SIZE_MAX:
            raise FsError(E.E2BIG)
        if flags & ~(S.XATTR_CREATE | S.XATTR_REPLACE) or flags == S.XATTR_CREATE | S.XATTR_REPLACE:
            raise FsError(E.EINVAL, f"setxattr flags {flags:#x}")

        async def reconcile() -> None:
            try:
                got = await self._call(S.getxattr(path, name), readonly=True)
            except FsError:
                got = None
            return self._settled(got == value, "setxattr")

        return await self._call(S.setxattr(path, name, value, flags), reconcile=reconcile)

    async def listxattr(self, path: bytes) -> list[bytes]:
        self._check(path)
        names = await self._call(S.listxattr(path), readonly=True)
        return [n for n in names if n.startswith(b"user.")]

    async def removexattr(self, path: bytes, name: bytes) -> None:
        self._check(path)
        if not self._xattr_name(name):
            raise FsError(E.ENOTSUP, "only user.* xattrs are supported")

        async def reconcile() -> None:
            try:
                await self._call(S.getxattr(path, name), readonly=True)
            except FsError as exc:
                return self._settled(exc.errno == E.ENODATA, "removexattr")
            return self._settled(False, "removexattr")

        return await self._call(S.removexattr(path, name), reconcile=reconcile)
