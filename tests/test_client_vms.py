"""SDK VM operations against the real local server: list, resolve, fork, delete, run."""

from __future__ import annotations

import socket
import uuid

import pytest
import trio

from arkerfs.client import VM, Arker, ArkerError, RetryPolicy, RunResult, VmList
from arkerfs.protocol import looks_like_vm_id


def closed_port() -> int:
    """A loopback port with nothing listening on it."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
async def vm(arker):
    child = await arker.vm("arkuntu").fork()
    yield child
    await delete_quietly(child)


async def delete_quietly(vm: VM) -> None:
    try:
        await vm.delete()
    except ArkerError as exc:
        if exc.code != "not_found":  # the test deleted it already
            raise


# -- list and resolve -------------------------------------------------------------------------


async def test_list_with_limit_offset_q_sort(arker):
    tag = f"lst-{uuid.uuid4().hex[:8]}"
    made = [await arker.vm("arkuntu").fork(name=f"{tag}-{i}") for i in range(3)]
    try:
        page = await arker.list(q=tag)
        assert isinstance(page, VmList)
        assert page.total == 3 and {s.vm_id for s in page.items} == {v.id for v in made}
        item = page.items[0]
        assert item.name.startswith(tag) and item.base_image and item.region and item.created_at

        oldest_first = await arker.list(q=tag, sort="created_at")
        newest_first = await arker.list(q=tag, sort="-created_at")
        assert [s.vm_id for s in oldest_first.items] == [v.id for v in made]
        assert [s.vm_id for s in newest_first.items] == [v.id for v in reversed(made)]

        first = await arker.list(q=tag, sort="created_at", limit=2)
        rest = await arker.list(q=tag, sort="created_at", limit=2, offset=2)
        assert (first.total, rest.total) == (3, 3)
        assert [s.vm_id for s in first.items + rest.items] == [v.id for v in made]

        assert (await arker.list(q=tag.upper())).total == 3  # q is case-insensitive
    finally:
        for v in made:
            await v.delete()


async def test_list_bad_limit_is_bad_request(arker):
    with pytest.raises(ArkerError) as info:
        await arker.list(limit=1000)
    assert (info.value.code, info.value.status) == ("bad_request", 400)


async def test_resolve_by_id_makes_no_call(arker, control):
    control.reset_stats()
    handle = await arker.resolve("01KQBYKEV5WJ7YB010603T1DCT_d8c0")
    assert handle.id == "01KQBYKEV5WJ7YB010603T1DCT_d8c0"
    assert control.total_calls() == 0


async def test_resolve_by_name_unknown_and_ambiguous(arker):
    name = f"res-{uuid.uuid4().hex[:8]}"
    one = await arker.vm("arkuntu").fork(name=name)
    decoy = await arker.vm("arkuntu").fork(name=name + "-longer")  # a q= hit, not an exact match
    try:
        assert (await arker.resolve(name)).id == one.id

        with pytest.raises(ArkerError) as info:
            await arker.resolve(f"nobody-{uuid.uuid4().hex}")
        assert info.value.code == "not_found"

        twin = await arker.vm("arkuntu").fork(name=name)
        try:
            with pytest.raises(ArkerError) as info:
                await arker.resolve(name)
            assert info.value.code == "bad_request"
            assert one.id in info.value.message and twin.id in info.value.message
        finally:
            await twin.delete()
    finally:
        await one.delete()
        await decoy.delete()


async def test_resolve_pages_through_more_than_one_page(arker, control):
    tag = f"pg-{uuid.uuid4().hex[:8]}"
    made = [await arker.vm("arkuntu").fork(name=f"{tag}-{i:03}") for i in range(101)]
    target = await arker.vm("arkuntu").fork(name=tag)  # newest, so on page 2 oldest-first
    try:
        control.reset_stats()
        assert (await arker.resolve(tag)).id == target.id
        assert control.calls().get("list") == 2
    finally:
        for v in [*made, target]:
            await v.delete()


# -- fork and delete --------------------------------------------------------------------------


async def test_fork_by_alias_by_id_and_by_name(arker, control):
    name = f"golden-{uuid.uuid4().hex[:8]}"
    control.reset_stats()
    golden = await arker.vm("arkuntu").fork(name=name)  # alias -> by-id route
    assert looks_like_vm_id(golden.id)
    assert control.calls().get("fork") == 1
    try:
        await golden.sync.write_file("/home/user/marker.txt", b"from golden")
        by_id = await golden.fork()
        by_name = await arker.vm(name).fork(name=name + "-child")
        try:
            for child in (by_id, by_name):
                assert child.id not in (golden.id,)
                assert await child.sync.read_file("/home/user/marker.txt") == b"from golden"
            assert [s.name for s in (await arker.list(q=name + "-child")).items] == [name + "-child"]
        finally:
            await by_id.delete()
            await by_name.delete()
    finally:
        await golden.delete()


async def test_fork_by_name_and_list_use_the_list_host(server):
    """The regional base is dead here: only list-host routes can succeed."""
    name = f"route-{uuid.uuid4().hex[:8]}"
    async with Arker(server.api_key, base_url=server.base_url, list_base_url=server.base_url) as good:
        golden = await good.vm("arkuntu").fork(name=name)
    try:
        async with Arker(server.api_key, base_url=f"http://127.0.0.1:{closed_port()}",
                         list_base_url=server.base_url, retry=RetryPolicy(base_delay=0.01)) as split:
            assert (await split.list(q=name)).total == 1
            child = await split.vm(name).fork()
            assert looks_like_vm_id(child.id)
            with pytest.raises(ArkerError) as info:
                await child.delete()  # regional route: goes to the dead base
            assert info.value.code == "unavailable"
        async with Arker(server.api_key, base_url=server.base_url, list_base_url=server.base_url) as good:
            await good.vm(child.id).delete()
    finally:
        async with Arker(server.api_key, base_url=server.base_url, list_base_url=server.base_url) as good:
            await good.vm(golden.id).delete()


async def test_fork_unknown_source_is_not_found(arker):
    with pytest.raises(ArkerError) as info:
        await arker.vm("01KQBYKEV5WJ7YB010603T1DC0_zz99").fork()
    assert (info.value.code, info.value.status) == ("not_found", 404)


async def test_delete_then_handle_is_not_found(arker, control):
    vm = await arker.vm("arkuntu").fork()
    control.reset_stats()
    await vm.delete()
    assert control.calls().get("delete") == 1
    with pytest.raises(ArkerError) as info:
        await vm.run("true")
    assert (info.value.code, info.value.status) == ("not_found", 404)
    with pytest.raises(ArkerError) as info:
        await vm.sync.read_file("/home/user/anything")
    assert (info.value.code, info.value.status) == ("not_found", 404)
    with pytest.raises(ArkerError) as info:
        await vm.delete()  # a first-attempt 404 is an error; only a retried delete forgives it
    assert info.value.code == "not_found"


# -- run --------------------------------------------------------------------------------------


async def test_run_output_and_exit_codes(vm):
    r = await vm.run("echo hi; echo oops >&2")
    assert isinstance(r, RunResult)
    assert (r.stdout, r.stderr, r.exit_code, r.ok, r.completed) == (b"hi\n", b"oops\n", 0, True, True)
    assert r.session_id == "0" and r.duration_ms >= 0 and r.cwd

    r = await vm.run("exit 3")
    assert (r.exit_code, r.ok, r.completed, r.timed_out) == (3, False, True, False)


async def test_run_timeout_is_not_completed(vm):
    with trio.fail_after(20):
        r = await vm.run("sleep 30", session_id=2, timeout=1)
    assert r.timed_out and not r.completed and not r.ok
    assert r.exit_code is not None and r.exit_code < 0
    assert b"timed out" in r.stderr


async def test_run_binary_output_is_exact(vm):
    r = await vm.run(r"printf '\377\000\001abc\200'")
    assert r.stdout == b"\xff\x00\x01abc\x80"


async def test_session_cwd_and_env_persist_per_session(vm):
    r = await vm.run("mkdir -p /home/user/work && cd /home/user/work && export GREETING=hello", session_id=5)
    assert (r.exit_code, r.cwd, r.session_id) == (0, "/home/user/work", "5")
    r = await vm.run('pwd; echo "$GREETING"', session_id=5)
    assert r.stdout == b"/home/user/work\nhello\n"
    other = await vm.run("pwd", session_id=6)
    assert other.stdout != b"/home/user/work\n" and other.session_id == "6"
