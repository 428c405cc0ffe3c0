"""Helpers of the model-based test (``tests/test_model.py``) and its regression tests.

- ``hostile_names``: hypothesis strategy of file names (bytes) from a hostile alphabet: shell
  metacharacters, quotes, newline/tab/CR, a leading ``-``, combining marks, emoji, right-to-left
  text and overrides, non-UTF-8 bytes, 255-byte names, and shell-injection *canaries* that would
  create ``CANARY`` files if any layer ever evaluated a name.
- ``outcome``: run one callable and reduce it to ``("ok", value)`` or ``("err", errno name)``,
  so the mount and the local reference can be compared exactly.
- ``snapshot``: a comparable picture of a local tree (the reference, or the tree seen through
  the mount); ``vm_snapshot``: the same picture of the VM's truth through the API (one ``run``
  listing with ``find``, contents by ``sync.read_file``, base64 through a run for names the
  sync API cannot carry).
- ``MountKeeper``: one VM + one live mount shared by many hypothesis examples, with a real
  ``remount`` (unmount, then mount the same VM again) and incremental daemon-log checks.
"""

from __future__ import annotations

import base64
import contextlib
import os
import re
import shlex
import signal
import stat
import threading
import time
from dataclasses import dataclass

from _pytest.outcomes import Failed
from hypothesis import strategies as st

from arkerfs.fs.shell import parse_time_ns
from tests.mountutil import Api, log_problems, mounted

HOME = b"/home/user"

# What an injected shell command would leave behind. A name cannot hold "/", so the name
# canaries reach the home by "cd" (no argument: $HOME) or by the run's working directory (the
# home); symlink targets can hold "/" and carry absolute ones too. Examples work in
# /home/user/<run>-exN, so a CANARY can only appear at these places by evaluation of a name.
# The VM's /tmp is private to each run, so only the home is checked there.
CANARY_VM = "/home/user/CANARY"
CANARY_LOCAL = ["/tmp/CANARY", os.path.expanduser("~/CANARY"), os.path.abspath("CANARY")]
CANARIES = [
    "$(touch CANARY)",
    "$(cd;touch CANARY)",
    ";cd;touch CANARY;",
    "`cd;touch CANARY`",
    "$(touch${IFS}CANARY)",
    "';cd;touch CANARY;'",
    '";cd;touch CANARY;"',
    "|touch CANARY",
    "&&touch CANARY&&",
    "\ntouch CANARY\n",
    "$'\\x24(touch CANARY)'",
    "\\$(touch CANARY)",
]
TARGET_CANARIES = CANARIES + [
    "$(touch /home/user/CANARY)",
    ";touch /home/user/CANARY;",
    "`touch /home/user/CANARY`",
    "`touch /tmp/CANARY`",
]

_FRAGMENTS = [
    "a", "b", "x", "f", "d", "A", "0", " ", "  ", "'", '"', "$", "`", ";", "|", "&", "*", "?", "\\",
    "\n", "\t", "\r", "-", "--", "-rf", ".", "~", "#", "!", "%", "{a,b}", "[ab]", "(", ")", "<", ">",
    "=", ",", ":", "@", "^", "\x01", "\x1b[31m", "\x7f",
    "e\u0301",  # combining acute accent (decomposed é)
    "\u00e9",  # precomposed é: a different name than the decomposed one
    "\U0001f600", "\U0001f469\u200d\U0001f4bb",  # emoji, ZWJ sequence
    "\u05e9\u05dc\u05d5\u05dd", "\u0645\u0631\u062d\u0628\u0627",  # Hebrew, Arabic (RTL)
    "\u202e", "\u200f", "\ufeff",  # RTL override, RTL mark, BOM
    "\u65e5\u672c",  # CJK
    "$HOME", "${PATH}", "$1", "$@", "$?", "!!", "%s%n", "\\x41", "\\0",
]
_RAW = [b"\xff", b"\xfe\xfd", b"\xc3", b"\x80abc"]  # not UTF-8: the sync API cannot carry these


def _clip(name: bytes, limit: int = 255) -> bytes:
    """``name`` cut to ``limit`` bytes without splitting a UTF-8 sequence."""
    if len(name) <= limit:
        return name
    cut = name[:limit]
    while cut and (cut[-1] & 0xC0) == 0x80:  # continuation byte: back up to a boundary
        cut = cut[:-1]
    if cut and cut[-1] >= 0xC0:  # a lead byte whose sequence was cut
        cut = cut[:-1]
    return cut


def _valid(name: bytes) -> bool:
    return bool(name) and name not in (b".", b"..") and b"/" not in name and b"\0" not in name


def _fill(fragment: str, total: int) -> bytes:
    """A name of exactly ``total`` bytes (or as close as the fragment allows) built from it."""
    unit = fragment.encode()
    name = unit * (total // len(unit))
    return name + b"x" * (total - len(name))


_piece = st.one_of(
    st.sampled_from(_FRAGMENTS).map(str.encode),
    st.sampled_from(CANARIES).map(str.encode),
    st.sampled_from(_RAW),
)

hostile_names = st.one_of(
    st.lists(_piece, min_size=1, max_size=4).map(lambda parts: _clip(b"".join(parts))),
    # exactly 255 bytes (the limit), with multi-byte characters in it
    st.sampled_from(["x", "é", "\U0001f600", "\u05e9", "-", " "]).map(lambda f: _fill(f, 255)),
    # canary-carrying long names
    st.sampled_from(CANARIES).map(lambda c: _clip((c * 40).encode())),
).filter(_valid)

too_long_names = st.sampled_from(["y", "é", "\U0001f600"]).map(lambda f: _fill(f, 256))

# symlink targets: hostile relative paths (never a ".." component, so they cannot leave the
# example's directory), or an absolute target that exists nowhere
symlink_targets = st.one_of(
    st.lists(hostile_names, min_size=1, max_size=3).map(b"/".join),
    st.just(b"/nonexistent-arkerfs-model/x"),
    st.sampled_from([c.encode() for c in TARGET_CANARIES]),
)


# -- outcomes ---------------------------------------------------------------------------------

def outcome(fn, *args, **kwargs):
    """``("ok", value)`` or ``("err", "EXXX")`` for an OSError; anything else propagates."""
    try:
        return ("ok", fn(*args, **kwargs))
    except OSError as exc:
        import errno as E
        return ("err", E.errorcode.get(exc.errno, str(exc.errno)))


# -- tree pictures ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Node:
    kind: str  # "f", "d", "l"
    mode: int  # permission bits (with set-id/sticky)
    size: int | None  # None for directories (their size depends on the fs's history)
    nlink: int | None  # None for directories (depends on the backing fs: btrfs says 1)
    mtime_ns: int
    content: bytes | None = None  # regular files
    target: bytes | None = None  # symlinks
    ino: int = 0  # used only to group hard links


def _kind(mode: int) -> str:
    if stat.S_ISREG(mode):
        return "f"
    if stat.S_ISDIR(mode):
        return "d"
    if stat.S_ISLNK(mode):
        return "l"
    return f"?{stat.S_IFMT(mode):o}"


def snapshot(root: bytes) -> dict[bytes, Node]:
    """Every node under ``root`` (relative path -> Node), not following symlinks."""
    out: dict[bytes, Node] = {}

    def walk(rel: bytes) -> None:
        path = os.path.join(root, rel) if rel else root
        for name in sorted(os.listdir(path)):
            child = os.path.join(rel, name) if rel else name
            full = os.path.join(root, child)
            st_ = os.lstat(full)
            kind = _kind(st_.st_mode)
            content = target = None
            if kind == "f":
                with open(full, "rb") as f:
                    content = f.read()
            elif kind == "l":
                target = os.readlink(full)
            is_dir = kind == "d"
            out[child] = Node(kind, stat.S_IMODE(st_.st_mode), None if is_dir else st_.st_size,
                              None if is_dir else st_.st_nlink, st_.st_mtime_ns, content, target,
                              st_.st_ino)
            if is_dir:
                walk(child)

    walk(b"")
    return out


def link_groups(tree: dict[bytes, Node]) -> set[frozenset[bytes]]:
    """Paths of non-directories grouped by inode: which names are one file."""
    groups: dict[int, set[bytes]] = {}
    for path, node in tree.items():
        if node.kind != "d":
            groups.setdefault(node.ino, set()).add(path)
    return {frozenset(g) for g in groups.values()}


def diff_trees(want: dict[bytes, Node], got: dict[bytes, Node], explicit_mtimes: set[int],
               label: str, *, groups: bool = True) -> list[str]:
    """Differences of ``got`` from ``want`` (the reference). mtimes are compared only for
    non-directories whose reference mtime is one the test set explicitly (``explicit_mtimes``):
    other mtimes are "now" on two different clocks, and a directory's mtime also moves on the
    VM when an upload is renamed into it (atomic whole-file writes)."""
    problems = []
    for path in sorted(set(want) | set(got)):
        w, g = want.get(path), got.get(path)
        if w is None or g is None:
            problems.append(f"{label}: {path!r} only in {'reference' if g is None else label}")
            continue
        for field in ("kind", "mode", "size", "nlink", "content", "target"):
            if getattr(w, field) != getattr(g, field):
                wv, gv = getattr(w, field), getattr(g, field)
                if field == "mode":
                    wv, gv = oct(wv), oct(gv)
                if field == "content" and wv is not None and gv is not None and len(wv) + len(gv) > 200:
                    wv, gv = _brief(wv), _brief(gv)
                problems.append(f"{label}: {path!r} {field}: reference {wv!r}, {label} {gv!r}")
        if w.kind != "d" and w.mtime_ns in explicit_mtimes and w.mtime_ns != g.mtime_ns:
            problems.append(f"{label}: {path!r} mtime: reference {w.mtime_ns}, {label} {g.mtime_ns}")
    if groups and not problems:
        wg, gg = link_groups(want), link_groups(got)
        if wg != gg:
            problems.append(f"{label}: hard-link groups differ: reference {sorted(map(sorted, wg))}, "
                            f"{label} {sorted(map(sorted, gg))}")
    return problems


def _brief(data: bytes) -> str:
    return f"<{len(data)} bytes, head {data[:40]!r}, tail {data[-20:]!r}>"


# -- the VM's truth -------------------------------------------------------------------------------

def _sync_ok(path: bytes) -> bool:
    try:
        path.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def vm_snapshot(api: Api, vm_id: str, vm_root: bytes) -> dict[bytes, Node]:
    """The tree under ``vm_root`` as the VM has it: one ``find`` run, then every file's bytes."""
    q = _quote(vm_root)
    listing = api.run(vm_id, f"cd {q} && find . -mindepth 1 -printf "
                             r"'%P\0%y\0%m\0%s\0%n\0%T@\0%i\0%l\0'")
    assert listing.exit_code == 0, listing.stderr
    fields = listing.stdout.split(b"\0")[:-1]
    out: dict[bytes, Node] = {}
    raw_files = []
    for i in range(0, len(fields), 8):
        rel, kind, perm, size, nlink, mtime, ino, target = fields[i:i + 8]
        kind = kind.decode()
        full = vm_root + b"/" + rel
        content = None
        if kind == "f":
            if _sync_ok(full):
                content = api.read_file(vm_id, full.decode())
            else:
                raw_files.append(rel)
        is_dir = kind == "d"
        out[rel] = Node(kind, int(perm, 8), None if is_dir else int(size), None if is_dir else int(nlink),
                        parse_time_ns(mtime), content, target if kind == "l" else None, int(ino))
    for rel in raw_files:  # names sync cannot carry: base64 through a run
        got = api.run(vm_id, f"base64 -w0 -- {_quote(vm_root + b'/' + rel)}")
        assert got.exit_code == 0, got.stderr
        node = out[rel]
        out[rel] = Node(node.kind, node.mode, node.size, node.nlink, node.mtime_ns,
                        base64.b64decode(got.stdout), None, node.ino)
    return out


def _quote(path: bytes) -> str:
    try:
        return shlex.quote(path.decode("utf-8"))
    except UnicodeDecodeError:
        return "$'" + "".join(f"\\x{b:02x}" for b in path) + "'"


def canaries(api: Api, vm_id: str) -> list[str]:
    found = []
    got = api.run(vm_id, f"ls -d {CANARY_VM} 2>/dev/null; true")
    if got.stdout.strip():
        found.append(f"VM: {got.stdout.decode().strip()}")
    found += [f"local: {p}" for p in CANARY_LOCAL if os.path.lexists(p)]
    return found


# -- one mount for many examples ------------------------------------------------------------------

class MountKeeper:
    """One VM and one mount of it, re-mountable, for a whole hypothesis run."""

    def __init__(self, server, *daemon_args: str, remount_every: int = 12) -> None:
        self.server = server
        self.remount_every = remount_every
        self.daemon_args = daemon_args
        self.api = Api(server)
        self.vm_id = self.api.fork()
        self._cm = None
        self.mount = None
        self._log_seen = 0
        self.hung: str | None = None  # what the watchdog caught hanging (the daemon was killed)

    @property
    def path(self) -> bytes:
        return os.fsencode(self.mount.path)

    def up(self) -> None:
        if self.mount is not None and self.hung:
            self.down()
        if self.mount is not None:
            return
        cm = mounted(self.server, *self.daemon_args, vm_id=self.vm_id)
        try:
            self.mount = cm.__enter__()
        except Failed as exc:  # pytest.fail is a BaseException: hypothesis would not shrink it
            raise AssertionError(f"mount failed: {exc}") from None
        self._cm = cm
        self._log_seen = 0

    def down(self) -> None:
        """Unmount (pushing everything), with the mount helper's teardown checks."""
        cm, mount, self._cm, self.mount = self._cm, self.mount, None, None
        if cm is None:
            return
        if self.hung:  # killed by the watchdog: the failure was reported where it hung
            mount.expect_exit = None
            mount.allow_log(".")
            self.hung = None
        try:
            cm.__exit__(None, None, None)
        except Failed as exc:
            raise AssertionError(f"unmount: {exc}") from None

    @contextlib.contextmanager
    def watchdog(self, what: str, seconds: float = 60.0):
        """Fail (instead of hanging the whole run) when the block takes longer than ``seconds``:
        the daemon's stacks go to its log (SIGUSR1), then it is killed, which makes the
        kernel fail the stuck request; the AssertionError carries the log's tail."""
        timer = threading.Timer(seconds, self._kill_hung, args=(what,))
        timer.daemon = True
        timer.start()
        try:
            yield
        finally:
            timer.cancel()
        if self.hung:
            raise AssertionError(f"{what} hung for {seconds:.0f} s; daemon log tail:\n"
                                 + self.mount.log()[-6000:])

    def _kill_hung(self, what: str) -> None:
        mount = self.mount
        if mount is None or mount.proc.poll() is not None:
            return
        self.hung = what
        mount.proc.send_signal(signal.SIGUSR1)
        time.sleep(1)
        mount.proc.kill()

    def remount(self) -> None:
        self.down()
        self.up()

    def example(self, exdir: bytes, create: bool = True):
        """The os module on ``/home/user/<exdir>`` through the mount (made if ``create``)."""
        from tests.modelrules import OsFS  # (modelrules imports this module)
        root = self.path + b"/" + exdir
        if create:
            os.mkdir(root)
        return OsFS(root)

    def vm_snapshot(self, vm_root: bytes) -> dict[bytes, Node]:
        return vm_snapshot(self.api, self.vm_id, vm_root)

    def canaries(self) -> list[str]:
        return canaries(self.api, self.vm_id)

    def new_log_problems(self) -> list[str]:
        """WARNING/ERROR/Traceback lines the daemon logged since the last call."""
        if self.mount is None:
            return []
        text = self.mount.log()
        new, self._log_seen = text[self._log_seen:], len(text)
        found = log_problems(new, self.mount.allowed)
        for line in found:  # reported now: the unmount check must not report them again
            self.mount.allow_log("^" + re.escape(line) + "$")
        return found
