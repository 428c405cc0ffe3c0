"""``LocalVM`` (tests/localvm.py) is faithful: the same ``RemoteFS`` operations against it and
against a VM of the real local server (over HTTP) give the same attrs, errnos and bytes."""

from __future__ import annotations

import errno
import stat

import pytest
import trio

from arkerfs.fs.errors import FsError
from arkerfs.fs.remote import RemoteFS
from tests.localvm import LocalVM

D = b"/home/user/t"


def shape(attrs):
    """What must agree: type, permission bits, size (not for directories), nlink, target."""
    is_dir = stat.S_ISDIR(attrs.mode)
    return (stat.S_IFMT(attrs.mode), oct(stat.S_IMODE(attrs.mode)), None if is_dir else attrs.size,
            None if is_dir else attrs.nlink, attrs.uid, attrs.gid, attrs.symlink_target)


async def errno_of(coro):
    try:
        await coro
    except FsError as exc:
        return errno.errorcode[exc.errno]
    return "no error"


async def scenario(remote: RemoteFS) -> list:
    out = [shape(await remote.mkdir(D, 0o750)),
           shape(await remote.create_empty(D + b"/a", 0o640)),
           await errno_of(remote.mkdir(D, 0o755)),
           await errno_of(remote.create_empty(D + b"/a", 0o600))]
    await remote.write_file(D + b"/b", b"hello", 5)
    await remote.rename(D + b"/b", D + b"/a")  # over an existing file
    out += [await errno_of(remote.unlink(D + b"/missing")),
            await errno_of(remote.rmdir(D)),
            await errno_of(remote.rename(D + b"/a", D + b"/a/x")),
            shape(await remote.symlink(b"a", D + b"/s")),
            shape(await remote.link(D + b"/a", D + b"/h")),
            await errno_of(remote.link(D, D + b"/d2"))]
    await remote.write_file(D + b"/\xff-raw", b"not utf-8 name", 14)  # staged through a run
    await remote.write_file(D + b"/big", bytes(range(256)) * 400, 102400)  # over the inline limit
    attrs, entries = await remote.list_dir(D)
    out.append((shape(attrs), sorted((e.name, shape(e.attrs)) for e in entries)))
    small = await remote.open_read(D + b"/a")
    big = await remote.open_read(D + b"/big")
    raw = await remote.open_read(D + b"/\xff-raw")
    out += [small.inline, await small.read_all(), big.inline, big.size, await big.read_range(70000, 300),
            await raw.read_all(), await errno_of(remote.open_read(D + b"/missing"))]
    return out


async def test_remote_operations_agree_with_the_real_server(vm, tmp_path):
    async with LocalVM(str(tmp_path / "fake")) as fake:
        want = await scenario(RemoteFS(vm))
        got = await scenario(RemoteFS(fake))
    assert got == want


@pytest.mark.parametrize("persistent", [True, False])
async def test_a_run_past_its_timeout_is_killed_and_the_session_works_again(tmp_path, persistent):
    async with LocalVM(str(tmp_path / "fake"), persistent=persistent) as fake:
        with trio.fail_after(20):  # generous: only catches a hang
            late = await fake.run("echo started; sleep 30; echo never", session_id=7, timeout=0.5)
        assert (late.exit_code, late.timed_out, late.completed) == (-1, True, False)
        again = await fake.run("echo out; echo err >&2; exit 3", session_id=7, timeout=10)
        assert (again.stdout, again.stderr, again.exit_code) == (b"out\n", b"err\n", 3)


async def test_runs_and_files_are_counted_and_the_home_is_the_temp_dir(tmp_path):
    async with LocalVM(str(tmp_path / "fake")) as fake:
        remote = RemoteFS(fake, inline_write_max=0)  # every content through a sync write
        await remote.mkdir(b"/home/user/d", 0o755)
        await remote.write_file(b"/home/user/d/f", b"data", 4)
        assert (tmp_path / "fake" / "home" / "d" / "f").read_bytes() == b"data"
        assert dict(fake.calls) == {"run": 2, "sync_write": 1}  # mkdir, upload, install
