"""SDK file transfer against the real local server (inline read limit 64 KiB in the fixture)."""

from __future__ import annotations

import io
import random

import pytest

from arkerfs.client import ArkerError, RemoteFile
from arkerfs.protocol import CHUNK_SIZE, CLIENT_MAX_FILE_BYTES

MiB = 1024 * 1024


def blob(size: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(size)


async def test_small_write_and_inline_read(vm, control):
    control.reset_stats()
    await vm.sync.write_file("/home/user/small.txt", "héllo\n")  # str is written as UTF-8
    f = await vm.sync.open_read("/home/user/small.txt")
    calls = control.calls()
    assert (calls["sync_write"], calls["sync_read"], control.total_calls()) == (1, 1, 2)
    assert isinstance(f, RemoteFile) and f.inline and not f.expired
    assert (f.path, f.size) == ("/home/user/small.txt", len("héllo\n".encode()))
    control.reset_stats()
    assert await f.read_all() == "héllo\n".encode()
    assert await f.read_range(1, 2) == "é".encode()
    assert await f.read_range(5, 100) == b"o\n"
    assert control.total_calls() == 0  # inline slices never call out


async def test_bytearray_memoryview_and_small_local_file(vm, tmp_path):
    local = tmp_path / "small.bin"
    local.write_bytes(b"from disk")
    await vm.sync.write_file("/home/user/ba.bin", bytearray(b"\x00\x01\x02"))
    await vm.sync.write_file("/home/user/mv.bin", memoryview(b"abcdef")[2:])
    await vm.sync.write_file("/home/user/disk.bin", local)
    assert await vm.sync.read_file("/home/user/ba.bin") == b"\x00\x01\x02"
    assert await vm.sync.read_file("/home/user/mv.bin") == b"cdef"
    assert await vm.sync.read_file("/home/user/disk.bin") == b"from disk"


async def test_exactly_4_mib_goes_inline(vm, control):
    data = blob(CHUNK_SIZE, seed=1)
    control.reset_stats()
    await vm.sync.write_file("/home/user/four.bin", data)
    calls = control.calls()
    assert calls.get("sync_write") == 1 and calls.get("presigned_put", 0) == 0
    assert await vm.sync.read_file("/home/user/four.bin") == data


async def test_4_mib_plus_one_goes_presigned(vm, control):
    data = blob(CHUNK_SIZE + 1, seed=2)
    control.reset_stats()
    await vm.sync.write_file("/home/user/four-plus.bin", data)
    calls = control.calls()
    assert calls.get("sync_write") == 2 and calls.get("presigned_put") == 1
    assert await vm.sync.read_file("/home/user/four-plus.bin") == data


async def test_20_mb_from_a_local_path_round_trips(vm, tmp_path):
    data = blob(20_000_000, seed=3)
    src = tmp_path / "src.bin"
    src.write_bytes(data)
    await vm.sync.write_file("/home/user/big/20mb.bin", src)
    assert await vm.sync.read_file("/home/user/big/20mb.bin") == data

    f = await vm.sync.open_read("/home/user/big/20mb.bin")
    dest = tmp_path / "dest.bin"
    assert await f.download_to(dest) == len(data)
    assert dest.read_bytes() == data


async def test_ranged_reads_on_a_presigned_file(vm, control):
    data = blob(300_000, seed=4)
    await vm.sync.write_file("/home/user/ranged.bin", data)
    f = await vm.sync.open_read("/home/user/ranged.bin")
    assert not f.inline and not f.expired and f.size == len(data)

    control.reset_stats()
    assert await f.read_range(1000, 5000) == data[1000:6000]
    assert control.calls().get("presigned_get") == 1
    assert control.stats()["bytes_out"] < 50_000  # the store sent the range, not the file
    assert await f.read_range(len(data) - 10, 100) == data[-10:]  # clipped at EOF
    assert control.calls().get("presigned_get") == 2

    control.reset_stats()
    assert await f.read_range(len(data), 10) == b""  # at EOF: nothing to fetch
    assert await f.read_range(len(data) + 50, 10) == b""
    assert await f.read_range(0, 0) == b""
    assert control.total_calls() == 0
    with pytest.raises(ValueError):
        await f.read_range(-1, 10)


async def test_download_to_a_binary_file_object(vm):
    data = blob(200_000, seed=5)
    await vm.sync.write_file("/home/user/dl.bin", data)
    out = io.BytesIO(b"keep:")
    out.seek(0, io.SEEK_END)
    assert await (await vm.sync.open_read("/home/user/dl.bin")).download_to(out) == len(data)
    assert out.getvalue() == b"keep:" + data


async def test_refuses_over_100_mb_without_any_call(vm, control, tmp_path):
    huge = tmp_path / "huge.bin"
    with open(huge, "wb") as f:
        f.truncate(CLIENT_MAX_FILE_BYTES + 1)  # sparse: costs no disk
    control.reset_stats()
    with pytest.raises(ArkerError) as info:
        await vm.sync.write_file("/home/user/huge.bin", huge)
    assert (info.value.code, info.value.status) == ("payload_too_large", 0)
    assert control.total_calls() == 0


async def test_refuses_empty_data_without_any_call(vm, control):
    control.reset_stats()
    for empty in (b"", "", bytearray()):
        with pytest.raises(ArkerError) as info:
            await vm.sync.write_file("/home/user/empty.txt", empty)
        assert (info.value.code, info.value.status) == ("bad_request", 0)
    assert control.total_calls() == 0


@pytest.mark.parametrize(
    "path", ["/etc/passwd", "/home/user", "/home/user/", "/home/user/../x", "/home/user/a//b",
             "/home/user/a/", "home/user/x", "/home/user/./x", "/home/user/nul\x00"]
)
async def test_path_rule_violations_are_refused_locally(vm, control, path):
    control.reset_stats()
    with pytest.raises(ArkerError) as read_info:
        await vm.sync.read_file(path)
    with pytest.raises(ArkerError) as write_info:
        await vm.sync.write_file(path, b"x")
    for info in (read_info, write_info):
        assert (info.value.code, info.value.status) == ("bad_request", 0)
        assert "path" in info.value.message
    assert control.total_calls() == 0


async def test_missing_file_and_directory_errors(vm):
    with pytest.raises(ArkerError) as info:
        await vm.sync.read_file("/home/user/missing.txt")
    assert (info.value.code, info.value.status) == ("not_found", 404)
    assert "/home/user/missing.txt" in info.value.message
    assert str(info.value).startswith("not_found: ")

    await vm.run("mkdir -p /home/user/adir")
    with pytest.raises(ArkerError) as info:
        await vm.sync.read_file("/home/user/adir")
    assert (info.value.code, info.value.status) == ("bad_request", 400)


async def test_write_replaces_and_creates_parents(vm):
    await vm.sync.write_file("/home/user/deep/er/f.txt", b"first version, longer")
    await vm.sync.write_file("/home/user/deep/er/f.txt", b"second")
    assert await vm.sync.read_file("/home/user/deep/er/f.txt") == b"second"
    r = await vm.run("cat /home/user/deep/er/f.txt")
    assert r.stdout == b"second"
