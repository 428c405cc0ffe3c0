"""Pure tests of the script builders and parsers: scripts run through a local ``bash -c`` in a
temp dir (never the server), parsers get crafted output."""

from __future__ import annotations

import errno as E
import os
import stat
import subprocess

import pytest

from arkerfs.fs import shell as S
from arkerfs.fs.errors import FsError

CANARY = "arkerfs-canary"

# Names that break naive quoting; several would create the canary if injected.
HOSTILE = [
    b"plain",
    b"with space",
    b"it's",
    b'dq"uote',
    b"$(touch CANARY)",
    b"`touch CANARY`",
    b"a;touch CANARY",
    b"a|touch CANARY",
    b"'; touch CANARY; '",
    b"x\ntouch CANARY\n",
    b"tab\there",
    b"-rf",
    b"--",
    b"*",
    b"back\\slash",
    b"$HOME",
    b"!!",
    b"${IFS}",
    "unicodé ☃ 日本".encode(),
    b"\xff\xfe non-utf8 \x80",
    b"$'\\x41'",
    b"x" * 255,
    "é".encode() * 127,  # 254 bytes of two-byte characters
]


# Names can't hold "/": an injected `touch CANARY` would land in bash's cwd, the test's temp dir.
NAMES = [n.replace(b"CANARY", CANARY.encode()) for n in HOSTILE]


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)


def run_local(fragments, *, check_exit=True) -> list[S.Outcome]:
    proc = subprocess.run(["bash", "-c", S.script(fragments)], capture_output=True, timeout=30)
    outcomes = S.parse_output(proc.stdout)
    assert len(outcomes) == len(fragments), proc.stderr
    if check_exit:
        assert proc.returncode == outcomes[-1].status
    return outcomes


def call(fragment):
    """Run one fragment locally; its value, or FsError like RemoteFS raises."""
    (outcome,) = run_local([fragment])
    return S.check_result(fragment, outcome)


def errno_of(fragment) -> int:
    with pytest.raises(FsError) as info:
        call(fragment)
    return info.value.errno


# -- quoting ------------------------------------------------------------------------------

@pytest.mark.parametrize("name", NAMES)
def test_quote_round_trips_through_bash(name, tmp_path):
    word = S.quote(name)
    word.encode("ascii" if not _utf8(name) else "utf-8")  # non-UTF-8 names travel as ASCII
    out = subprocess.run(["bash", "-c", f"printf %s {word}"], capture_output=True, check=True).stdout
    assert out == name
    assert not (tmp_path / CANARY).exists()


def _utf8(data: bytes) -> bool:
    try:
        data.decode()
    except UnicodeDecodeError:
        return False
    return True


def test_quote_refuses_nul():
    with pytest.raises(ValueError):
        S.quote(b"a\0b")


def test_hostile_names_create_list_and_nothing_else(tmp_path):
    """Create every hostile name and list the dir in ONE script (two fragments per name)."""
    root = tmp_path / "d"
    root.mkdir()
    rootb = os.fsencode(root)
    names = NAMES
    frags = [S.create_empty(rootb + b"/" + n, 0o640) for n in names]
    frags.append(S.list_dir(rootb))
    outcomes = run_local(frags)
    for frag, outcome, name in zip(frags, outcomes, names):
        attrs = S.check_result(frag, outcome)
        assert attrs.is_reg and attrs.size == 0 and stat.S_IMODE(attrs.mode) == 0o640, name
    own, entries = S.check_result(frags[-1], outcomes[-1])
    assert own.is_dir
    assert sorted(e.name for e in entries) == sorted(names)
    assert sorted(os.listdir(rootb)) == sorted(names)
    assert sorted(os.listdir(tmp_path)) == ["d"]  # no canary, nothing else


def test_hostile_names_rename_symlink_unlink(tmp_path):
    rootb = os.fsencode(tmp_path)
    for name in NAMES:
        src, dst = rootb + b"/src", rootb + b"/" + name
        call(S.create_empty(src, 0o600))
        call(S.rename(src, dst))
        assert os.path.exists(dst) and not os.path.exists(src)
        link = rootb + b"/L" + name[:200]
        assert call(S.symlink(name, link)).symlink_target == name
        assert call(S.readlink(link)) == name
        call(S.unlink(link))
        call(S.unlink(dst))
    assert os.listdir(tmp_path) == []


# -- fragments against a local bash: POSIX semantics ----------------------------------------

def test_mkdir_errors(tmp_path):
    d = os.fsencode(tmp_path)
    attrs = call(S.mkdir(d + b"/a", 0o2750))
    assert attrs.is_dir and stat.S_IMODE(attrs.mode) == 0o2750 and attrs.nlink == 2
    assert errno_of(S.mkdir(d + b"/a", 0o755)) == E.EEXIST
    assert errno_of(S.mkdir(d + b"/missing/a", 0o755)) == E.ENOENT
    (tmp_path / "f").write_bytes(b"x")
    assert errno_of(S.mkdir(d + b"/f/a", 0o755)) == E.ENOTDIR
    assert errno_of(S.mkdir(d + b"/f/deeper/a", 0o755)) == E.ENOTDIR
    assert errno_of(S.mkdir(d + b"/" + b"y" * 256, 0o755)) == E.ENAMETOOLONG


def test_rmdir_unlink_errors(tmp_path):
    d = os.fsencode(tmp_path)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_bytes(b"")
    (tmp_path / "f").write_bytes(b"")
    (tmp_path / "empty").mkdir()
    assert errno_of(S.rmdir(d + b"/full")) == E.ENOTEMPTY
    assert errno_of(S.rmdir(d + b"/f")) == E.ENOTDIR
    assert errno_of(S.rmdir(d + b"/nope")) == E.ENOENT
    assert errno_of(S.unlink(d + b"/empty")) == E.EISDIR
    assert errno_of(S.unlink(d + b"/nope")) == E.ENOENT
    assert errno_of(S.unlink(d + b"/f/x")) == E.ENOTDIR
    call(S.rmdir(d + b"/empty"))
    call(S.unlink(d + b"/f"))
    assert sorted(os.listdir(tmp_path)) == ["full"]


def test_rename_semantics(tmp_path):
    d = os.fsencode(tmp_path)
    for name in ("f1", "f2", "hl"):
        (tmp_path / name).write_bytes(name.encode())
    os.unlink(tmp_path / "hl")
    os.link(tmp_path / "f1", tmp_path / "hl")
    for name in ("d1", "d2", "empty", "full"):
        (tmp_path / name).mkdir()
    (tmp_path / "full" / "x").write_bytes(b"")
    (tmp_path / "d1" / "sub").mkdir()

    call(S.rename(d + b"/f1", d + b"/hl"))  # another link of the same file: no-op success
    assert (tmp_path / "f1").exists() and (tmp_path / "hl").exists()
    assert errno_of(S.rename(d + b"/d1", d + b"/full")) == E.ENOTEMPTY
    assert errno_of(S.rename(d + b"/d1", d + b"/f2")) == E.ENOTDIR
    assert errno_of(S.rename(d + b"/f2", d + b"/empty")) == E.EISDIR
    assert errno_of(S.rename(d + b"/d1", d + b"/d1/sub/x")) == E.EINVAL
    assert errno_of(S.rename(d + b"/nope", d + b"/x")) == E.ENOENT
    assert errno_of(S.rename(d + b"/f2", d + b"/nope/x")) == E.ENOENT
    assert errno_of(S.rename(d + b"/f2", d + b"/f1", S.RENAME_NOREPLACE)) == E.EEXIST
    call(S.rename(d + b"/d1", d + b"/empty"))  # dir over an empty dir
    assert (tmp_path / "empty" / "sub").is_dir() and not (tmp_path / "d1").exists()
    call(S.rename(d + b"/f2", d + b"/f1"))  # file over file
    assert (tmp_path / "f1").read_bytes() == b"f2"
    call(S.rename(d + b"/f1", d + b"/new", S.RENAME_NOREPLACE))
    assert (tmp_path / "new").read_bytes() == b"f2"


def test_rename_exchange(tmp_path):
    d = os.fsencode(tmp_path)
    (tmp_path / "a").write_bytes(b"A")
    (tmp_path / "b").mkdir()
    call(S.rename(d + b"/a", d + b"/b", S.RENAME_EXCHANGE))
    assert (tmp_path / "b").read_bytes() == b"A" and (tmp_path / "a").is_dir()
    assert errno_of(S.rename(d + b"/a", d + b"/nope", S.RENAME_EXCHANGE)) == E.ENOENT


def test_setattr_all_in_one(tmp_path):
    d = os.fsencode(tmp_path)
    (tmp_path / "f").write_bytes(b"hello world")
    attrs = call(S.setattr(d + b"/f", mode=0o4711, size=5, atime_ns=1_000_000_001_123_456_789,
                           mtime_ns=-1_500_000_000))
    assert stat.S_IMODE(attrs.mode) == 0o4711 and attrs.size == 5
    assert attrs.atime_ns == 1_000_000_001_123_456_789 and attrs.mtime_ns == -1_500_000_000
    st = os.lstat(tmp_path / "f")
    assert (st.st_atime_ns, st.st_mtime_ns, st.st_size) == (attrs.atime_ns, attrs.mtime_ns, 5)
    os.symlink("f", tmp_path / "l")
    link = call(S.setattr(d + b"/l", mode=0o600, mtime_ns=1_234_567_890_123_456_789))
    assert link.is_symlink and link.mtime_ns == 1_234_567_890_123_456_789
    assert os.lstat(tmp_path / "f").st_mtime_ns == -1_500_000_000  # target untouched
    assert errno_of(S.setattr(d + b"/", size=0)) == E.EISDIR
    assert errno_of(S.setattr(d + b"/nope", mode=0o600)) == E.ENOENT


def test_create_empty_exclusive_and_truncate(tmp_path):
    d = os.fsencode(tmp_path)
    (tmp_path / "f").write_bytes(b"data")
    os.chmod(tmp_path / "f", 0o751)
    assert errno_of(S.create_empty(d + b"/f", 0o600)) == E.EEXIST
    attrs = call(S.create_empty(d + b"/f", None, exclusive=False))
    assert attrs.size == 0 and stat.S_IMODE(attrs.mode) == 0o751
    assert stat.S_IMODE(call(S.create_empty(d + b"/g", None, exclusive=False)).mode) == 0o644
    assert errno_of(S.create_empty(d, None, exclusive=False)) == E.EISDIR


def test_link_mknod(tmp_path):
    d = os.fsencode(tmp_path)
    (tmp_path / "f").write_bytes(b"x")
    attrs = call(S.link(d + b"/f", d + b"/g"))
    assert attrs.nlink == 2 and attrs.remote_ino == os.stat(tmp_path / "f").st_ino
    assert errno_of(S.link(d + b"/f", d + b"/g")) == E.EEXIST
    assert errno_of(S.link(d, d + b"/dirlink")) == E.EPERM
    assert errno_of(S.link(d + b"/nope", d + b"/h")) == E.ENOENT
    fifo = call(S.mknod(d + b"/fifo", stat.S_IFIFO | 0o640))
    assert stat.S_ISFIFO(fifo.mode) and stat.S_IMODE(fifo.mode) == 0o640
    sock = call(S.mknod(d + b"/" + b"s" * 200, stat.S_IFSOCK | 0o600))  # > sun_path
    assert stat.S_ISSOCK(sock.mode) and stat.S_IMODE(sock.mode) == 0o600


def test_readlink_of_non_link_is_einval(tmp_path):
    assert errno_of(S.readlink(os.fsencode(tmp_path))) == E.EINVAL


def test_statfs_locally(tmp_path):
    fs = call(S.statfs(os.fsencode(tmp_path)))
    ref = os.statvfs(tmp_path)
    assert (fs.blocks, fs.fragment_size, fs.name_max) == (ref.f_blocks, ref.f_frsize, ref.f_namemax)


def test_xattrs_locally(tmp_path):
    d = os.fsencode(tmp_path) + b"/f"
    (tmp_path / "f").write_bytes(b"")
    try:
        os.setxattr(d, b"user.probe", b"1")
    except OSError:  # a filesystem without user xattrs: the fragment must say ENOTSUP
        assert errno_of(S.setxattr(d, b"user.k", b"v")) == E.ENOTSUP
        return
    value = bytes(range(256))
    call(S.setxattr(d, b"user.k", value))
    assert call(S.getxattr(d, b"user.k")) == value
    assert errno_of(S.setxattr(d, b"user.k", b"v", S.XATTR_CREATE)) == E.EEXIST
    assert errno_of(S.setxattr(d, b"user.none", b"v", S.XATTR_REPLACE)) == E.ENODATA
    assert sorted(call(S.listxattr(d))) == [b"user.k", b"user.probe"]
    call(S.removexattr(d, b"user.k"))
    assert errno_of(S.getxattr(d, b"user.k")) == E.ENODATA


def test_listings_carry_each_entrys_user_xattr_names(tmp_path):
    (tmp_path / "sub").mkdir()
    for name in ("tagged", "plain", "sub/deep"):
        (tmp_path / name).write_bytes(b"")
    os.symlink("plain", tmp_path / "link")
    os.setxattr(tmp_path / "tagged", "user.b", b"2")
    os.setxattr(tmp_path / "tagged", "user.a", b"1")
    os.setxattr(tmp_path / "sub/deep", "user.x", b"")
    d = os.fsencode(tmp_path)
    _, tree = call(S.list_tree(d))
    _, page, _ = call(S.list_dir_page(d, None))
    for entries in (tree[b""], page):
        names = {e.name: e.attrs.xattrs for e in entries}
        assert sorted(names.pop(b"tagged")) == [b"user.a", b"user.b"]
        assert names == {b"plain": (), b"link": (), b"sub": ()}  # known to have none: no call
    assert [e.attrs.xattrs for e in tree[b"sub"]] == [(b"user.x",)]


def test_read_small_or_stage(tmp_path):
    d = os.fsencode(tmp_path)
    (tmp_path / "f").write_bytes(b"\0\xff" * 10)
    small = call(S.read_small_or_stage(d + b"/f", d + b"/staged", 100))
    assert small.content == b"\0\xff" * 10 and small.staged is None and small.attrs.size == 20
    assert errno_of(S.read_small_or_stage(d, d + b"/staged", 100)) == E.EISDIR
    for _ in range(2):  # repeatable after an ambiguous failure
        big = call(S.read_small_or_stage(d + b"/f", d + b"/stage/x", 10))
        assert big.content is None and big.staged == d + b"/stage/x"
    assert (tmp_path / "stage" / "x").read_bytes() == b"\0\xff" * 10
    call(S.remove_staged(d + b"/stage/x"))
    assert os.listdir(tmp_path / "stage") == []


# -- parsers on crafted output ----------------------------------------------------------------

def _attr_fields(kind=b"f", target=b"", mtime=b"1700000000.1234567890") -> list[bytes]:
    return [kind, b"644", b"12", b"1", b"1000", b"1000", b"1.0000000010", mtime,
            b"-2.5000000000", b"42", target]


def _framed(*records: list[bytes]) -> bytes:
    return b"".join(field + b"\0" for record in records for field in record)


def test_listing_parser_on_crafted_output():
    out = _framed(
        [b"A", *_attr_fields(b"d")],
        [b"E", b"new\nline", *_attr_fields()],
        [b"E", b"\xff\xfe", *_attr_fields(mtime=b"-2.9999999990")],
        [b"E", b"ln", *_attr_fields(b"l", b"target with spaces\n")],
        [b"E", b"vanished", *_attr_fields(b"?")],
        [b"X", b"0"],
    )
    (outcome,) = S.parse_output(out)
    own, entries = S.check_result(S.list_dir(b"/home/user/d"), outcome)
    assert own.is_dir and own.mode == stat.S_IFDIR | 0o644
    assert [e.name for e in entries] == [b"new\nline", b"\xff\xfe", b"ln"]
    first = entries[0].attrs
    assert first.mtime_ns == 1_700_000_000_123_456_789
    assert first.atime_ns == 1_000_000_001
    assert first.ctime_ns == -1_500_000_000
    assert (first.size, first.nlink, first.uid, first.gid, first.remote_ino) == (12, 1, 1000, 1000, 42)
    assert first.symlink_target is None
    assert entries[1].attrs.mtime_ns == -1_000_000_001
    assert entries[2].attrs.is_symlink and entries[2].attrs.symlink_target == b"target with spaces\n"


def test_parse_output_separates_fragments():
    out = _framed([b"A", *_attr_fields()], [b"X", b"0"], [b"X", b"39"], [b"V", b"aGk="], [b"X", b"0"])
    outcomes = S.parse_output(out)
    assert [o.status for o in outcomes] == [0, 39, 0]
    assert outcomes[2].records == [(b"V", [b"aGk="])]


@pytest.mark.parametrize("out", [
    b"stray\n",
    _framed([b"A", *_attr_fields()]) + b"junk",
    _framed([b"A", *_attr_fields()]),  # no status: the script died
    _framed([b"Q", b"1"], [b"X", b"0"]),
    b"A\0f\0",  # truncated record
])
def test_parse_output_rejects_bad_framing(out):
    with pytest.raises(S.FramingError):
        S.parse_output(out)


def test_time_conversions_are_exact():
    assert S.parse_time_ns(b"1700000000.1234567890") == 1_700_000_000_123_456_789
    assert S.parse_time_ns(b"-2.5000000000") == -1_500_000_000
    assert S.parse_time_ns(b"5") == 5 * 10**9
    assert S.touch_time(1_700_000_000_000_000_001) == "@1700000000.000000001"
    assert S.touch_time(-1_500_000_000) == "@-1.500000000"


def test_exit_code_table():
    assert S.errno_for_exit(2) == E.ENOENT
    assert S.errno_for_exit(1) == E.EPERM
    for code in (13, 17, 20, 21, 22, 28, 36, 39, 40, 61, 95):
        assert S.errno_for_exit(code) == code
    for unexpected in (18, 126, 127, 130, 255, 3):
        assert S.errno_for_exit(unexpected) == E.EIO


def test_script_shape():
    text = S.script([S.lstat(b"/home/user/a")])
    assert text.startswith("( export LC_ALL=C") and text.endswith(") </dev/null")
    assert len(S.script([S.mkdir(b"/home/user/" + b"\xff" * 255, 0o755)])) < 256 * 1024


def test_python_snippets_without_python3(tmp_path):
    """A VM without python3: xattrs are ENOTSUP, RENAME_EXCHANGE is refused (EINVAL), never EIO."""
    d = os.fsencode(tmp_path)
    frags = [S.getxattr(d, b"user.x"), S.rename(d + b"/a", d + b"/b", S.RENAME_EXCHANGE)]
    proc = subprocess.run(["/bin/bash", "-c", S.script(frags)], capture_output=True,
                          env={"PATH": "/nonexistent"}, timeout=30)
    assert [o.status for o in S.parse_output(proc.stdout)] == [E.ENOTSUP, E.EINVAL]


def test_mkdir_keeps_the_setgid_bit_inherited_from_its_parent(tmp_path):
    parent = tmp_path / "shared"
    parent.mkdir()
    os.chmod(parent, 0o2775)
    frag = S.mkdir(os.fsencode(parent / "child"), 0o750)
    (outcome,) = run_local([frag])
    attrs = S.check_result(frag, outcome)
    os.mkdir(tmp_path / "shared" / "local", 0o750)  # what mkdir(2) does on a local disk
    assert stat.S_IMODE(attrs.mode) == stat.S_IMODE(os.stat(tmp_path / "shared" / "local").st_mode) == 0o2750


def test_a_subtree_listing_gives_each_directory_whole_within_its_bound(tmp_path):
    """list_tree: breadth first, each directory listed whole or not at all, hostile names exact,
    the same attrs as list_dir."""
    root = os.fsencode(tmp_path / "t")
    os.makedirs(root + b"/a/deep/deeper")
    for i, name in enumerate(NAMES[:8]):
        with open(root + b"/a/" + name[:200], "wb") as f:
            f.write(b"x" * i)
    os.symlink(b"target", root + b"/link")
    frag = S.list_tree(root)
    own, tree = S.check_result(frag, run_local([frag])[0])
    assert own.is_dir and set(tree) == {b"", b"a", b"a/deep", b"a/deep/deeper"}
    assert sorted(e.name for e in tree[b"a"]) == sorted([b"deep"] + [n[:200] for n in NAMES[:8]])
    _, listed = S.check_result(S.list_dir(root + b"/a"), run_local([S.list_dir(root + b"/a")])[0])
    by_name = {e.name: e.attrs for e in tree[b"a"]}
    for entry in listed:  # the same attrs, but a directory's atime (the tree read it since)
        assert entry.attrs.is_dir or by_name[entry.name] == entry.attrs
    assert {e.name: e.attrs.symlink_target for e in tree[b""]}[b"link"] == b"target"
    bounded = S.list_tree(root, entries_max=2 + 9)  # room for t (2 entries) and a (9), not a/deep
    _, tree = S.check_result(bounded, run_local([bounded])[0])
    assert set(tree) == {b"", b"a"}


def test_a_large_directory_is_listed_in_pages_of_whole_entries(tmp_path):
    """list_dir stops past its limit (the caller then pages); list_dir_page gives byte-sorted
    pages after a name, hostile names exact, and says when more follow."""
    root = os.fsencode(tmp_path / "big")
    os.mkdir(root)
    names = sorted([b"f%03d" % i for i in range(20)] + [n[:200] for n in NAMES[:5]])
    for name in names:
        open(root + b"/" + name, "wb").close()
    _, first = call(S.list_dir(root, limit=10))
    assert len(first) == 11  # one more than the limit: "page it"
    _, whole = call(S.list_dir(root, limit=None))
    assert sorted(e.name for e in whole) == names
    listed, after, more = [], None, True
    while more:
        _, page, more = call(S.list_dir_page(root, after, limit=10))
        assert len(page) <= 10
        listed += page
        after = page[-1].name
    assert [e.name for e in listed] == names
    assert {e.name: e.attrs for e in listed} == {e.name: e.attrs for e in whole}
    assert errno_of(S.list_tree(root, entries_max=10)) == E.E2BIG
