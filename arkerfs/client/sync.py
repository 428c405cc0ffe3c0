"""File transfer through ``sync`` (PROTOCOL.md §4.5, §4.6): whole-file reads and writes.

Reads come back inline or as a presigned URL; ``RemoteFile`` hides the difference and adds
ranged reads on presigned URLs (§10.2), every answer checked to be of the one version the
handle reads (``object_changed`` otherwise). Writes of at most ``CHUNK_SIZE`` bytes go inline in
one request; larger ones go presign request → one PUT of the whole file → commit.
"""

from __future__ import annotations

import base64
import logging
import os
import re
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from typing import BinaryIO
from urllib.parse import quote

import anyio

from arkerfs.client.errors import ArkerError, error_from_wire
from arkerfs.client.retry import AttemptFailed, Retry, hint_seconds, is_transient, retrying
from arkerfs.client.transport import BlobContent, Transport
from arkerfs.protocol import (
    API_PREFIX,
    CHUNK_SIZE,
    CLIENT_MAX_FILE_BYTES,
    PRESIGN_EXPIRES_IN,
    PathRuleError,
    check_sync_path,
    new_ulid,
)

log = logging.getLogger("arkerfs.client")

# A presigned URL counts as expired this long before the server says it does, so a request
# started just before the deadline is not refused by the store mid-flight.
EXPIRY_MARGIN = 60.0
STREAM_BLOCK = 1024 * 1024
# Presign → PUT → commit rounds for one write; a round restarts when the URL or upload expired.
PRESIGN_ROUNDS = 3

WriteData = bytes | bytearray | memoryview | str | os.PathLike


def _checked(path: str) -> str:
    try:
        return check_sync_path(path)
    except PathRuleError as exc:
        raise ArkerError("bad_request", str(exc), 0) from None


class RemoteFile:
    """The answer to one sync read: the file's bytes inline, or a presigned URL to them.

    A presigned URL is a snapshot of the file when it was read; ``expired`` turns True a
    margin before the URL's lifetime ends, and then a fresh ``open_read`` is needed (call
    ``continues`` on it). Inline content needs no transport, so callers may wrap bytes they
    fetched another way.

    One version, first byte to last: the first answer's ``ETag`` (or, from a store that sends
    none, its ``Last-Modified``) is the reference, every later answer must carry the same one and
    the size the read reported (``Content-Range`` total, or the length of a whole body), and a
    412 from the store means the version is gone. Any of these raises
    ``ArkerError("object_changed")``: reading on would mix two versions.
    """

    def __init__(
        self,
        transport: Transport | None,
        *,
        path: str,
        size: int,
        content: bytes | None = None,
        url: str | None = None,
        expires_in: float = PRESIGN_EXPIRES_IN,
    ) -> None:
        if (content is None) == (url is None):
            raise ValueError("RemoteFile needs exactly one of content and url")
        if url is not None and transport is None:
            raise ValueError("a presigned RemoteFile needs the transport that fetches it")
        self._transport = transport
        self.path = path
        self.size = size
        self._content = content
        self._url = url
        # (a short-lived URL gets a proportional margin, so it is usable at all)
        self._expires_at = time.monotonic() + expires_in - min(EXPIRY_MARGIN, expires_in / 4)
        self._etag: str | None = None  # validators of the version read (see the class docstring)
        self._modified: str | None = None
        self._answered = False  # the reference is taken from this URL's first answer

    @classmethod
    def from_wire(cls, transport: Transport, path: str, r: dict) -> RemoteFile:
        """Interpret a sync read response (§4.5.1)."""
        content = r.get("content")
        if content is not None:
            if not isinstance(content, str):
                raise ArkerError("internal", f"read of {path}: content is not a string", 200)
            if r.get("encoding") != "base64":
                data = content.encode("utf-8")
            else:
                try:
                    data = base64.b64decode(content, validate=True)
                except ValueError as exc:
                    # Unlike run output there is no text to fall back to: the bytes would be wrong.
                    raise ArkerError("internal", f"read of {path}: content is not valid base64", 200) from exc
            return cls(transport, path=path, size=len(data), content=data)
        url = r.get("presigned_url")
        if not isinstance(url, str) or not url:
            raise ArkerError("internal", f"read of {path}: response has neither content nor presigned_url", 200)
        size, expires_in = r.get("size"), r.get("expires_in", PRESIGN_EXPIRES_IN)
        if not isinstance(size, int) or not isinstance(expires_in, (int, float)):
            raise ArkerError("internal", f"read of {path}: presigned response lacks a valid size or expires_in", 200)
        return cls(transport, path=path, size=size, url=url, expires_in=expires_in)

    @property
    def inline(self) -> bool:
        return self._content is not None

    @property
    def expired(self) -> bool:
        return self._content is None and time.monotonic() >= self._expires_at

    def __repr__(self) -> str:
        # The URL is a bearer credential for this file, so it stays out of the repr.
        return f"RemoteFile(path={self.path!r}, size={self.size}, inline={self.inline})"

    def continues(self, previous: RemoteFile) -> None:
        """This fresh URL goes on reading the version ``previous`` read (whose URL expired):
        ``object_changed`` if the size differs, and its answers must carry ``previous``'s ETag.
        (Not its Last-Modified: a store may date each copy it serves.)"""
        if self.size != previous.size:
            raise self._changed(f"its size is now {self.size}, was {previous.size}", 200)
        self._etag = previous._etag

    async def read_range(self, offset: int, length: int) -> bytes:
        """Bytes ``[offset, offset+length)`` clipped at EOF; one ranged GET when presigned."""
        if self._content is not None and offset >= 0 and length >= 0:
            return self._content[offset:min(offset + length, self.size)]
        end = min(offset + length, self.size)
        buf = bytearray(max(end - offset, 0))

        def keep(position: int, data: bytes) -> None:
            buf[position - offset:position - offset + len(data)] = data

        await self.read_range_into(offset, length, keep)
        return bytes(buf)

    async def read_range_into(self, offset: int, length: int, sink: Callable[[int, bytes], object]) -> int:
        """Pass bytes ``[offset, offset+length)`` (clipped at EOF) to ``sink(position, data)`` as
        they arrive, so none are held here; returns their count. One ranged GET when presigned;
        a GET retried after a dropped body calls ``sink`` again from ``offset``."""
        if offset < 0 or length < 0:
            raise ValueError("offset and length must be non-negative")
        end = min(offset + length, self.size)
        if offset >= end:
            return 0
        if self._content is not None:
            sink(offset, self._content[offset:end])
            return end - offset

        async def consume(status: int, chunks: AsyncIterator[bytes], headers: Mapping[str, str]) -> int:
            self._check_version(status, headers)
            position = offset if status == 206 else 0  # a store that ignored Range sends it all (200)
            async for chunk in chunks:
                low, high = max(offset - position, 0), min(end - position, len(chunk))
                if low < high:
                    sink(position + low, chunk[low:high])
                position += len(chunk)
                if position >= end:
                    break
            if position < end:
                message = f"ranged GET of {self.path} returned {max(position - offset, 0)} bytes, wanted {end - offset}"
                raise ArkerError("internal", message, status)
            return end - offset

        return await self._get(consume, (offset, end))

    async def read_all(self) -> bytes:
        if self._content is not None:
            return self._content

        async def consume(status: int, chunks: AsyncIterator[bytes], headers: Mapping[str, str]) -> bytes:
            self._check_version(status, headers)
            return b"".join([chunk async for chunk in chunks])

        return await self._get(consume)

    async def _get(self, consume, byte_range: tuple[int, int] | None = None):
        try:
            return await self._transport.blob_get(self._url, consume, byte_range=byte_range)
        except ArkerError as exc:
            if exc.status == 412:  # the store no longer has the version this URL names
                raise self._changed("the store refused the URL (412)", 412) from exc
            raise

    def _check_version(self, status: int, headers: Mapping[str, str]) -> None:
        total = _total_size(status, headers)
        if total is not None and total != self.size:
            raise self._changed(f"the store sent a {total}-byte version, not {self.size}", status)
        etag, modified = headers.get("etag"), headers.get("last-modified")
        if self._etag is not None and etag != self._etag:
            raise self._changed(f"ETag {etag} instead of {self._etag}", status)
        if self._etag is None and self._modified is not None and modified != self._modified:
            raise self._changed(f"Last-Modified {modified} instead of {self._modified}", status)
        if not self._answered:
            self._answered = True
            self._etag = self._etag or etag
            self._modified = modified

    def _changed(self, why: str, status: int) -> ArkerError:
        return ArkerError("object_changed", f"{self.path} changed while being read ({why}); read it again", status)

    async def download_to(self, target: str | os.PathLike | BinaryIO) -> int:
        """Write the whole file to a local path or a binary file object; returns the byte count.

        Presigned bodies are streamed, so memory stays constant whatever the file size.
        """
        if isinstance(target, (str, os.PathLike)):
            async with await anyio.open_file(target, "wb") as out:
                return await self._download(out)
        return await self._download(anyio.wrap_file(target))

    async def _download(self, out) -> int:
        if self._content is not None:
            await out.write(self._content)
            return len(self._content)
        start = await out.tell() if out.seekable() else None
        attempts = 0

        async def consume(status: int, chunks: AsyncIterator[bytes], headers: Mapping[str, str]) -> int:
            nonlocal attempts
            self._check_version(status, headers)
            attempts += 1
            if attempts > 1:  # a retry after a dropped body: start over where we began
                if start is None:
                    raise ArkerError("unavailable", f"download of {self.path} broke off and the target cannot seek back", 0)
                await out.seek(start)
                await out.truncate()
            written = 0
            async for chunk in chunks:
                await out.write(chunk)
                written += len(chunk)
            return written

        return await self._get(consume)


_CONTENT_RANGE = re.compile(r"bytes \d+-\d+/(\d+)")


def _total_size(status: int, headers: Mapping[str, str]) -> int | None:
    """The size of the object an answer is from, when it says: the Content-Range total of a
    206, the length of a whole (200) body that is not content-encoded."""
    if status == 206:
        match = _CONTENT_RANGE.fullmatch(headers.get("content-range", "").strip())
        return int(match.group(1)) if match else None
    length = headers.get("content-length", "")
    return int(length) if status == 200 and length.isdigit() and "content-encoding" not in headers else None


class _Source:
    """What ``write_file`` uploads: bytes in memory or a local file streamed from disk."""

    def __init__(self, data: WriteData) -> None:
        self.data: bytes | None = None
        self.file: str | os.PathLike | None = None
        if isinstance(data, str):
            self.data = data.encode("utf-8")
        elif isinstance(data, (bytes, bytearray, memoryview)):
            self.data = bytes(data)
        elif isinstance(data, os.PathLike):
            self.file = data
        else:
            raise TypeError(f"write_file data must be bytes-like, str or a path, not {type(data).__name__}")
        self.size = len(self.data) if self.data is not None else os.stat(self.file).st_size

    async def read_all(self) -> bytes:
        if self.data is not None:
            return self.data
        async with await anyio.open_file(self.file, "rb") as f:
            data = await f.read(self.size + 1)
        self._check_length(len(data))
        return data

    def body(self) -> BlobContent:
        """A fresh PUT body; a generator is consumed by one attempt, so each gets its own."""
        return self.data if self.data is not None else self._stream()

    async def _stream(self) -> AsyncIterator[bytes]:
        sent = 0
        async with await anyio.open_file(self.file, "rb") as f:
            while sent < self.size:
                block = await f.read(min(STREAM_BLOCK, self.size - sent))
                if not block:
                    break
                sent += len(block)
                yield block
            sent += len(await f.read(1))
        self._check_length(sent)

    def _check_length(self, actual: int) -> None:
        if actual != self.size:
            raise ArkerError("bad_request", f"local file {os.fspath(self.file)!r} changed size while uploading", 0)


class Sync:
    """``vm.sync``: whole-file reads and writes under /home/user."""

    def __init__(self, transport: Transport, vm_id: str) -> None:
        self._transport = transport
        self._route = f"{API_PREFIX}/vms/{quote(vm_id, safe='')}/sync"

    async def open_read(self, path: str) -> RemoteFile:
        """One sync read call; the returned RemoteFile holds the bytes or a presigned URL."""
        body = {"op": "read", "path": _checked(path)}
        r = await self._transport.request("POST", self._route, body=body, replay_safe=True)
        return RemoteFile.from_wire(self._transport, path, r)

    async def read_file(self, path: str) -> bytes:
        """The whole file. A 403 from the store (URL expired in between) or a file replaced
        between the read and the GET (``object_changed``) re-reads once."""
        remote = await self.open_read(path)
        try:
            return await remote.read_all()
        except ArkerError as exc:
            if exc.status != 403 and exc.code != "object_changed":
                raise
            log.info("presigned GET of %s failed (%s); requesting a fresh URL", path, exc.code)
        return await (await self.open_read(path)).read_all()

    async def write_file(self, path: str, data: WriteData) -> None:
        """Replace the file with ``data`` (bytes, str as UTF-8, or a local file path).

        Refused before anything is sent: bad paths, empty data (create empty files with
        ``run``) and more than 100,000,000 bytes.
        """
        path = _checked(path)
        source = _Source(data)
        if source.size == 0:
            message = "write_file: empty data cannot be sent through sync; create empty files with run"
            raise ArkerError("bad_request", message, 0)
        if source.size > CLIENT_MAX_FILE_BYTES:
            message = f"write_file: {source.size} bytes is over the {CLIENT_MAX_FILE_BYTES} byte limit"
            raise ArkerError("payload_too_large", message, 0)
        if source.size <= CHUNK_SIZE:
            await self._write_inline(path, await source.read_all())
        else:
            await self._write_presigned(path, source)

    async def write_files(self, entries: Iterable[tuple[str, WriteData]] | Mapping[str, WriteData],
                          *, parallel: int = 4) -> None:
        """Write many files in few round trips: ``entries`` are ``(path, data)`` pairs (or a
        path → data mapping), ``data`` as for ``write_file``.

        Files of at most 4 MiB are packed several per request; larger ones are uploaded
        presigned, ``parallel`` at once. Every file is attempted; if any did not land, raises
        ``WriteFilesError`` whose ``failed`` maps each such path to its ``ArkerError`` and whose
        ``written`` lists the paths that landed. A path given twice is a ``ValueError`` (nothing
        is sent).
        """
        from arkerfs.client.batchwrite import BatchWriter  # it builds on this module

        await BatchWriter(self, self._transport, self._route, parallel).write(entries)

    async def _write_inline(self, path: str, data: bytes) -> None:
        entry = {
            "path": path,
            "size": len(data),
            "upload_id": new_ulid(),  # reused verbatim by every retry of this body
            "start": 0,
            "end": len(data),
            "content": base64.b64encode(data).decode("ascii"),
        }
        _require_written(path, await self._send_entry(entry))

    async def _write_presigned(self, path: str, source: _Source) -> None:
        for round_no in range(1, PRESIGN_ROUNDS + 1):
            last_round = round_no == PRESIGN_ROUNDS
            grant = await self._send_entry({"path": path, "size": source.size, "presigned": True})
            url, upload_id = grant.get("presigned_url"), grant.get("upload_id")
            if not isinstance(url, str) or not url or not isinstance(upload_id, str) or not upload_id:
                raise ArkerError("internal", f"presign response for {path} lacks presigned_url or upload_id", 200)
            try:
                await self._transport.blob_put(url, source.body, source.size)
            except ArkerError as exc:
                if exc.status != 403 or last_round:
                    raise
                log.info("upload URL for %s refused (403); requesting a new one", path)
                continue
            try:
                result = await self._send_entry({"path": path, "size": source.size, "upload_id": upload_id})
            except ArkerError as exc:
                # not_found: the server lost the upload (e.g. it restarted between PUT and
                # commit); like an expired one, the whole round is safe to start over.
                if exc.code not in ("expired", "not_found") or last_round:
                    raise
                log.info("upload of %s %s before commit; starting over", path,
                         "expired" if exc.code == "expired" else "was lost by the server")
                continue
            _require_committed(path, result)
            return

    async def _send_entry(self, entry: dict) -> dict:
        """Send one write entry and return its result; transient per-entry errors resend the
        identical entry (PROTOCOL.md §6.1 outer loop). Errors of the request itself were
        already retried by the transport and pass through."""
        body = {"op": "write", "writes": [entry]}
        policy = self._transport.retry

        async def send(tries: int) -> dict:
            r = await self._transport.request("POST", self._route, body=body, replay_safe=True)
            results = r.get("results")
            if not isinstance(results, list) or len(results) != 1 or not isinstance(results[0], dict):
                count = len(results) if isinstance(results, list) else "no"
                raise ArkerError("internal", f"write response has {count} results for 1 entry", 200)
            wire = results[0].get("error")
            if not wire:
                return results[0]
            raise AttemptFailed(error_from_wire(wire, 200), hint_seconds(wire))

        def classify(failure: AttemptFailed) -> Retry | None:
            error = failure.error
            return Retry(failure.hint) if is_transient(None, error.code, error.message) else None

        def on_retry(failure: AttemptFailed, delay: float, number: int) -> None:
            log.info("write of %s: retrying entry in %.2f s (attempt %d of %d): %s",
                     entry["path"], delay, number, policy.attempts, failure.error)

        try:
            return await retrying(policy, send, catch=AttemptFailed, classify=classify, on_retry=on_retry)
        except AttemptFailed as failure:
            raise failure.error from None


def _require_written(path: str, result: dict) -> None:
    if not (result.get("complete") and result.get("written")):
        raise ArkerError("internal", f"write of {path} returned without complete and written", 200)


def _require_committed(path: str, result: dict) -> None:
    # Core clients check only ``error`` on a commit (§4.5.5) and a service may leave the flags
    # out; a flag that is present and false is still the server saying it did not write.
    if result.get("complete") is False or result.get("written") is False:
        raise ArkerError("internal", f"commit of {path} returned complete={result.get('complete')} "
                         f"written={result.get('written')}", 200)
