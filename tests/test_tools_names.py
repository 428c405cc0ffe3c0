"""Hostile and unusual file names through a real mount: every name round-trips exactly, and no
name is ever executed by the shell scripts the mount runs in the VM (canary files)."""

from __future__ import annotations

import errno
import os
import stat

import pytest

from tests.conftest import WRITE_MODES
from tests.mountutil import Api, mounted

HOME = b"/home/user"

CANARIES = [b"CANARY", b"CANARY2", b"CANARY3", b"CANARY4", b"CANARY5"]
NAMES = [
    b"with space", b" leading and trailing space ", b"it's", b'say "hi"',
    b"$(cd;touch CANARY)", b"`cd;touch CANARY2`", b"a;touch CANARY3", b"x\\$(cd;touch CANARY4)",
    b"$(touch${IFS}CANARY5)", b"p|q", b"x&y&&z", b"star*", b"q?[ab]", b"back\\slash", b"new\nline",
    b"tab\tbed", b"-leading-dash", b"--", b"-rf", b"~tilde", b"#hash", b"!bang", b"{a,b}", b"<in>out",
    b"%s%n%p", b"\x1b[31mred", b"...", b".hidden",
    "e\u0301 combining \u0308marks".encode(), "emoji \U0001F600\U0001F469\u200d\U0001F4BB".encode(),
    "\u05e9\u05dc\u05d5\u05dd \u202eright-to-left".encode(), "\u0645\u0631\u062d\u0628\u0627".encode(),
    b"n" * 255, ("\u00e9" * 127).encode() + b"x",  # 255 bytes of two-byte characters (and one)
    b"bad\xff\xfeutf8", b"latin1-\xe9t\xe9", b"\x80",
]


@pytest.fixture(scope="module", params=list(WRITE_MODES))
def m(server, request):
    with mounted(server, *WRITE_MODES[request.param]) as mount:
        yield mount


def q(path: bytes) -> str:
    """A bash word for any bytes, written independently of the mount's own quoting."""
    return "$'" + "".join(f"\\x{b:02x}" for b in path) + "'"


def vm_names(api: Api, m, rel: bytes) -> list[bytes]:
    result = api.run(m.vm_id, f"find {q(HOME + b'/' + rel)} -mindepth 1 -maxdepth 1 -printf '%P\\0'")
    assert result.exit_code == 0, result.stderr
    return sorted(result.stdout.split(b"\0")[:-1])


def assert_no_canary(api: Api, m) -> None:
    for canary in CANARIES:
        for where in (m.path.encode(), os.getcwd().encode(), b"/tmp", os.path.expanduser("~").encode()):
            assert not os.path.lexists(os.path.join(where, canary)), (where, canary)
    listing = api.sh(m.vm_id, "ls -la /home/user /tmp; find /home/user /tmp -name 'CANARY*' -print")
    assert "CANARY" not in listing, listing


def test_every_name_round_trips_and_nothing_is_executed(m, api):
    for name in NAMES:
        assert len(name) <= 255 and b"/" not in name and b"\0" not in name
    base = m.p("names").encode()
    os.mkdir(base)
    for i, name in enumerate(NAMES):
        p = os.path.join(base, name)
        with open(p, "wb") as f:
            f.write(b"%d:" % i + name)
        st = os.stat(p)
        assert stat.S_ISREG(st.st_mode) and st.st_size == len(name) + len(b"%d:" % i)
    assert sorted(os.listdir(base)) == sorted(NAMES)
    assert vm_names(api, m, b"names") == sorted(NAMES)
    for i, name in enumerate(NAMES):
        remote = api.run(m.vm_id, f"cat {q(HOME + b'/names/' + name)}").stdout
        assert remote == b"%d:" % i + name
        # read-modify-write in place
        p = os.path.join(base, name)
        with open(p, "r+b") as f:
            assert f.read() == b"%d:" % i + name
            f.seek(0)
            f.write(b"W")
    # rename each one to a derived name (in a subdirectory with a hostile name itself), then back
    sub = os.path.join(base, b"$(cd;touch CANARY) dir\n")
    os.mkdir(sub)
    for name in NAMES:
        os.rename(os.path.join(base, name), os.path.join(sub, name[:250] + b".\xe2\x86\x92"))
    assert sorted(os.listdir(sub)) == sorted(n[:250] + b".\xe2\x86\x92" for n in NAMES)
    assert vm_names(api, m, b"names/" + os.path.basename(sub)) == sorted(n[:250] + b".\xe2\x86\x92" for n in NAMES)
    for i, name in enumerate(NAMES):
        with open(os.path.join(sub, name[:250] + b".\xe2\x86\x92"), "rb") as f:
            assert f.read() == b"W" + (b"%d:" % i + name)[1:]
        os.rename(os.path.join(sub, name[:250] + b".\xe2\x86\x92"), os.path.join(base, name))
    # symlinks whose names and targets are hostile, and hard links
    for name in NAMES[:12]:
        os.symlink(name, os.path.join(sub, name))
        assert os.readlink(os.path.join(sub, name)) == name
        os.link(os.path.join(base, name), os.path.join(sub, b"hard " + name[:200]))
    targets = api.run(m.vm_id, f"find {q(HOME + b'/names')} -mindepth 2 -type l -printf '%l\\0'")
    assert sorted(targets.stdout.split(b"\0")[:-1]) == sorted(NAMES[:12])
    # unlink everything, through the mount
    for name in NAMES:
        os.unlink(os.path.join(base, name))
    for entry in os.listdir(sub):
        os.unlink(os.path.join(sub, entry))
    os.rmdir(sub)
    assert os.listdir(base) == [] and vm_names(api, m, b"names") == []
    assert_no_canary(api, m)


def test_name_length_limits(m, api):
    d = m.p("long").encode()
    os.mkdir(d)
    ok = os.path.join(d, b"a" * 255)
    with open(ok, "wb") as f:
        f.write(b"x")
    os.mkdir(os.path.join(d, b"d" * 255))
    os.rename(ok, os.path.join(d, "\u00e9".encode() * 127 + b"z"))
    assert vm_names(api, m, b"long") == sorted([b"d" * 255, "\u00e9".encode() * 127 + b"z"])
    too_long = os.path.join(d, b"b" * 256)
    for fn in (lambda: open(too_long, "wb"), lambda: os.mkdir(too_long), lambda: os.symlink("t", too_long),
               lambda: os.rename(os.path.join(d, b"d" * 255), too_long), lambda: os.stat(too_long),
               lambda: os.mkfifo(too_long), lambda: os.link(os.path.join(d, b"d" * 255), too_long)):
        with pytest.raises(OSError) as info:
            fn()
        assert info.value.errno == errno.ENAMETOOLONG
    assert vm_names(api, m, b"long") == sorted([b"d" * 255, "\u00e9".encode() * 127 + b"z"])
    assert_no_canary(api, m)
