"""HTTP for the SDK: the only module that touches httpx.

Two clients (PROTOCOL.md §10.16): one for the API, carrying the Bearer key, and one with no
credentials at all for presigned blob URLs, so the key can never reach a blob store, not
even through a redirect. This module owns the retry decisions (§6.4): it classifies every failure
(envelope error, bare HTTP status, transport error) and has ``retry.retrying`` replay a
request only when that is safe for it.
"""

from __future__ import annotations

import json
import logging
import platform
import time
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar
from urllib.parse import urlsplit

import httpx

from arkerfs import __version__
from arkerfs.client.errors import ArkerError, error_from_wire
from arkerfs.client.retry import (
    BUSY_CODES,
    TRANSIENT_STATUSES,
    Retry,
    RetryPolicy,
    hint_seconds,
    is_transient,
    retrying,
)

log = logging.getLogger("arkerfs.client")

T = TypeVar("T")

CONNECT_TIMEOUT = 10.0
WRITE_TIMEOUT = 60.0
POOL_TIMEOUT = 30.0
GET_TIMEOUT = httpx.Timeout(CONNECT_TIMEOUT, read=300.0, write=WRITE_TIMEOUT, pool=POOL_TIMEOUT)
PUT_TIMEOUT = httpx.Timeout(CONNECT_TIMEOUT, read=600.0, write=600.0, pool=POOL_TIMEOUT)
# The largest API response body read: a run's two 8 MiB outputs as base64, with room to spare.
# A server sending more (or an endless body) is broken or hostile; it must not exhaust memory.
MAX_API_RESPONSE = 64 * 1024 * 1024
# Transport errors that prove the request never left this process, so replay is always safe.
NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)

BlobContent = bytes | AsyncIterable[bytes]
# observer(kind, seconds, ok, bytes_sent, bytes_received): one call per HTTP attempt, for a
# client that reports on itself (the mount's ``arkerfs status``). Kinds are the local server's
# route names, so the two can be compared.
Observer = Callable[[str, float, bool, int, int], None]


def call_kind(method: str, path: str, body: dict | None) -> str:
    """The route name of an API request: run, sync_read, sync_write, list, fork, delete."""
    if method == "DELETE":
        return "delete"
    tail = path.rsplit("/", 1)[-1]
    if tail == "sync":
        return "sync_" + str((body or {}).get("op", "unknown"))
    return tail if tail in ("run", "list", "fork") else "other"

# Sent on every request (API and presigned), so a service's logs can tell this client apart.
USER_AGENT = f"arkerfs/{__version__} (python {platform.python_version()}; httpx {httpx.__version__})"


class Secret:
    """Holds the API key; its repr/str are masked so it cannot leak into logs or tracebacks."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __reduce__(self):
        raise TypeError("an API key is not picklable")


class _BearerAuth(httpx.Auth):
    """Adds the key per request, so it never sits in a plain dict of default headers."""

    def __init__(self, key: Secret) -> None:
        self._key = key

    def auth_flow(self, request: httpx.Request):
        request.headers["authorization"] = "Bearer " + self._key.reveal()
        yield request


@dataclass(eq=False)  # exceptions must stay hashable
class _Failure(Exception):
    """One failed attempt, with what the retry loop needs to decide about the next one."""

    error: ArkerError
    transient: bool
    never_started: bool  # provably not executed: safe to replay even a run or a fork
    hint: float | None = None
    unreachable: bool = False  # no connection was made (outage mode may wait for the server)

    def __post_init__(self) -> None:
        self.error.never_started = self.never_started


def host_of(url: str) -> str:
    """``host[:port]`` of a URL: names the peer in messages without paths, tokens or userinfo."""
    parts = urlsplit(url)
    return f"{parts.hostname}:{parts.port}" if parts.port else str(parts.hostname)


def _describe(exc: Exception) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _request_failure(exc: httpx.RequestError, what: str, host: str) -> _Failure:
    """Classify an httpx exception: transport errors are transient, the rest (too many
    redirects, an undecodable body) are final."""
    if not isinstance(exc, httpx.TransportError):
        error = ArkerError("internal", f"{what}: {_describe(exc)} from {host}", 0)
        return _Failure(error, transient=False, never_started=False)
    if isinstance(exc, NOT_SENT):
        message = f"{what}: cannot connect to {host} ({_describe(exc)})"
        return _Failure(ArkerError("unavailable", message, 0), transient=True, never_started=True, unreachable=True)
    message = f"{what}: {_describe(exc)} from {host} after the request was sent; the outcome is unknown"
    return _Failure(ArkerError("unavailable", message, 0, outcome_unknown=True), transient=True, never_started=False)


def _header_hint(response: httpx.Response) -> float | None:
    try:
        return float(response.headers["retry-after"])
    except (KeyError, ValueError):
        return None  # absent, or an HTTP-date, which we do not honour


def _envelope_error(payload: object) -> object | None:
    """The error object of an error envelope in either accepted shape (§3.2), else None."""
    if not isinstance(payload, dict) or not isinstance(payload.get("error"), dict):
        return None
    if payload.get("ok") is False or set(payload) == {"error"}:
        return payload["error"]
    return None


async def _read_capped(response: httpx.Response, what: str, host: str) -> bytes:
    """The body of a streamed API response, refusing more than MAX_API_RESPONSE bytes."""
    declared = response.headers.get("content-length", "")
    parts: list[bytes] = []
    total = int(declared) if declared.isdigit() else 0
    if total <= MAX_API_RESPONSE:
        total = 0
        async for chunk in response.aiter_bytes():
            total += len(chunk)
            if total > MAX_API_RESPONSE:
                break
            parts.append(chunk)
    if total > MAX_API_RESPONSE:
        error = ArkerError("internal", f"{what}: the response from {host} is larger than {MAX_API_RESPONSE} bytes",
                           response.status_code)
        raise _Failure(error, transient=False, never_started=False)
    return b"".join(parts)


def _status_failure(response: httpx.Response, payload: object, raw: bytes = b"") -> _Failure | None:
    """The failure an API response represents, or None if it is a success."""
    status = response.status_code
    wire = _envelope_error(payload)
    if wire is None and 200 <= status < 300:
        return None
    if wire is None:
        body = raw.decode(response.encoding or "utf-8", errors="replace")[:200]
        error = ArkerError("internal", body or f"unexpected HTTP status {status}", status,
                           retry_after=_header_hint(response))
        return _Failure(error, is_transient(status, None), status == 429, _header_hint(response))
    error = error_from_wire(wire, status)
    recovery = wire.get("recovery")
    not_started = isinstance(recovery, dict) and recovery.get("work") == "not_started"
    hint = hint_seconds(wire)
    if error.retry_after is None:
        error.retry_after = _header_hint(response)
    return _Failure(
        error,
        transient=is_transient(status, error.code, error.message),
        never_started=not_started or status == 429 or error.code in BUSY_CODES,
        hint=_header_hint(response) if hint is None else hint,
    )


class Transport:
    """The API client, the blob client and the retry loop shared by every SDK call."""

    def __init__(
        self,
        key: Secret,
        base_url: str,
        list_base_url: str,
        retry: RetryPolicy,
        read_timeout: float,
        http_transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.base_url = base_url
        self.list_base_url = list_base_url
        self.retry = retry
        self.observer: Observer | None = None
        self.read_timeout = read_timeout
        self._api_timeout = httpx.Timeout(CONNECT_TIMEOUT, read=read_timeout, write=WRITE_TIMEOUT, pool=POOL_TIMEOUT)
        self._api = httpx.AsyncClient(
            auth=_BearerAuth(key),
            headers={"content-type": "application/json", "user-agent": USER_AGENT},
            timeout=self._api_timeout,
            follow_redirects=False,
            transport=http_transport,
        )
        # No auth, nothing secret in the headers: nothing in this client can reveal the key.
        # Following redirects on GET is therefore harmless, and object stores do redirect across regions.
        self._blob = httpx.AsyncClient(
            headers={"user-agent": USER_AGENT}, timeout=GET_TIMEOUT, follow_redirects=True, transport=http_transport
        )

    async def aclose(self) -> None:
        try:
            await self._api.aclose()
        finally:
            await self._blob.aclose()

    async def request(
        self,
        method: str,
        path: str,
        *,
        body: dict | None = None,
        params: dict[str, str] | None = None,
        list_host: bool = False,
        replay_safe: bool,
        read_timeout: float | None = None,
        missing_ok_on_retry: bool = False,
    ) -> dict:
        """One API call with retries; returns the success body (``{}`` for an empty one).

        ``replay_safe`` says whether the request may be repeated after an ambiguous failure
        (§6.3). ``missing_ok_on_retry`` turns a 404 ``not_found`` on a retry into success:
        the earlier attempt already did the work (delete).
        """
        url = (self.list_base_url if list_host else self.base_url) + path
        host = host_of(url)
        what = f"{method} {path}"
        # Serialized once so every retry sends the identical bytes (same upload_id and all).
        content = None if body is None else json.dumps(body, separators=(",", ":")).encode()
        timeout = self._api_timeout if read_timeout is None else httpx.Timeout(
            CONNECT_TIMEOUT, read=read_timeout, write=WRITE_TIMEOUT, pool=POOL_TIMEOUT
        )

        kind = call_kind(method, path, body)

        async def once(attempt: int) -> dict:
            started = time.monotonic()
            try:
                request = self._api.build_request(method, url, content=content, params=params, timeout=timeout)
                response = await self._api.send(request, stream=True)
                try:
                    raw = await _read_capped(response, what, host)
                finally:
                    await response.aclose()
            except httpx.RequestError as exc:
                self._observe(kind, started, False, len(content or b""), 0)
                raise _request_failure(exc, what, host) from exc
            self._observe(kind, started, response.status_code < 400, len(content or b""), len(raw))
            log.debug("%s %s -> %d, %d bytes sent, %d received in %.0f ms", what, host, response.status_code,
                      len(content or b""), len(raw), (time.monotonic() - started) * 1000)
            try:
                payload = json.loads(raw) if raw else {}
            except (ValueError, RecursionError):  # RecursionError: absurdly deep nesting
                payload = None
            failure = _status_failure(response, payload, raw)
            if failure is not None:
                if missing_ok_on_retry and attempt > 0 and failure.error.code == "not_found" and failure.error.status == 404:
                    log.info("%s: 404 on a retry; an earlier attempt already succeeded", what)
                    return {}
                raise failure
            if not isinstance(payload, dict):
                raise ArkerError("internal", f"{what}: response from {host} is not a JSON object", response.status_code)
            return payload

        return await self._with_retries(what, replay_safe, once)

    async def blob_get(
        self,
        url: str,
        consume: Callable[[int, AsyncIterator[bytes], httpx.Headers], Awaitable[T]],
        *,
        byte_range: tuple[int, int] | None = None,
    ) -> T:
        """Unauthenticated GET of a presigned URL; ``consume(status, chunks, headers)`` reads the body.

        ``byte_range`` is ``(start, end)``, end exclusive. ``consume`` runs once per attempt
        (a dropped connection mid-body is retried), so it must start over when called again.
        """
        host = host_of(url)
        what = f"presigned GET to {host}"
        headers = None if byte_range is None else {"range": f"bytes={byte_range[0]}-{byte_range[1] - 1}"}

        async def once(attempt: int) -> T:
            started, ok, received = time.monotonic(), False, 0
            try:
                async with self._blob.stream("GET", url, headers=headers, timeout=GET_TIMEOUT) as response:
                    status = response.status_code
                    log.debug("%s -> %d", what, status)
                    if not 200 <= status < 300:
                        error = ArkerError("internal", f"signed GET failed: {status}", status)
                        raise _Failure(error, status in TRANSIENT_STATUSES, False, _header_hint(response))
                    result = await consume(status, response.aiter_bytes(), response.headers)
                    ok, received = True, response.num_bytes_downloaded
                    return result
            except httpx.RequestError as exc:
                raise _request_failure(exc, what, host) from exc
            finally:
                self._observe("presigned_get", started, ok, 0, received)

        return await self._with_retries(what, True, once)

    async def blob_put(self, url: str, content: Callable[[], BlobContent], size: int) -> None:
        """Unauthenticated PUT of a whole file to a presigned URL, with retries.

        ``content()`` is called once per attempt: a streamed body can be consumed only once.
        Content-Length is always sent (object stores refuse chunked uploads).
        """
        host = host_of(url)
        what = f"presigned PUT to {host}"
        headers = {"content-length": str(size)}

        async def once(attempt: int) -> None:
            started = time.monotonic()
            try:
                # No redirects here: a streamed body cannot be replayed to a new location.
                response = await self._blob.put(
                    url, content=content(), headers=headers, timeout=PUT_TIMEOUT, follow_redirects=False
                )
            except httpx.RequestError as exc:
                self._observe("presigned_put", started, False, 0, 0)
                raise _request_failure(exc, what, host) from exc
            status = response.status_code
            self._observe("presigned_put", started, 200 <= status < 300, size, 0)
            log.debug("%s -> %d, %d bytes sent in %.0f ms", what, status, size, (time.monotonic() - started) * 1000)
            if not 200 <= status < 300:
                error = ArkerError("internal", f"upload PUT failed: {status}", status)
                raise _Failure(error, status in TRANSIENT_STATUSES, False, _header_hint(response))

        await self._with_retries(what, True, once)

    def _observe(self, kind: str, started: float, ok: bool, sent: int, received: int) -> None:
        if self.observer is not None:
            self.observer(kind, time.monotonic() - started, ok, sent, received)

    async def _with_retries(self, what: str, replay_safe: bool, once: Callable[[int], Awaitable[T]]) -> T:
        policy = self.retry
        outage = _Outage(what, policy)

        def classify(failure: _Failure) -> Retry | None:
            if failure.unreachable and policy.outage_deadline is not None:
                # Outage mode (RetryPolicy): never sent, so safe for any request; wait for the
                # server with capped backoff until the deadline, without using attempts.
                wait = outage.next_wait(failure)
                return None if wait is None else Retry.uncounted(wait)
            outage.end()
            if failure.transient and (replay_safe or failure.never_started):
                return Retry(failure.hint)
            return None

        def on_retry(failure: _Failure, delay: float, number: int) -> None:
            log.info("%s: retrying in %.2f s (attempt %d of %d): %s", what, delay, number, policy.attempts,
                     failure.error)

        def on_give_up(failure: _Failure) -> None:
            log.log(policy.log_level, "%s: giving up after %d attempts: %s", what, policy.attempts, failure.error)

        try:
            result = await retrying(policy, once, catch=_Failure, classify=classify, on_retry=on_retry,
                                    on_give_up=on_give_up)
        except _Failure as failure:
            raise failure.error from failure.__cause__
        outage.end()
        return result


class _Outage:
    """One request's current run of consecutive connect failures, in outage mode (RetryPolicy)."""

    def __init__(self, what: str, policy: RetryPolicy) -> None:
        self.what = what
        self.policy = policy
        self.since: float | None = None  # the first failure of the run
        self.retries = 0

    def next_wait(self, failure: _Failure) -> float | None:
        """Seconds to wait before trying again, or None once the outage deadline has passed."""
        deadline = self.policy.outage_deadline
        assert deadline is not None
        now = time.monotonic()
        if self.since is None:
            self.since, self.retries = now, 0
            log.log(self.policy.log_level, "%s: server unreachable; retrying for up to %.0f s: %s",
                    self.what, deadline, failure.error)
        remaining = self.since + deadline - now
        if remaining <= 0:
            log.log(self.policy.log_level, "%s: giving up after %.1f s of outage: %s",
                    self.what, now - self.since, failure.error)
            return None
        delay = min(self.policy.delay(self.retries), remaining)
        self.retries += 1
        log.debug("%s: still unreachable; next try in %.2f s", self.what, delay)
        return delay

    def end(self) -> None:
        """The server answered (or the request succeeded): the run of connect failures is over."""
        if self.since is not None:
            log.info("%s: server reachable again after %.1f s", self.what, time.monotonic() - self.since)
            self.since = None
