"""RemoteFS against a real local server: every method's success path and errnos, hostile names
end to end, round-trip budgets (``control.calls()``), and reconciliation after failures.

Remote state is checked independently of RemoteFS: through ``vm.sync`` and through python3
snippets run in the VM on session 1 (RemoteFS uses sessions 7..), with paths passed base64.
"""

from __future__ import annotations

import base64
import errno as E
import json
import random
import shlex
import stat

import pytest
import trio

from arkerfs.client import Arker, RetryPolicy, RunResult
from arkerfs.fs import shell as S
from arkerfs.fs.errors import FsError
from arkerfs.fs.model import Attrs
from arkerfs.fs.remote import RemoteFS

HOME = b"/home/user"
CANARY = b"arkerfs-canary"  # an injected `touch arkerfs-canary` lands in the run's cwd, the home
CHECK_SESSION = 1

_PY_LSTAT = r"""
import os, sys, json, base64
out = []
for a in sys.argv[1:]:
    p = base64.b64decode(a)
    try:
        st = os.lstat(p)
    except OSError as e:
        out.append(e.errno)
        continue
    link = os.readlink(p) if os.path.islink(p) else None
    out.append(dict(mode=st.st_mode, size=st.st_size, nlink=st.st_nlink, uid=st.st_uid, gid=st.st_gid,
                    ino=st.st_ino, atime_ns=st.st_atime_ns, mtime_ns=st.st_mtime_ns, ctime_ns=st.st_ctime_ns,
                    target=None if link is None else base64.b64encode(link).decode()))
print(json.dumps(out))
"""

_PY_LISTDIR = r"""
import os, sys, json, base64
print(json.dumps([base64.b64encode(n).decode() for n in os.listdir(base64.b64decode(sys.argv[1]))]))
"""

_PY_READ = r"""
import sys, base64
sys.stdout.write(base64.b64encode(open(base64.b64decode(sys.argv[1]), 'rb').read()).decode())
"""

_PY_XATTRS = r"""
import os, sys, json, base64
p = base64.b64decode(sys.argv[1])
print(json.dumps({n: base64.b64encode(os.getxattr(p, n)).decode() for n in os.listxattr(p)}))
"""


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


async def sh(vm, command: str) -> RunResult:
    result = await vm.run(command, session_id=CHECK_SESSION, timeout=30)
    assert result.exit_code == 0, result
    return result


async def py(vm, code: str, *args: bytes):
    result = await sh(vm, f"python3 -c {shlex.quote(code)} " + " ".join(b64(a) for a in args))
    return result.stdout


async def vm_lstat(vm, *paths: bytes) -> list:
    return json.loads(await py(vm, _PY_LSTAT, *paths))


async def vm_listdir(vm, path: bytes) -> set[bytes]:
    return {base64.b64decode(n) for n in json.loads(await py(vm, _PY_LISTDIR, path))}


async def vm_read(vm, path: bytes) -> bytes:
    return base64.b64decode(await py(vm, _PY_READ, path))


def used(control) -> dict[str, int]:
    return {route: n for route, n in control.calls().items() if n}


async def raises(errno: int, coro):
    with pytest.raises(FsError) as info:
        await coro
    assert info.value.errno == errno, info.value
    return info.value


def same(attrs: Attrs, st: dict) -> None:
    """RemoteFS attrs agree with python's os.lstat in the VM."""
    assert (attrs.mode, attrs.size, attrs.nlink, attrs.uid, attrs.gid, attrs.remote_ino) == (
        st["mode"], st["size"], st["nlink"], st["uid"], st["gid"], st["ino"])
    assert (attrs.mtime_ns, attrs.ctime_ns) == (st["mtime_ns"], st["ctime_ns"])
    if not stat.S_ISLNK(st["mode"]):  # reading a link's target (find %l, readlink) moves its atime
        assert attrs.atime_ns == st["atime_ns"]
    target = None if st["target"] is None else base64.b64decode(st["target"])
    assert attrs.symlink_target == target


# -- fixtures ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def vm_id(server):
    """One VM forked from arkuntu for this module; each test works in its own directory."""
    async def fork() -> str:
        async with Arker(server.api_key, base_url=server.base_url) as arker:
            return (await arker.vm("arkuntu").fork()).id
    return trio.run(fork)


@pytest.fixture
async def vm(server, vm_id):
    async with Arker(server.api_key, base_url=server.base_url) as arker:
        yield arker.vm(vm_id)


@pytest.fixture
async def fs(vm):
    return RemoteFS(vm)


@pytest.fixture
async def d(vm, request) -> bytes:
    path = HOME + b"/" + request.node.name.encode()[:200].replace(b"[", b"_").replace(b"]", b"_")
    await sh(vm, f"rm -rf -- {S.quote(path)} && mkdir -- {S.quote(path)}")
    return path


# -- metadata ---------------------------------------------------------------------------------

async def test_list_dir_of_50_entries_is_one_run(fs, vm, d, control):
    await sh(vm, f"cd {S.quote(d)} && for i in $(seq 1 47); do printf %0${{i}}d 0 > f$i; done"
                 " && mkdir sub && ln -s 'target with spaces' link && mkfifo fifo"
                 " && touch -d @1700000000.123456789 f1")
    control.reset_stats()
    own, entries = await fs.list_dir(d)
    assert used(control) == {"run": 1}
    names = sorted(e.name for e in entries)
    assert len(names) == 50 and set(names) == await vm_listdir(vm, d)
    stats = await vm_lstat(vm, d, *(d + b"/" + n for n in names))
    same(own, stats[0])
    by_name = {e.name: e.attrs for e in entries}
    for name, st in zip(names, stats[1:]):
        same(by_name[name], st)
    assert by_name[b"f1"].mtime_ns == 1_700_000_000_123_456_789
    assert by_name[b"link"].symlink_target == b"target with spaces"
    assert stat.S_ISFIFO(by_name[b"fifo"].mode) and by_name[b"sub"].is_dir


async def test_home_listing_hides_staging_dir(fs, vm, control):
    await sh(vm, "mkdir -p /home/user/.arkerfs/staging")
    _, entries = await fs.list_dir(HOME)
    names = {e.name for e in entries}
    assert b".arkerfs" not in names and b"README.md" in names
    control.reset_stats()
    await raises(E.ENOENT, fs.lstat(HOME + b"/.arkerfs"))
    await raises(E.ENOENT, fs.list_dir(HOME + b"/.arkerfs/staging"))
    await raises(E.EPERM, fs.mkdir(HOME + b"/.arkerfs", 0o755))
    assert used(control) == {}


async def test_list_dir_errors(fs, d, vm):
    await sh(vm, f"touch {S.quote(d)}/f")
    await raises(E.ENOENT, fs.list_dir(d + b"/nope"))
    await raises(E.ENOTDIR, fs.list_dir(d + b"/f"))
    await raises(E.ENOTDIR, fs.list_dir(d + b"/f/x"))


async def test_lstat_is_one_run_and_never_follows(fs, vm, d, control):
    await sh(vm, f"cd {S.quote(d)} && echo hi > f && ln -s f l && ln -s nowhere dangling")
    control.reset_stats()
    attrs = await fs.lstat(d + b"/l")
    assert used(control) == {"run": 1}
    (st,) = await vm_lstat(vm, d + b"/l")
    same(attrs, st)
    assert attrs.is_symlink and attrs.symlink_target == b"f" and attrs.size == 1
    assert (await fs.lstat(d + b"/dangling")).symlink_target == b"nowhere"
    assert (await fs.lstat(d + b"/f")).size == 3
    await raises(E.ENOENT, fs.lstat(d + b"/nope"))
    await raises(E.ENOTDIR, fs.lstat(d + b"/f/nope"))
    control.reset_stats()
    await raises(E.ENAMETOOLONG, fs.lstat(d + b"/" + b"n" * 256))
    assert used(control) == {}


async def test_statfs(fs, vm, control):
    control.reset_stats()
    st = await fs.statfs()
    assert used(control) == {"run": 1}
    ref = json.loads(await py(vm, "import os,json; s=os.statvfs('/home/user');"
                                  "print(json.dumps([s.f_bsize, s.f_frsize, s.f_blocks, s.f_files, s.f_namemax]))"))
    assert [st.block_size, st.fragment_size, st.blocks, st.files, st.name_max] == ref
    assert 0 <= st.blocks_available <= st.blocks_free <= st.blocks


async def test_readlink(fs, vm, d):
    target = b"../some where/$(touch arkerfs-canary)\n"
    attrs = await fs.symlink(target, d + b"/l")
    assert attrs.is_symlink and attrs.symlink_target == target
    assert await fs.readlink(d + b"/l") == target
    (st,) = await vm_lstat(vm, d + b"/l")
    assert base64.b64decode(st["target"]) == target
    await raises(E.EINVAL, fs.readlink(d))
    await raises(E.ENOENT, fs.readlink(d + b"/nope"))
    await raises(E.EEXIST, fs.symlink(b"x", d + b"/l"))


# -- namespace --------------------------------------------------------------------------------

async def test_mkdir(fs, vm, d, control):
    control.reset_stats()
    attrs = await fs.mkdir(d + b"/new", 0o2751)
    assert used(control) == {"run": 1}
    (st,) = await vm_lstat(vm, d + b"/new")
    same(attrs, st)
    assert stat.S_IMODE(st["mode"]) == 0o2751 and stat.S_ISDIR(st["mode"])
    await raises(E.EEXIST, fs.mkdir(d + b"/new", 0o755))
    await raises(E.ENOENT, fs.mkdir(d + b"/missing/new", 0o755))
    await sh(vm, f"touch {S.quote(d)}/file")
    await raises(E.ENOTDIR, fs.mkdir(d + b"/file/new", 0o755))
    await raises(E.ENAMETOOLONG, fs.mkdir(d + b"/" + b"x" * 256, 0o755))
    await fs.mkdir(d + b"/" + b"x" * 255, 0o700)
    assert b"x" * 255 in await vm_listdir(vm, d)


async def test_rmdir_and_unlink(fs, vm, d, control):
    await sh(vm, f"cd {S.quote(d)} && mkdir empty full && touch full/x file && ln -s full linkdir")
    await raises(E.ENOTEMPTY, fs.rmdir(d + b"/full"))
    await raises(E.ENOTDIR, fs.rmdir(d + b"/file"))
    await raises(E.ENOTDIR, fs.rmdir(d + b"/linkdir"))
    await raises(E.ENOENT, fs.rmdir(d + b"/nope"))
    await raises(E.EISDIR, fs.unlink(d + b"/full"))
    await raises(E.ENOENT, fs.unlink(d + b"/nope"))
    control.reset_stats()
    await fs.rmdir(d + b"/empty")
    await fs.unlink(d + b"/file")
    await fs.unlink(d + b"/linkdir")  # the link, not its target
    assert used(control) == {"run": 3}
    assert await vm_listdir(vm, d) == {b"full"}
    assert await vm_listdir(vm, d + b"/full") == {b"x"}
    await raises(E.EBUSY, fs.rmdir(HOME))


async def test_rename_posix_cases(fs, vm, d, control):
    q = S.quote(d)
    await sh(vm, f"cd {q} && echo 1 > f1 && echo 2 > f2 && ln f1 hard && mkdir d1 d1/sub empty full"
                 " && touch full/x")
    control.reset_stats()
    await fs.rename(d + b"/f2", d + b"/f1")  # over an existing file
    assert used(control) == {"run": 1}
    assert await vm_read(vm, d + b"/f1") == b"2\n"
    await fs.rename(d + b"/hard", d + b"/hard")  # onto itself
    await sh(vm, f"cd {q} && ln f1 hard2")
    await fs.rename(d + b"/f1", d + b"/hard2")  # another link of the same file: nothing happens
    assert {b"f1", b"hard2"} <= await vm_listdir(vm, d)
    await raises(E.ENOTEMPTY, fs.rename(d + b"/d1", d + b"/full"))
    await raises(E.ENOTDIR, fs.rename(d + b"/d1", d + b"/f1"))
    await raises(E.EISDIR, fs.rename(d + b"/f1", d + b"/empty"))
    await raises(E.EINVAL, fs.rename(d + b"/d1", d + b"/d1/sub/inner"))
    await raises(E.ENOENT, fs.rename(d + b"/nope", d + b"/x"))
    await raises(E.ENOENT, fs.rename(d + b"/f1", d + b"/nope/x"))
    await raises(E.EINVAL, fs.rename(d + b"/f1", d + b"/x", 4))
    await fs.rename(d + b"/d1", d + b"/empty")  # dir over an empty dir
    assert await vm_listdir(vm, d + b"/empty") == {b"sub"}
    assert await vm_listdir(vm, d) == {b"f1", b"hard", b"hard2", b"empty", b"full"}


async def test_rename_noreplace_and_exchange(fs, vm, d, control):
    await sh(vm, f"cd {S.quote(d)} && echo a > a && echo b > b && mkdir dir && touch dir/in")
    await raises(E.EEXIST, fs.rename(d + b"/a", d + b"/b", S.RENAME_NOREPLACE))
    await fs.rename(d + b"/a", d + b"/c", S.RENAME_NOREPLACE)
    assert await vm_listdir(vm, d) == {b"b", b"c", b"dir"}
    control.reset_stats()
    await fs.rename(d + b"/c", d + b"/dir", S.RENAME_EXCHANGE)
    assert used(control) == {"run": 1}
    assert await vm.sync.read_file(d.decode() + "/dir") == b"a\n"
    assert await vm_listdir(vm, d + b"/c") == {b"in"}
    await raises(E.ENOENT, fs.rename(d + b"/c", d + b"/nope", S.RENAME_EXCHANGE))


async def test_link(fs, vm, d, control):
    await sh(vm, f"cd {S.quote(d)} && echo x > f && mkdir sub")
    control.reset_stats()
    attrs = await fs.link(d + b"/f", d + b"/g")
    assert used(control) == {"run": 1}
    orig, new = await vm_lstat(vm, d + b"/f", d + b"/g")
    assert attrs.nlink == 2 == new["nlink"] and attrs.remote_ino == orig["ino"] == new["ino"]
    await raises(E.EEXIST, fs.link(d + b"/f", d + b"/g"))
    await raises(E.ENOENT, fs.link(d + b"/nope", d + b"/h"))
    await raises(E.EPERM, fs.link(d + b"/sub", d + b"/h"))


async def test_mknod(fs, vm, d, control):
    fifo = await fs.mknod(d + b"/fifo", stat.S_IFIFO | 0o640)
    sock = await fs.mknod(d + b"/" + b"s" * 200, stat.S_IFSOCK | 0o600)
    f_st, s_st = await vm_lstat(vm, d + b"/fifo", d + b"/" + b"s" * 200)
    same(fifo, f_st)
    same(sock, s_st)
    assert stat.S_ISFIFO(f_st["mode"]) and stat.S_IMODE(f_st["mode"]) == 0o640
    assert stat.S_ISSOCK(s_st["mode"]) and stat.S_IMODE(s_st["mode"]) == 0o600
    await raises(E.EEXIST, fs.mknod(d + b"/fifo", stat.S_IFIFO | 0o600))
    control.reset_stats()
    await raises(E.EPERM, fs.mknod(d + b"/chr", stat.S_IFCHR | 0o600, rdev=0x0101))
    assert used(control) == {}


async def test_create_empty(fs, vm, d, control):
    control.reset_stats()
    attrs = await fs.create_empty(d + b"/f", 0o751)
    assert used(control) == {"run": 1}
    (st,) = await vm_lstat(vm, d + b"/f")
    same(attrs, st)
    assert stat.S_ISREG(st["mode"]) and stat.S_IMODE(st["mode"]) == 0o751 and st["size"] == 0
    await raises(E.EEXIST, fs.create_empty(d + b"/f", 0o600))
    await vm.sync.write_file(d.decode() + "/f", b"content")
    attrs = await fs.create_empty(d + b"/f", 0o600, exclusive=False)
    assert attrs.size == 0 and stat.S_IMODE(attrs.mode) == 0o600
    assert await vm_read(vm, d + b"/f") == b""
    await raises(E.EISDIR, fs.create_empty(d, 0o600, exclusive=False))
    await raises(E.ENOENT, fs.create_empty(d + b"/nope/f", 0o600))


# -- attributes -------------------------------------------------------------------------------

async def test_setattr_everything_in_one_run(fs, vm, d, control):
    await vm.sync.write_file(d.decode() + "/f", b"0123456789")
    (before,) = await vm_lstat(vm, d + b"/f")
    owner = (before["uid"], before["gid"])  # runs have no capabilities: chown only to their own ids
    control.reset_stats()
    attrs = await fs.setattr(d + b"/f", mode=0o4711, uid=owner[0], gid=owner[1], size=4,
                             atime_ns=1_600_000_000_000_000_001, mtime_ns=1_700_000_000_987_654_321)
    assert used(control) == {"run": 1}
    (st,) = await vm_lstat(vm, d + b"/f")
    same(attrs, st)
    assert stat.S_IMODE(st["mode"]) == 0o4711 and (st["uid"], st["gid"], st["size"]) == (*owner, 4)
    assert (st["atime_ns"], st["mtime_ns"]) == (1_600_000_000_000_000_001, 1_700_000_000_987_654_321)
    assert await vm_read(vm, d + b"/f") == b"0123"
    attrs = await fs.setattr(d + b"/f", size=8)  # growing pads with zeros
    assert attrs.size == 8 and await vm_read(vm, d + b"/f") == b"0123\0\0\0\0"
    same_times = await fs.setattr(d + b"/f", atime_ns=-1_500_000_000, mtime_ns=-1_500_000_000)
    assert (same_times.atime_ns, same_times.mtime_ns) == (-1_500_000_000, -1_500_000_000)


async def test_setattr_never_follows_a_symlink(fs, vm, d):
    await sh(vm, f"cd {S.quote(d)} && touch -d @1000 target && ln -s target link")
    (before,) = await vm_lstat(vm, d + b"/target")  # runs have no capabilities: chown only to their own uid
    attrs = await fs.setattr(d + b"/link", mode=0o600, uid=before["uid"], mtime_ns=2_000_000_000_000_000_007)
    assert attrs.is_symlink and attrs.mtime_ns == 2_000_000_000_000_000_007 and attrs.uid == before["uid"]
    target, link = await vm_lstat(vm, d + b"/target", d + b"/link")
    assert target["mtime_ns"] == 1000 * 10**9 and target["uid"] == before["uid"]
    assert stat.S_IMODE(target["mode"]) == 0o644
    same(attrs, link)
    await raises(E.EISDIR, fs.setattr(d, size=0))
    await raises(E.ENOENT, fs.setattr(d + b"/nope", mode=0o600))


# -- contents ---------------------------------------------------------------------------------

async def test_write_and_read_small_utf8_file(fs, vm, d, control):
    path = d + b"/notes.txt"
    control.reset_stats()
    done = await fs.write_file(path, b"hello", 5, mtime_ns=1_500_000_000_000_000_001)
    assert used(control) == {"run": 1}  # a small content travels in the install run
    assert done.conflict is None and done.attrs.size == 5 and done.attrs.mtime_ns == 1_500_000_000_000_000_001
    assert stat.S_IMODE(done.attrs.mode) == 0o644
    assert await vm_read(vm, path) == b"hello"
    control.reset_stats()
    remote = await fs.open_read(path)
    assert used(control) == {"sync_read": 1}
    assert remote.inline and await remote.read_all() == b"hello"
    control.reset_stats()
    attrs = (await fs.write_file(path, b"#!/bin/sh\n", 10, mode=0o755)).attrs
    assert used(control) == {"run": 1}
    assert stat.S_IMODE(attrs.mode) == 0o755 and attrs.size == 10
    control.reset_stats()
    attrs = (await fs.write_file(path, b"", 0)).attrs
    assert used(control) == {"run": 1}
    assert attrs.size == 0 and stat.S_IMODE(attrs.mode) == 0o755  # mode kept
    assert await vm_read(vm, path) == b""


async def test_write_from_local_file_and_presigned_read(fs, vm, d, tmp_path, control):
    data = random.Random(1).randbytes(300_000)  # above the server's 64 KiB inline read limit
    local = tmp_path / "big"
    local.write_bytes(data)
    control.reset_stats()
    attrs = (await fs.write_file(d + b"/big", str(local), len(data))).attrs
    assert used(control) == {"sync_write": 1, "run": 1}  # upload to a staging name + install run
    assert attrs.size == len(data)
    assert await vm_read(vm, d + b"/big") == data
    assert await vm_listdir(vm, HOME + b"/.arkerfs/staging") == set()
    remote = await fs.open_read(d + b"/big")
    assert not remote.inline and remote.size == len(data)
    assert await remote.read_range(1000, 10) == data[1000:1010]
    await raises(E.ENOENT, fs.open_read(d + b"/nope"))
    await raises(E.EISDIR, fs.open_read(d))
    await raises(E.EFBIG, fs.write_file(d + b"/huge", b"", 100_000_001))


async def test_a_content_is_installed_only_over_the_version_it_was_based_on(fs, vm, d, control):
    path = d + b"/f"
    q = shlex.quote(path.decode())
    done = await fs.write_file(path, b"one", 3, mode=0o640)  # no base: whatever is there
    done = await fs.write_file(path, b"two", 3, base=done.attrs)  # still that version
    assert done.conflict is None and await vm_read(vm, path) == b"two"
    assert stat.S_IMODE(done.attrs.mode) == 0o640  # the base's mode when none is given
    await sh(vm, f"printf changed-in-the-vm >> {q}")
    for content in (b"three", random.Random(3).randbytes(100_000)):  # in the run; uploaded
        control.reset_stats()
        lost = await fs.write_file(path, content, len(content), base=done.attrs)
        assert used(control) == ({"run": 1} if len(content) < 1000 else {"run": 1, "sync_write": 1})
        assert lost.attrs is None and lost.conflict.startswith(path + b".conflict-")
        assert await vm_read(vm, path) == b"twochanged-in-the-vm"  # nothing overwritten
        assert await vm_read(vm, lost.conflict) == content
        (kept,) = await vm_lstat(vm, lost.conflict)
        assert stat.S_IMODE(kept["mode"]) == 0o640
        await sh(vm, f"rm -- {shlex.quote(lost.conflict.decode())}")
    # the directory removed in the VM: the local version goes to the recovery directory
    await sh(vm, f"mkdir {q}.dir && printf x > {q}.dir/g")
    seen = await fs.lstat(path + b".dir/g")
    await sh(vm, f"rm -r {q}.dir")
    saved = await fs.write_file(path + b".dir/g", b"mine", 4, base=seen)
    assert saved.conflict.startswith(HOME + b"/arkerfs-recovered/")
    assert saved.conflict.endswith(path[len(HOME):] + b".dir/g")
    assert await vm_read(vm, saved.conflict) == b"mine"
    assert await vm_listdir(vm, HOME + b"/.arkerfs/staging") == set()


async def test_an_in_place_write_keeps_hard_links_and_checks_the_version(fs, vm, d):
    path, other = d + b"/f", d + b"/g"
    attrs = (await fs.write_file(path, b"one", 3)).attrs
    await fs.link(path, other)
    done = await fs.write_file(path, b"two!", 4, base=attrs, in_place=True, mode=0o600)
    assert done.conflict is None and done.attrs.nlink == 2 and done.attrs.remote_ino == attrs.remote_ino
    assert await vm_read(vm, other) == b"two!"
    assert stat.S_IMODE(done.attrs.mode) == 0o600
    await sh(vm, f"printf vm > {shlex.quote(other.decode())}")
    lost = await fs.write_file(path, b"three", 5, base=done.attrs, in_place=True)
    assert lost.conflict is not None and await vm_read(vm, path) == b"vm"


async def test_a_writable_file_in_a_read_only_directory_is_rewritten_in_place(fs, vm, d):
    """As write(2) would: no new name is needed in the directory."""
    ro, path = d + b"/ro", d + b"/ro/f"
    await fs.mkdir(ro, 0o755)
    attrs = (await fs.write_file(path, b"one", 3)).attrs
    await fs.setattr(ro, mode=0o555)
    try:
        done = await fs.write_file(path, b"two", 3, base=attrs)
        assert done.conflict is None and done.attrs.remote_ino == attrs.remote_ino
        assert await vm_read(vm, path) == b"two"
    finally:
        await fs.setattr(ro, mode=0o755)


# -- hostile names end to end -------------------------------------------------------------------

HOSTILE = [
    b"with space", b"it's", b'dq"uote', b"$(touch arkerfs-canary)", b"`touch arkerfs-canary`",
    b"a;touch arkerfs-canary", b"a|touch arkerfs-canary", b"'; touch arkerfs-canary; '",
    b"x\ntouch arkerfs-canary\n", b"tab\there", b"-rf", b"*", b"back\\slash", b"$HOME",
    "unicodé ☃".encode(), b"a..b", b"y" * 255,
]


async def assert_no_canary(vm) -> None:
    found = await sh(vm, "find /home/user -name 'arkerfs-canary*' -print; ls -A /tmp")
    assert CANARY not in found.stdout, found.stdout


async def test_hostile_names_end_to_end(fs, vm, d):
    other = d + b"/other"
    await fs.mkdir(other, 0o755)
    for name in HOSTILE:
        path = d + b"/" + name
        await fs.create_empty(path, 0o644)
        await fs.write_file(path, name, len(name))
        assert await (await fs.open_read(path)).read_all() == name
        await fs.setattr(path, mtime_ns=1_234_567_890_000_000_123)
        await fs.rename(path, other + b"/" + name)
        assert await vm_read(vm, other + b"/" + name) == name
    _, entries = await fs.list_dir(other)
    assert {e.name for e in entries} == set(HOSTILE) == await vm_listdir(vm, other)
    assert {e.attrs.mtime_ns for e in entries} == {1_234_567_890_000_000_123}
    for name in HOSTILE:
        await fs.unlink(other + b"/" + name)
    assert await vm_listdir(vm, other) == set()
    await assert_no_canary(vm)


async def test_non_utf8_name_end_to_end(fs, vm, d, control):
    name = b"\xff\xfe bad \x80 $(touch arkerfs-canary)"
    path = d + b"/" + name
    control.reset_stats()
    attrs = await fs.create_empty(path, 0o600)
    assert used(control) == {"run": 1} and attrs.size == 0
    _, entries = await fs.list_dir(d)
    assert [e.name for e in entries] == [name]

    control.reset_stats()
    attrs = (await fs.write_file(path, b"small", 5)).attrs  # one run: the bytes travel in it
    assert used(control) == {"run": 1}
    assert attrs.size == 5 and stat.S_IMODE(attrs.mode) == 0o600  # mode kept
    assert await vm_read(vm, path) == b"small"
    control.reset_stats()
    assert await (await fs.open_read(path)).read_all() == b"small"
    assert used(control) == {"run": 1}  # small: content comes back in the run's output

    big = random.Random(2).randbytes(200_000)
    await fs.write_file(path, big, len(big), mode=0o640)
    assert await vm_read(vm, path) == big
    control.reset_stats()
    remote = await RemoteFS(vm, inline_read_max=65536).open_read(path)
    # staged: run (hard link) + sync read (presigned) + run (cleanup)
    assert used(control) == {"run": 2, "sync_read": 1, "presigned_get": 1}
    assert await remote.read_all() == big
    assert await vm_listdir(vm, HOME + b"/.arkerfs/staging") == set()

    new = d + b"/\xc3(renamed\xa0"
    await fs.rename(path, new)
    assert await vm_listdir(vm, d) == {new.rsplit(b"/", 1)[1]}
    assert stat.S_IMODE((await fs.lstat(new)).mode) == 0o640
    await fs.unlink(new)
    assert await vm_listdir(vm, d) == set()
    await assert_no_canary(vm)


# -- extended attributes --------------------------------------------------------------------------

async def test_xattrs(fs, vm, d, control):
    path = d + b"/f"
    await fs.create_empty(path, 0o644)
    value = bytes(range(256)) + b"\0end"
    control.reset_stats()
    await fs.setxattr(path, b"user.bin", value)
    assert used(control) == {"run": 1}
    assert json.loads(await py(vm, _PY_XATTRS, path)) == {"user.bin": b64(value)}
    assert await fs.getxattr(path, b"user.bin") == value
    await fs.setxattr(path, b"user.empty", b"")
    assert await fs.getxattr(path, b"user.empty") == b""
    await raises(E.EEXIST, fs.setxattr(path, b"user.bin", b"x", S.XATTR_CREATE))
    await raises(E.ENODATA, fs.setxattr(path, b"user.none", b"x", S.XATTR_REPLACE))
    await fs.setxattr(path, b"user.bin", b"new", S.XATTR_REPLACE)
    assert sorted(await fs.listxattr(path)) == [b"user.bin", b"user.empty"]
    await raises(E.ENODATA, fs.getxattr(path, b"user.none"))
    await fs.removexattr(path, b"user.bin")
    await raises(E.ENODATA, fs.removexattr(path, b"user.bin"))
    assert json.loads(await py(vm, _PY_XATTRS, path)) == {"user.empty": ""}
    await raises(E.ENOENT, fs.getxattr(d + b"/nope", b"user.x"))
    control.reset_stats()  # other namespaces never reach the VM; ENOTSUP, as the mount answers
    await raises(E.ENOTSUP, fs.getxattr(path, b"security.capability"))
    await raises(E.ENOTSUP, fs.removexattr(path, b"trusted.x"))
    await raises(E.ENOTSUP, fs.setxattr(path, b"trusted.x", b"1"))
    await raises(E.E2BIG, fs.setxattr(path, b"user.big", b"x" * 65537))
    assert used(control) == {}


# -- sessions, faults and reconciliation ----------------------------------------------------------

def _seed_for(rate: float, pattern: list[bool]) -> int:
    """A seed whose first draws hit (True) or miss the fault rate as ``pattern`` says."""
    for seed in range(100_000):
        rng = random.Random(seed)
        if [rng.random() < rate for _ in pattern] == pattern:
            return seed
    raise AssertionError("no seed")


@pytest.fixture
async def fs1(server, vm_id):
    """RemoteFS on a client that never retries, so each injected fault reaches RemoteFS."""
    async with Arker(server.api_key, base_url=server.base_url, retry=RetryPolicy(attempts=1)) as arker:
        yield RemoteFS(arker.vm(vm_id))


async def test_ambiguous_mkdir_is_reconciled_not_replayed(fs1, vm, d, control):
    await sh(vm, f"mkdir {S.quote(d)}/exists")
    # 504 on the mkdir run, the probe run passes. The fault fires before the server does anything,
    # so the probe finds the directory only where it already existed: reconciled as success.
    control.set_faults(fail_rate=0.5, fail_status=504, seed=_seed_for(0.5, [True, False]))
    control.reset_stats()
    attrs = await fs1.mkdir(d + b"/exists", 0o755)
    assert attrs.is_dir and used(control) == {"run": 2}
    # Where it did not exist the probe shows nothing happened: EIO, and no blind replay.
    control.set_faults(fail_rate=0.5, fail_status=504, seed=_seed_for(0.5, [True, False]))
    await raises(E.EIO, fs1.mkdir(d + b"/new", 0o755))
    control.clear_faults()
    assert await vm_listdir(vm, d) == {b"exists"}


async def test_ambiguous_unlink_and_read_only_retry(fs1, vm, d, control):
    await sh(vm, f"touch {S.quote(d)}/f")
    control.set_faults(fail_rate=0.5, fail_status=502, seed=_seed_for(0.5, [True, False]))
    await raises(E.EIO, fs1.unlink(d + b"/f"))  # the probe still sees the file
    control.set_faults(fail_rate=0.5, fail_status=504, seed=_seed_for(0.5, [True, False]))
    control.reset_stats()
    assert (await fs1.lstat(d + b"/f")).is_reg  # read-only: simply run again
    assert used(control) == {"run": 2}
    control.clear_faults()
    await sh(vm, f"rm {S.quote(d)}/f")
    control.set_faults(fail_rate=0.5, fail_status=504, seed=_seed_for(0.5, [True, False]))
    await fs1.unlink(d + b"/f")  # already gone: the probe settles it as done
    control.set_faults(fail_rate=1.0, fail_status=503)
    control.reset_stats()
    await raises(E.EIO, fs1.lstat(d))  # 503 is not ambiguous: mapped as an API error, not repeated
    assert used(control) == {"run": 1}


async def test_busy_sessions(fs1, vm, d, control):
    # vm_busy means the run never started: retried by RemoteFS itself.
    control.set_faults(busy_rate=0.5, seed=_seed_for(0.5, [True, True, False]))
    control.reset_stats()
    assert (await fs1.lstat(d)).is_dir
    assert used(control) == {"run": 3}
    assert fs1.pool.limit == 4
    # vm_busy on one session while another runs: the limit is VM-wide, drop to one session.
    control.set_faults(busy_rate=0.5, seed=_seed_for(0.5, [False, True, False]))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(fs1.list_dir, HOME)
        await trio.sleep(0.005)
        nursery.start_soon(fs1.lstat, d)
    assert fs1.pool.limit == 1


async def test_concurrent_runs_use_several_sessions(fs, d):
    results = []

    async def one(i: int) -> None:
        results.append(await fs.mkdir(d + b"/c%d" % i, 0o755))

    async with trio.open_nursery() as nursery:
        for i in range(12):
            nursery.start_soon(one, i)
    assert len(results) == 12 and fs.pool.limit == 4 and fs.pool.in_flight == 0


class _FakeVM:
    """Only for the run outcomes the real server cannot be made to produce on demand."""

    def __init__(self, result: RunResult) -> None:
        self.result = result

    async def run(self, command, session_id=0, timeout=None):
        assert session_id != 0
        return self.result


@pytest.mark.parametrize("exit_code, timed_out, stdout", [
    (None, False, b""), (-1, True, b""), (-9, False, b""),
    (0, False, b"garbage"),  # stray output breaks the framing
    (0, False, b"X\x000\x00X\x000\x00"),  # more statuses than fragments
    (2, False, b"X\x000\x00"),  # exit status disagrees with the in-band one
    (127, False, b"X\x00127\x00"),  # not an errno we set on purpose
])
async def test_incomplete_or_unusable_runs_are_eio(exit_code, timed_out, stdout):
    fs = RemoteFS(_FakeVM(RunResult(stdout, b"", exit_code, 1.0, "7", "/", timed_out)))
    await raises(E.EIO, fs.lstat(HOME))
