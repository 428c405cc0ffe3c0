"""Many files in few round trips (``Sync.write_files``).

Files of at most ``CHUNK_SIZE`` bytes are packed several to a sync write request, each as a
whole-file chunk entry with its own ``upload_id`` (PROTOCOL.md §4.5.2–4.5.3); requests are
filled up to ``PACKED_BODY_BUDGET`` bytes of JSON, well under the 8 MiB the local server
accepts (§8.1), and built one at a time, so local files are read into memory one request's
worth at a time. Larger files take the presigned path (presign → PUT → commit), at most
``LARGE_PARALLEL`` at once, while the packed requests go out.

Per-entry errors that are transient resend only the entries that failed, unchanged (same
``upload_id``: the server deduplicates, §6.3), with the usual backoff. A server that answers a
packed request with fewer results than entries, or refuses it outright, does not take several
entries per request (§10.20): the rest is sent one entry per request.

Every file is attempted; the ones that did not land are reported together in one
``WriteFilesError`` naming each path and its error.
"""

from __future__ import annotations

import base64
import json
import logging
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import anyio

from arkerfs.client.errors import ArkerError, error_from_wire
from arkerfs.client.retry import hint_seconds, is_transient
from arkerfs.client.sync import Sync, WriteData, _checked, _Source
from arkerfs.client.transport import Transport
from arkerfs.protocol import CHUNK_SIZE, CLIENT_MAX_FILE_BYTES, new_ulid

log = logging.getLogger("arkerfs.client")

# JSON bytes per packed request. The local server takes 8 MiB bodies and the real service
# states no limit, so this keeps a wide margin. A lone file of up to CHUNK_SIZE always goes,
# alone (about 5.6 MB of JSON, as ``write_file`` sends it).
PACKED_BODY_BUDGET = 5 * 1024 * 1024
# Bounds the work one request asks of the server (each entry installs one file).
PACKED_MAX_ENTRIES = 1000
LARGE_PARALLEL = 4
# Envelope codes with which a server may refuse a request of several entries (§10.20).
MULTI_REFUSED_CODES = frozenset({"bad_request", "not_implemented", "payload_too_large"})
_BODY_FRAME = len('{"op":"write","writes":[]}')
_ULID_SHAPE = "0" * 26  # stands in for a fresh upload_id when counting bytes
_REPORTED_PATHS = 5  # failures named in the error message; ``failed`` has them all


class WriteFilesError(ArkerError):
    """Some files of a ``write_files`` call did not land; every file was attempted.

    ``failed`` maps each such path to its ``ArkerError`` (refused before sending, a per-entry
    error, or the failure of the request that carried it); ``written`` lists the paths that
    landed, in the order given. A failure with ``outcome_unknown`` may have landed anyway:
    write it again (writes are replay-safe). ``code`` and ``status`` are those of the failures
    when they all agree, else ``write_failed`` and 0.
    """

    def __init__(self, failed: dict[str, ArkerError], written: list[str]) -> None:
        codes = {error.code for error in failed.values()}
        statuses = {error.status for error in failed.values()}
        named = "; ".join(f"{path} ({error})" for path, error in list(failed.items())[:_REPORTED_PATHS])
        more = f"; and {len(failed) - _REPORTED_PATHS} more" if len(failed) > _REPORTED_PATHS else ""
        message = f"{len(failed)} of {len(failed) + len(written)} files were not written: {named}{more}"
        super().__init__(codes.pop() if len(codes) == 1 else "write_failed", message,
                         statuses.pop() if len(statuses) == 1 else 0)
        self.failed = failed
        self.written = written

    def __reduce__(self):
        return (type(self), (self.failed, self.written))


@dataclass
class _File:
    path: str
    source: _Source

    @property
    def packed_cost(self) -> int:
        """JSON bytes of this file's chunk entry, known before reading it (base64 is 4/3)."""
        meta = {"path": self.path, "size": self.source.size, "upload_id": _ULID_SHAPE, "start": 0,
                "end": self.source.size}
        return len(json.dumps(meta, separators=(",", ":"))) + len(',"content":""') + 4 * -(-self.source.size // 3) + 1


@dataclass
class _Pending:
    path: str
    entry: dict  # resent verbatim by every retry (same upload_id)


class BatchWriter:
    """One ``write_files`` call: sorts the files, sends them, and collects what landed."""

    def __init__(self, sync: Sync, transport: Transport, route: str, parallel: int = LARGE_PARALLEL) -> None:
        if parallel < 1:
            raise ValueError("parallel must be at least 1")
        self._sync = sync
        self._transport = transport
        self._route = route
        self._parallel = parallel
        self._single = False  # the server showed it takes only one entry per request
        self._landed: set[str] = set()
        self._failed: dict[str, ArkerError] = {}

    async def write(self, entries: Iterable[tuple[str, WriteData]] | Mapping[str, WriteData]) -> None:
        files, order = self._prepare(entries)
        small = [f for f in files if f.source.size <= CHUNK_SIZE]
        large = [f for f in files if f.source.size > CHUNK_SIZE]
        limiter = anyio.CapacityLimiter(self._parallel)
        async with anyio.create_task_group() as tg:
            for f in large:
                tg.start_soon(self._write_large, f, limiter)
            await self._write_small(small)
        if self._failed:
            failed = {path: self._failed[path] for path in order if path in self._failed}
            raise WriteFilesError(failed, [path for path in order if path in self._landed])

    def _prepare(self, entries) -> tuple[list[_File], list[str]]:
        """The files to send; what ``write_file`` would refuse before sending is failed here."""
        if isinstance(entries, Mapping):
            entries = entries.items()
        files, order, seen = [], [], set()
        for path, data in entries:
            if path in seen:  # which copy lands would depend on timing
                raise ValueError(f"write_files: {path!r} is given more than once")
            seen.add(path)
            order.append(path)
            try:
                source = _Source(data)  # TypeError for a wrong data type: a bug, raised as is
                _checked(path)
            except ArkerError as exc:
                self._fail(path, exc)
                continue
            except OSError as exc:
                self._fail(path, _local_error(data, exc))
                continue
            if source.size == 0:
                self._fail(path, ArkerError("bad_request", "empty data cannot be sent through sync; create empty files with run", 0))
            elif source.size > CLIENT_MAX_FILE_BYTES:
                self._fail(path, ArkerError("payload_too_large", f"{source.size} bytes is over the {CLIENT_MAX_FILE_BYTES} byte limit", 0))
            else:
                files.append(_File(path, source))
        return files, order

    def _fail(self, path: str, error: ArkerError) -> None:
        log.info("write_files: %s was not written: %s", path, error)
        self._failed[path] = error

    async def _write_large(self, f: _File, limiter: anyio.CapacityLimiter) -> None:
        async with limiter:
            try:
                await self._sync._write_presigned(f.path, f.source)
            except ArkerError as exc:
                self._fail(f.path, exc)
            except OSError as exc:  # the local file went away or became unreadable
                self._fail(f.path, _local_error(f.source.file, exc))
            else:
                self._landed.add(f.path)

    async def _write_small(self, files: list[_File]) -> None:
        """Pack the files into requests, each built only when the one before it is done."""
        batch: list[_File] = []
        cost = _BODY_FRAME
        for f in files:
            entry_cost = f.packed_cost + 1  # and its comma
            if batch and (cost + entry_cost > PACKED_BODY_BUDGET or len(batch) >= PACKED_MAX_ENTRIES):
                await self._send_packed(batch)
                batch, cost = [], _BODY_FRAME
            batch.append(f)
            cost += entry_cost
        if batch:
            await self._send_packed(batch)

    async def _send_packed(self, files: list[_File]) -> None:
        pending = []
        for f in files:
            try:
                data = await f.source.read_all()
            except ArkerError as exc:  # the local file changed size since it was listed
                self._fail(f.path, exc)
                continue
            except OSError as exc:
                self._fail(f.path, _local_error(f.source.file, exc))
                continue
            pending.append(_Pending(f.path, _chunk_entry(f.path, data)))
        if pending:
            await self._send_entries(pending)

    async def _send_entries(self, pending: list[_Pending]) -> None:
        """Send the entries in one request; resend only those with transient per-entry errors."""
        policy = self._transport.retry
        attempt = 0
        while pending:
            if self._single and len(pending) > 1:
                for one in pending:
                    await self._send_entries([one])
                return
            try:
                results = await self._post([p.entry for p in pending])
            except ArkerError as exc:
                if len(pending) > 1 and _refuses_several(exc):
                    log.info("write_files: a request of %d entries was refused (%s); sending one per request",
                             len(pending), exc)
                    self._single = True
                    continue
                for p in pending:
                    self._fail(p.path, exc)
                return
            if results is None:  # a server that took only the first entry (§10.20)
                log.info("write_files: %d entries got a different number of results; sending one per request",
                         len(pending))
                self._single = True
                continue
            retry, hints = [], []
            for p, result in zip(pending, results):
                wire = result.get("error")
                if not wire:
                    self._accept(p.path, result)
                    continue
                error = error_from_wire(wire, 200)
                if is_transient(None, error.code, error.message) and attempt + 1 < policy.attempts:
                    retry.append(p)
                    hints.append(hint_seconds(wire))
                else:
                    self._fail(p.path, error)
            if retry:
                known = [h for h in hints if h is not None]
                delay = policy.delay(attempt, max(known) if known else None)
                log.info("write_files: resending %d entries in %.2f s (attempt %d of %d)",
                         len(retry), delay, attempt + 2, policy.attempts)
                await anyio.sleep(delay)
                attempt += 1
            pending = retry

    async def _post(self, entries: list[dict]) -> list[dict] | None:
        """The per-entry results, or None when their count does not match the entries'."""
        r = await self._transport.request("POST", self._route, body={"op": "write", "writes": entries},
                                          replay_safe=True)
        results = r.get("results")
        if not isinstance(results, list) or len(results) != len(entries):
            if len(entries) > 1:
                return None
            count = len(results) if isinstance(results, list) else "no"
            raise ArkerError("internal", f"write response has {count} results for 1 entry", 200)
        return [result if isinstance(result, dict) else {"error": {"code": "internal",
                "message": "write result is not a JSON object"}} for result in results]

    def _accept(self, path: str, result: dict) -> None:
        if result.get("complete") and result.get("written"):
            self._landed.add(path)
        else:
            self._fail(path, ArkerError("internal", f"write of {path} returned without complete and written", 200))


def _chunk_entry(path: str, data: bytes) -> dict:
    return {"path": path, "size": len(data), "upload_id": new_ulid(), "start": 0, "end": len(data),
            "content": base64.b64encode(data).decode("ascii")}


def _refuses_several(error: ArkerError) -> bool:
    return error.code in MULTI_REFUSED_CODES or error.code.startswith("unsupported_")


def _local_error(file: object, exc: OSError) -> ArkerError:
    error = ArkerError("bad_request", f"cannot read local file {os.fspath(file)!r}: {exc.strerror or exc}", 0)
    error.__cause__ = exc
    return error
