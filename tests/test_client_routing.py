"""Which host each SDK call goes to (seed SDK README "Routing", PROTOCOL.md §1.1).

The Arker cloud is unreachable from the tests, so only here an ``httpx.MockTransport`` stands
in for the network: it records the URL of every request the SDK would send. The self-hosted
case runs end to end against the local server (test_client_anyio).
"""

from __future__ import annotations

import httpx
import pytest

from arkerfs.client import Arker

VM_ID = "01KQBYKEV5WJ7YB010603T1DCT_d8c0"
NAMED_SOURCE = "golden-image"  # not ULID-shaped: fork by name


async def sent_urls(monkeypatch, env: dict[str, str], **kwargs) -> list[str]:
    """The URLs of list, fork by name, fork by id, run, sync and delete, in that order."""
    for var in ("ARKER_BASE_URL", "ARKER_LIST_BASE_URL"):
        monkeypatch.delenv(var, raising=False)
    for var, value in env.items():
        monkeypatch.setenv(var, value)
    urls: list[str] = []

    def answer(request: httpx.Request) -> httpx.Response:
        urls.append(str(request.url.copy_with(query=None)))
        body = {"ok": True, "items": [], "total": 0, "vm_id": VM_ID, "exit_code": 0, "content": "", "results": []}
        return httpx.Response(200, json=body)

    async with Arker("ark_k", http_transport=httpx.MockTransport(answer), **kwargs) as arker:
        await arker.list()
        await arker.vm(NAMED_SOURCE).fork()
        vm = await arker.vm(VM_ID).fork()
        await vm.run("true")
        await vm.sync.read_file("/home/user/f")
        await vm.delete()
    return urls


def expected(list_host: str, base: str) -> list[str]:
    vm = f"{base}/api/v1/vms/{VM_ID}"
    return [f"{list_host}/api/v1/vms/list", f"{list_host}/api/v1/vms/fork",
            f"{vm}/fork", f"{vm}/run", f"{vm}/sync", vm]


@pytest.mark.parametrize("region", ["https://aws-eu-west-1.burst.arker.ai", "https://gcp-europe-west4.arker.ai",
                                    "https://AWS-US-EAST-1.Arker.AI/", "https://arker.ai"])
async def test_any_arker_cloud_region_lists_on_arker_ai(monkeypatch, region):
    base = region.rstrip("/").lower()  # (httpx sends the host in lower case)
    assert await sent_urls(monkeypatch, {}, base_url=region) == expected("https://arker.ai", base)
    assert await sent_urls(monkeypatch, {"ARKER_BASE_URL": region}) == expected("https://arker.ai", base)


async def test_default_region_lists_on_arker_ai(monkeypatch):
    base = "https://aws-us-west-2.burst.arker.ai"
    assert await sent_urls(monkeypatch, {}) == expected("https://arker.ai", base)


async def test_self_hosted_base_lists_on_itself_unless_a_list_host_is_set(monkeypatch):
    own = "https://vms.example.com:8443"
    assert await sent_urls(monkeypatch, {}, base_url=own) == expected(own, own)
    assert await sent_urls(monkeypatch, {"ARKER_BASE_URL": own}) == expected(own, own)
    # A look-alike outside the arker.ai domain is not the Arker cloud.
    assert await sent_urls(monkeypatch, {}, base_url="https://notarker.ai") == expected(
        "https://notarker.ai", "https://notarker.ai")
    region = "https://aws-eu-west-1.burst.arker.ai"
    assert await sent_urls(monkeypatch, {"ARKER_LIST_BASE_URL": own}, base_url=region) == expected(own, region)
    assert await sent_urls(monkeypatch, {"ARKER_LIST_BASE_URL": "https://x.example"},
                           base_url=region, list_base_url=own) == expected(own, region)
