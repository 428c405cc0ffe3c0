"""``Arker`` (the account: list, resolve, VM handles) and ``VM`` (fork, run, delete, sync).

Host routing follows PROTOCOL.md §1.1 and the seed SDK: ``list`` and fork-by-name go to the
list host, everything else to the regional base. On the Arker cloud the list host is always
``https://arker.ai``, whatever the region; a self-hosted base URL serves listing itself.
"""

from __future__ import annotations

import os
from urllib.parse import quote, urlsplit

import httpx

from arkerfs.client.errors import ArkerError
from arkerfs.client.models import RunResult, VmList, VmSummary
from arkerfs.client.retry import RetryPolicy
from arkerfs.client.sync import Sync
from arkerfs.client.transport import Secret, Transport
from arkerfs.protocol import API_PREFIX, DEFAULT_BASE_URL, DEFAULT_LIST_BASE_URL, SOURCE_ALIASES, looks_like_vm_id

DEFAULT_TIMEOUT = 120.0  # API read timeout (§1.3); a run with a timeout waits timeout + RUN_MARGIN
RUN_MARGIN = 30.0
# A run without a timeout is held open by the server until it ends or the server's own bound
# (core ~120 s, later API 300 s, the local server's ceiling 600 s): wait at least that long.
RUN_WAIT = 600.0
DEFAULT_LIST_LIMIT = 25
RESOLVE_PAGE = 100  # the largest page the list route accepts


def is_arker_cloud(url: str) -> bool:
    """True for ``arker.ai`` and every ``*.arker.ai`` host (the regions): listing lives on arker.ai."""
    host = (urlsplit(url).hostname or "").lower()
    return host == "arker.ai" or host.endswith(".arker.ai")


def _clean_url(url: str, origin: str) -> str:
    url = url.rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"{origin} must be an http:// or https:// URL, got {url!r}")
    return url


class Arker:
    """An Arker account. Use as ``async with Arker() as arker:`` or call ``aclose()``.

    Settings fall back to the environment: ``ARKER_API_KEY``; ``ARKER_BASE_URL`` (default
    the public regional host). Listing and name lookup go to ``list_base_url``, else
    ``ARKER_LIST_BASE_URL``, else ``https://arker.ai`` when the base is an Arker cloud host
    (``*.arker.ai``, any region), else the base URL itself (a self-hosted or local server).
    ``timeout`` is the API read timeout in seconds; a ``run`` waits longer (see ``VM.run``).
    ``http_transport`` replaces httpx's network transport (proxies, tests).
    """

    def __init__(
        self,
        api_key: str | None = None,
        *,
        base_url: str | None = None,
        list_base_url: str | None = None,
        retry: RetryPolicy = RetryPolicy(),
        timeout: float = DEFAULT_TIMEOUT,
        http_transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        key = (api_key or os.environ.get("ARKER_API_KEY") or "").strip()
        if not key:
            raise ArkerError("unauthorized", "no API key: pass api_key= or set the ARKER_API_KEY environment variable", 0)
        base = _clean_url(base_url or os.environ.get("ARKER_BASE_URL") or DEFAULT_BASE_URL, "base_url")
        list_base = _clean_url(
            list_base_url or os.environ.get("ARKER_LIST_BASE_URL")
            or (DEFAULT_LIST_BASE_URL if is_arker_cloud(base) else base),
            "list_base_url",
        )
        self._transport = Transport(Secret(key), base, list_base, retry, timeout, http_transport)

    @property
    def base_url(self) -> str:
        return self._transport.base_url

    @property
    def list_base_url(self) -> str:
        return self._transport.list_base_url

    @property
    def retry(self) -> RetryPolicy:
        """The retry policy of every later call; assignable (e.g. to enable outage mode)."""
        return self._transport.retry

    @retry.setter
    def retry(self, policy: RetryPolicy) -> None:
        self._transport.retry = policy

    def observe(self, observer) -> None:
        """Call ``observer(kind, seconds, ok, bytes_sent, bytes_received)`` after every HTTP
        attempt (retries included); ``kind`` is the route: run, sync_read, sync_write,
        presigned_get, presigned_put, list, fork, delete. None stops observing."""
        self._transport.observer = observer

    def __repr__(self) -> str:
        return f"Arker(base_url={self.base_url!r}, list_base_url={self.list_base_url!r})"

    async def __aenter__(self) -> Arker:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._transport.aclose()

    def vm(self, vm_id: str) -> VM:
        """A handle to ``vm_id``; no network call. Aliases like ``arkuntu`` only work for fork."""
        return VM(self._transport, vm_id)

    async def list(
        self, limit: int | None = None, offset: int | None = None, q: str | None = None, sort: str | None = None
    ) -> VmList:
        """One page of the caller's VMs. ``q`` filters by name substring; ``sort`` is one of
        ``created_at``, ``-created_at`` (default), ``region``, ``-region``."""
        params = {}
        if limit is not None and limit != DEFAULT_LIST_LIMIT:
            params["limit"] = str(limit)
        if offset is not None and offset != 0:
            params["offset"] = str(offset)
        if q is not None:
            params["q"] = q
        if sort is not None:
            params["sort"] = sort
        r = await self._transport.request("GET", f"{API_PREFIX}/vms/list", params=params, list_host=True, replay_safe=True)
        items = r.get("items", [])
        if not isinstance(items, list):
            raise ArkerError("internal", "list response: items is not an array", 200)
        total = r.get("total", 0)
        return VmList(items=[VmSummary.from_wire(item) for item in items], total=total if isinstance(total, int) else 0)

    async def resolve(self, name_or_id: str) -> VM:
        """A handle by id (no call) or by exact VM name (``list?q=``, every page as needed).

        Raises ``not_found`` when no VM has that name and ``bad_request`` when several do.
        """
        if looks_like_vm_id(name_or_id):
            return self.vm(name_or_id)
        matches: list[VmSummary] = []
        offset = 0
        while True:
            # Oldest first, so VMs created while paging land on later pages, not shift them.
            page = await self.list(limit=RESOLVE_PAGE, offset=offset, q=name_or_id, sort="created_at")
            matches += [item for item in page.items if item.name == name_or_id]
            offset += len(page.items)
            if not page.items or offset >= page.total:
                break
        if not matches:
            raise ArkerError("not_found", f"no VM is named {name_or_id!r}", 0)
        if len(matches) > 1:
            ids = ", ".join(m.vm_id for m in matches)
            raise ArkerError("bad_request", f"{len(matches)} VMs are named {name_or_id!r} ({ids}); use an id", 0)
        return self.vm(matches[0].vm_id)


class VM:
    """A VM handle. ``id`` is sent exactly as given; ``sync`` reads and writes files."""

    def __init__(self, transport: Transport, vm_id: str) -> None:
        self._transport = transport
        self.id = vm_id
        self.sync = Sync(transport, vm_id)
        self._path = f"{API_PREFIX}/vms/{quote(vm_id, safe='')}"

    def __repr__(self) -> str:
        return f"VM({self.id!r})"

    async def fork(self, name: str | None = None, is_public: bool = False, region: str | None = None) -> VM:
        """Copy this VM (or a template alias such as ``arkuntu``) into a new one.

        Never retried after an ambiguous failure: a replay could create a second VM.
        """
        body: dict = {"is_public": is_public}
        if name is not None:
            body["name"] = name
        if region is not None:
            body["region"] = region
        source = SOURCE_ALIASES.get(self.id, self.id)
        if looks_like_vm_id(source):
            path, list_host = f"{API_PREFIX}/vms/{quote(source, safe='')}/fork", False
        else:
            body["from"] = self.id
            path, list_host = f"{API_PREFIX}/vms/fork", True
        r = await self._transport.request("POST", path, body=body, list_host=list_host, replay_safe=False)
        vm_id = r.get("vm_id")
        if not isinstance(vm_id, str) or not vm_id:
            raise ArkerError("internal", "fork response has no vm_id", 200)
        return VM(self._transport, vm_id)

    async def run(self, command: str, session_id: int | str = 0, timeout: float | None = None) -> RunResult:
        """Run ``command`` in the session's persistent shell and wait for it to finish.

        A non-zero exit is a result, not an error. ``timeout`` (seconds) is the server-side
        kill bound; the client waits ``timeout`` + 30 s for the answer, or without a timeout
        as long as a server may hold a run open (630 s, or the client's ``timeout`` if longer).
        Retried only when the server provably never started the command.
        """
        body: dict = {"command": command, "session_id": session_id}
        if timeout is not None:
            body["timeout"] = timeout
        wait = timeout + RUN_MARGIN if timeout else max(self._transport.read_timeout, RUN_WAIT + RUN_MARGIN)
        r = await self._transport.request("POST", f"{self._path}/run", body=body, replay_safe=False, read_timeout=wait)
        return RunResult.from_wire(r)

    async def delete(self) -> None:
        """Delete the VM. A 404 on a retried attempt means an earlier attempt succeeded."""
        await self._transport.request("DELETE", self._path, replay_safe=True, missing_ok_on_retry=True)
