"""RemoteFile reads one version of a file, first byte to last, or raises ``object_changed``.

Against the local server (which serves each read URL's own version, or 412), and against a
tiny listener standing for an object store that keeps no snapshot, to pin the client's own
checks: the ETag of every answer, the Content-Range total, Last-Modified when there is no ETag.
"""

from __future__ import annotations

import os

import pytest

from arkerfs.client import ArkerError, RemoteFile
from test_client_wire import FAST, KEY, Arker, serve  # noqa: F401  (serve is a fixture)

MB = 1024 * 1024
OLD, NEW = os.urandom(3 * MB), os.urandom(3 * MB)  # above the test server's 64 KiB inline limit
PATH = "/home/user/data.bin"


async def test_a_handle_reads_the_old_version_across_a_replacement(vm):
    await vm.sync.write_file(PATH, OLD)
    f = await vm.sync.open_read(PATH)
    assert not f.inline
    assert await f.read_range(0, MB) == OLD[:MB]
    await vm.sync.write_file(PATH, NEW)  # replaced while the handle is open
    assert await f.read_range(MB, 3 * MB) == OLD[MB:]
    assert await f.read_all() == OLD
    assert await (await vm.sync.open_read(PATH)).read_range(0, 10) == NEW[:10]


async def test_a_file_changed_in_place_raises_object_changed(vm):
    await vm.sync.write_file(PATH, OLD)
    f = await vm.sync.open_read(PATH)
    assert await f.read_range(0, 10) == OLD[:10]
    result = await vm.run(f"printf XYZ | dd of={PATH} bs=1 seek=2000000 conv=notrunc status=none")
    assert result.exit_code == 0, result.stderr
    with pytest.raises(ArkerError) as info:
        await f.read_range(MB, 2 * MB)
    assert info.value.code == "object_changed" and PATH in info.value.message


async def test_a_renewed_url_continues_only_the_same_version(vm):
    await vm.sync.write_file(PATH, OLD)
    first = await vm.sync.open_read(PATH)
    assert await first.read_range(0, 10) == OLD[:10]
    same = await vm.sync.open_read(PATH)
    same.continues(first)
    assert await same.read_range(MB, 10) == OLD[MB:MB + 10]
    await vm.sync.write_file(PATH, NEW)  # same size, another version
    fresh = await vm.sync.open_read(PATH)
    fresh.continues(first)
    with pytest.raises(ArkerError) as info:
        await fresh.read_range(MB, 10)
    assert info.value.code == "object_changed"
    await vm.sync.write_file(PATH, NEW + b"!")
    grown = await vm.sync.open_read(PATH)
    with pytest.raises(ArkerError) as info:
        grown.continues(first)
    assert info.value.code == "object_changed"


def _store(versions: list[tuple[dict, bytes]]):
    """An object store without snapshots: request ``i`` is answered from ``versions[i]``."""

    def respond(i, method, target):
        headers, body = versions[min(i, len(versions) - 1)]
        total = headers.get("total", len(body))
        validators = {k: v for k, v in headers.items() if k != "total"}
        return 206, {"content-range": f"bytes 0-{len(body) - 1}/{total}", **validators}, body

    return respond


@pytest.mark.parametrize("first, second", [
    ({"etag": '"v1"'}, {"etag": '"v2"'}),  # ETag changed
    ({"last-modified": "Mon, 02 Nov 2026 10:00:00 GMT"}, {"last-modified": "Mon, 02 Nov 2026 10:00:05 GMT"}),  # no ETag
    ({}, {"total": 99}),  # no validator at all: the object's size still tells
])
async def test_an_answer_from_another_version_raises(serve, first, second):
    store = await serve(_store([(first, b"0123456789"), (second, b"0123456789")]))
    async with Arker(KEY, base_url=store.url, retry=FAST) as arker:
        f = RemoteFile(arker._transport, path=PATH, size=10, url=f"{store.url}/blob")
        assert await f.read_range(0, 10) == b"0123456789"
        with pytest.raises(ArkerError) as info:
            await f.read_range(0, 10)
    assert info.value.code == "object_changed"


async def test_the_same_version_reads_on_and_412_is_object_changed(serve):
    tag = {"etag": '"v1"', "last-modified": "Mon, 02 Nov 2026 10:00:00 GMT"}
    store = await serve(lambda i, method, target: (
        (206, {"content-range": "bytes 0-9/10", **tag}, b"0123456789") if i < 2 else (412, {}, "")))
    async with Arker(KEY, base_url=store.url, retry=FAST) as arker:
        f = RemoteFile(arker._transport, path=PATH, size=10, url=f"{store.url}/blob")
        assert await f.read_range(0, 10) == b"0123456789"
        assert await f.read_range(0, 10) == b"0123456789"
        with pytest.raises(ArkerError) as info:
            await f.read_range(0, 10)
    assert (info.value.code, info.value.status) == ("object_changed", 412)
