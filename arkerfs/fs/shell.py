"""Shell script fragments for every remote metadata operation, and the parsers of their output.

Why this module exists and is pure (no I/O): a ``run`` is the only way to touch metadata on the
VM, and every run costs a full HTTP round trip, so each POSIX operation must be *one* script
that checks its own preconditions, does the change and prints the node's fresh attributes.
Keeping the text generation and the parsing here, free of I/O, makes them unit-testable against
a local ``bash`` and lets a future batcher join several fragments into one run.

Script conventions (the contract between the builders here and ``RemoteFS``):

* A **fragment** is a shell body that runs in its own subshell ``( ... )``, so ``exit`` inside
  it ends only that fragment. It tests conditions itself and exits with an **errno number**
  (see ``EXIT_ERRNO``); it never relies on a tool's exit status or on parsing localised text.
  Tools that fail anyway (races, ENOSPC...) go through the prelude's ``_t``, which maps the
  C-locale strerror suffix of the tool's message (fixed glibc text, ``LC_ALL=C``) to an errno
  and otherwise exits 5 (EIO).
* A **script** is ``( export LC_ALL=C; <prelude>; <fragment 1>; <fragment 2>; ... ) </dev/null``:
  a subshell so ``cd``/``exit``/shell options can neither break nor be broken by the session,
  stdin from ``/dev/null`` so nothing blocks. Its exit status is the last fragment's status.
* Output is a stream of **NUL-terminated fields** grouped into records. A record is a tag field
  followed by a fixed number of fields (``ARITY``); names are the only free-form bytes and can
  never contain NUL, so framing can't be confused by a hostile name. After each fragment the
  script prints ``X<NUL><status><NUL>``, so each fragment's outcome is recoverable on its own.
  Tags: ``A`` attrs of a node (11 fields), ``E`` a directory entry (name + 11), ``V`` a value,
  ``S`` statfs (8), ``P`` a staged copy, ``C`` where a conflicting local version was kept
  (``batch.install``), ``Y`` a listed entry's user xattr name (python listings: so a
  ``cp -a`` out of the mount asks nothing per file), ``X`` the end of a fragment.
* Names are quoted with ``shlex.quote`` when they are UTF-8 (the JSON command string carries
  them as they are) and with bash ANSI-C quoting ``$'\\xNN'`` otherwise. Every path is absolute
  (so no tool mistakes it for an option) and ``--`` is passed wherever the tool accepts it.
  ``python3 -c`` snippets (renameat2, mknod of sockets, xattrs) get their arguments base64-encoded.
* Exit statuses set on purpose (``EXIT_ERRNO``): 2 ENOENT (missing name or parent),
  20 ENOTDIR (a parent is not a directory; rmdir of a non-directory; dir renamed over a
  non-directory), 17 EEXIST (mkdir/create/symlink/link/mknod target exists, RENAME_NOREPLACE,
  XATTR_CREATE), 21 EISDIR (unlink of a directory, file renamed over a directory, truncate of
  a directory), 39 ENOTEMPTY (rmdir, rename over a non-empty directory), 22 EINVAL (rename into
  its own subtree, readlink of a non-link, truncate of a non-file, RENAME_EXCHANGE unavailable),
  1 EPERM (hard link to a directory, socket mknod without python3), 13 EACCES (parent not
  writable/searchable), 61 ENODATA (missing xattr, XATTR_REPLACE; also get/remove
  where the filesystem stores no user xattrs), 95 ENOTSUP (setxattr there, or no python3), 5 EIO (a tool failed for a reason nothing explains), and
  from ``_t``'s strerror mapping also 28 ENOSPC, 122 EDQUOT, 30 EROFS, 36 ENAMETOOLONG,
  40 ELOOP, 31 EMLINK, 27 EFBIG, 26 ETXTBSY, 16 EBUSY. python3 snippets exit with
  ``OSError.errno`` (e.g. 7 E2BIG, 34 ERANGE for xattrs).
  18 (EXDEV) is never produced: a FUSE rename answering EXDEV makes ``mv`` copy instead.
* Times come from ``find -printf %A@``, which prints ``tv_sec`` and ``tv_nsec`` joined by ``.``
  (10 fractional digits, even for negative seconds: ``-2.5000000000`` means -2 s + 0.5 s);
  they are parsed from the string into exact integers, never through a float.
"""

from __future__ import annotations

import base64
import errno as E
import shlex
import stat
import textwrap
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from arkerfs.fs.errors import FsError
from arkerfs.fs.model import Attrs, Entry, StatFs
from arkerfs.protocol import HOME

HOME_B = HOME.encode()
STAGING_DIR = HOME_B + b"/.arkerfs"  # hidden from the home's listing
STAGING = STAGING_DIR + b"/staging"

RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2
XATTR_CREATE = 1
XATTR_REPLACE = 2

# Exit statuses a script sets on purpose, each an errno number. 5 (EIO) is a tool that failed
# for a reason the script could not classify. Anything else (1xx from bash itself, 126/127,
# 128+signal, 18 EXDEV which a FUSE rename must never return) is unexpected and becomes EIO.
EXIT_ERRNO: dict[int, int] = {
    code: code
    for code in (
        E.EPERM, E.ENOENT, E.EIO, E.E2BIG, E.EACCES, E.EBUSY, E.EEXIST, E.ENOTDIR, E.EISDIR,
        E.EINVAL, E.ETXTBSY, E.EFBIG, E.ENOSPC, E.EROFS, E.EMLINK, E.ERANGE, E.ENAMETOOLONG,
        E.ENOTEMPTY, E.ELOOP, E.ENODATA, E.ENOTSUP, E.EDQUOT,
    )
}


def errno_for_exit(code: int) -> int:
    """The errno a fragment's exit status stands for (EIO for anything not set on purpose)."""
    return EXIT_ERRNO.get(code, E.EIO)


# -- quoting ------------------------------------------------------------------------------

def quote(name: bytes) -> str:
    """One shell word that bash expands back to exactly ``name`` (any bytes but NUL)."""
    if b"\0" in name:
        raise ValueError("a shell word cannot carry NUL")
    try:
        return shlex.quote(name.decode("utf-8"))
    except UnicodeDecodeError:
        # JSON can't carry these bytes: spell every byte that isn't plainly safe as \xNN.
        safe = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789/._-"
        return "$'" + "".join(chr(b) if b in safe else f"\\x{b:02x}" for b in name) + "'"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def parent_of(path: bytes) -> bytes:
    return path.rsplit(b"/", 1)[0] or b"/"


def touch_time(ns: int) -> str:
    """``@SEC.NNNNNNNNN`` for ``touch -d``, exact to the nanosecond (sign applies to the whole)."""
    sign = "-" if ns < 0 else ""
    sec, frac = divmod(abs(ns), 10**9)
    return f"@{sign}{sec}.{frac:09d}"


def parse_time_ns(field: bytes) -> int:
    """``find``'s ``%A@``/``%T@``/``%C@`` (``<tv_sec>.<tv_nsec, 10 digits>``) as exact ns."""
    sec, _, frac = field.partition(b".")
    return int(sec) * 10**9 + int((frac + b"000000000")[:9])


# -- the prelude: helpers every fragment may call -----------------------------------------

# find -printf fields of one node, each NUL-terminated: type, permission bits (octal), size,
# nlink, uid, gid, atime, mtime, ctime, inode, symlink target. Kept in $F with literal '\0'.
_ATTR_FMT = r"%y\0%m\0%s\0%n\0%U\0%G\0%A@\0%T@\0%C@\0%i\0%l\0"

# Tool failures the script could not rule out beforehand, by the C-locale strerror suffix.
_STRERROR_EXIT = [
    ("No such file or directory", E.ENOENT), ("Not a directory", E.ENOTDIR),
    ("File exists", E.EEXIST), ("Is a directory", E.EISDIR),
    ("Directory not empty", E.ENOTEMPTY), ("Permission denied", E.EACCES),
    ("Operation not permitted", E.EPERM), ("No space left on device", E.ENOSPC),
    ("Disk quota exceeded", E.EDQUOT), ("Read-only file system", E.EROFS),
    ("File name too long", E.ENAMETOOLONG), ("Too many levels of symbolic links", E.ELOOP),
    ("Too many links", E.EMLINK), ("File too large", E.EFBIG), ("Text file busy", E.ETXTBSY),
    ("Device or resource busy", E.EBUSY),
    ("Invalid argument", E.EINVAL),
]

# The prelude's _inst and _rnf in python3, for a batch of them in one process (``_pi``): stdin
# has one line per step (``install_line``, ``rename_line``); each prints its records and its X
# status; the first failure ends the run with its status. The same steps and outcomes as the
# shell functions, step by step (rename(2) itself replaces a target a symlink points to).
_PY_INSTALL = """import os,sys,base64,fnmatch,shutil,stat
w=sys.stdout.buffer.write
def out(*f): w(b''.join(x+b'\\0' for x in f))
def ns(t):
    t=t[1:]; g=-1 if t[:1]==b'-' else 1; a,_,b=t.lstrip(b'-').partition(b'.')
    return g*(int(a)*10**9+int(b))
def tm(n):
    a,b=divmod(n,10**9); return b'%d.%09d0'%(a,b)
def reg(p):
    try: return stat.S_ISREG(os.lstat(p).st_mode)
    except FileNotFoundError: return False
def sm(f,m,at,mt):
    os.chmod(f,m); os.utime(f,ns=(at,mt),follow_symlinks=False)
def st(p):
    s=os.lstat(p); k=stat.S_IFMT(s.st_mode)
    y={stat.S_IFREG:b'f',stat.S_IFDIR:b'd',stat.S_IFLNK:b'l',stat.S_IFIFO:b'p',stat.S_IFSOCK:b's',stat.S_IFBLK:b'b',stat.S_IFCHR:b'c'}[k]
    out(b'A',y,b'%o'%(s.st_mode&0o7777),b'%d'%s.st_size,b'%d'%s.st_nlink,b'%d'%s.st_uid,b'%d'%s.st_gid,
        tm(s.st_atime_ns),tm(s.st_mtime_ns),tm(s.st_ctime_ns),b'%d'%s.st_ino,os.readlink(p) if k==stat.S_IFLNK else b'')
def ne(p):
    d=p
    while True:
        d=d.rpartition(b'/')[0]
        if not d or os.path.exists(d): break
    return 2 if not d or os.path.isdir(d) else 20
def pd(d):
    if not os.path.exists(d): return ne(d)
    if not os.path.isdir(d): return 20
    return 0 if os.access(d,os.W_OK|os.X_OK) else 13
def rnf(o,n,nr):
    if not os.path.lexists(o): return 0 if os.path.lexists(n) else ne(o)
    e=pd(o.rpartition(b'/')[0]) or pd(n.rpartition(b'/')[0])
    if e: return e
    if os.path.lexists(n):
        if nr==b'1': return 17
        a,b=os.lstat(o),os.lstat(n)
        if (a.st_dev,a.st_ino)==(b.st_dev,b.st_ino): return 0
        if stat.S_ISDIR(b.st_mode): return 21
    os.rename(o,n); return 0
def inst(s,p,m,at,mt,ex,mine,new,stamp,rec,home,inplace):
    x=b'.conflict-'+stamp; d,_,n=p.rpartition(b'/'); c=d+b'/'+n[:255-len(x)]+x
    r=rec+b'/'+stamp+(p[len(home):] if p.startswith(home) else p)
    if m==b'-': m=stat.S_IMODE(os.lstat(p).st_mode) if reg(p) else 0o644
    else: m=int(m,8)
    if new==b'1' or new[:2]==b'b:':
        os.makedirs(os.path.dirname(s),exist_ok=True)
        with open(s,'wb') as f: f.write(base64.b64decode(new[2:]) if new!=b'1' else b'')
    if not os.path.isfile(s): return 5
    sm(s,m,ns(at),ns(mt))
    if not os.path.isdir(d):
        os.makedirs(os.path.dirname(r),exist_ok=True); os.rename(s,r); out(b'C',r); return 0
    now=None
    if os.path.lexists(p):
        if reg(p):
            q=os.lstat(p); now=b'%d:%d:'%(q.st_ino,q.st_size)+tm(q.st_mtime_ns)
        else: now=b'other'
    if mine!=b'-' and now is not None:
        for v in mine.split():
            if now.endswith(b':'+v):
                try: os.unlink(s)
                except FileNotFoundError: pass
                st(p); return 0
    if ex!=b'-' and not any(fnmatch.fnmatchcase(now or b'none',v) for v in ex.split()):
        os.rename(s,c); out(b'C',c); return 0
    if inplace==b'1' or (reg(p) and not os.access(d,os.W_OK)):
        with open(s,'rb') as f, open(p,'wb') as g: shutil.copyfileobj(f,g)
        os.unlink(s); sm(p,m,ns(at),ns(mt))
    else: os.rename(s,p)
    st(p); return 0
for l in sys.stdin.buffer:
    f=l.split()
    a=[x if i==8 else base64.b64decode(x) for i,x in enumerate(f) if i]
    try: e=inst(*a) if f[0]==b'I' else rnf(*a)
    except OSError as o: e=o.errno if o.errno and 0<o.errno<256 else 5
    except Exception:
        import traceback; traceback.print_exc(); e=5
    out(b'X',b'%d'%e); sys.stdout.flush()
    if e: sys.exit(e)
"""
# a run of at least this many installs and file renames goes through one python3 process (_pi)
# when the VM has one: a shell _inst forks about ten processes per file
PY_INSTALL_MIN = 4


PRELUDE = "\n".join([
    f"F='{_ATTR_FMT}'",
    # _x P: P exists (a dangling symlink counts).
    '_x() { [ -e "$1" ] || [ -L "$1" ]; }',
    # _ne P: exit with the errno of looking up the missing P: walk up to the deepest existing
    # ancestor; a directory there means ENOENT, anything else ENOTDIR.
    '_ne() { local d=$1; while d=${d%/*}; [ -n "$d" ] && [ ! -e "$d" ]; do :; done;'
    ' if [ -z "$d" ] || [ -d "$d" ]; then exit 2; fi; exit 20; }',
    # _pd D: D is a directory we may create entries in.
    '_pd() { [ -e "$1" ] || _ne "$1"; [ -d "$1" ] || exit 20; [ -w "$1" ] && [ -x "$1" ] || exit 13; }',
    # _st P: print P's attrs record (never following a final symlink).
    '_st() { find "$1" -maxdepth 0 -printf "A\\0$F" 2>/dev/null || { _x "$1" || _ne "$1"; exit 5; }; }',
    # _t CMD...: run a tool with stdout discarded; on failure exit with the errno its message ends with.
    '_t() { local m; m=$("$@" 2>&1 >/dev/null) && return 0; printf "%s\\n" "$m" >&2; case $m in '
    + " ".join(f'*": {text}") exit {code};;' for text, code in _STRERROR_EXIT)
    + " esac; exit 5; }",
    # _sm F MODE ATIME MTIME: F's permission bits and exact times (never following a symlink).
    '_sm() { _t chmod "$2" -- "$1"; _t touch -h -c -a -d "$3" -- "$1"; _t touch -h -c -m -d "$4" -- "$1"; }',
    # _inst S P MODE ATIME MTIME EXPECT MINE NEW STAMP RECOVERY HOME [INPLACE]: install staged S
    # at P (fs.batch.install, the compare-and-swap of both write modes); NEW is 1 for an empty
    # file, b:<base64> for a small content carried in the script itself; the conflict copy's
    # name is P's, cut to keep 255 bytes (LC_ALL=C: bytes). MODE - keeps P's (0644 for a new
    # file), as a sync write does. INPLACE 1 (a file with hard links),
    # or a directory we may not add names to, copies the bytes into P's own inode (not atomic).
    '_inst() { local s=$1 p=$2 m=$3 now= x=".conflict-$9" n=${2##*/}; local c="${p%/*}/${n:0:$((255-${#x}))}$x" r="${10}/$9${p#"${11}"}"'
    '; [ "$m" = - ] && { m=644; [ -f "$p" ] && [ ! -L "$p" ] && m=$(stat -c %a -- "$p"); }'
    '; case $8 in 1) _t mkdir -p -- "${s%/*}"; : > "$s" || exit 5;;'
    ' b:*) _t mkdir -p -- "${s%/*}"; printf %s "${8#b:}" | base64 -d > "$s" || exit 5;; esac'
    '; [ -f "$s" ] || exit 5'
    '; _sm "$s" "$m" "$4" "$5"'
    # the target's directory is gone: keep the local version under the recovery directory
    '; if [ ! -d "${p%/*}" ]; then _t mkdir -p -- "${r%/*}"; _t mv -f -T -- "$s" "$r"; printf "C\\0%s\\0" "$r"; exit 0; fi'
    # what is there now, as Version.printed prints it ("" when absent)
    '; _x "$p" && { [ -f "$p" ] && [ ! -L "$p" ] && now=$(find "$p" -maxdepth 0 -printf "%i:%s:%T@") || now=other; }'
    # already this very version, or one the batch installs later (a batch sent again): done
    '; if [ "$7" != - ]; then for v in $7; do case $now in *:"$v") rm -f -- "$s"; _st "$p"; exit 0;; esac; done; fi'
    # EXPECT: the versions the mount may replace (case patterns; "none": absent), "-" for any
    '; if [ "$6" != - ]; then local ok=; set -f; for v in $6; do case ${now:-none} in $v) ok=1;; esac; done'
    '; [ -n "$ok" ] || { _t mv -f -T -- "$s" "$c"; printf "C\\0%s\\0" "$c"; exit 0; }; fi'
    '; if [ "${12}" = 1 ] || { [ -f "$p" ] && [ ! -L "$p" ] && [ ! -w "${p%/*}" ]; }; then _t cp -- "$s" "$p"; rm -f -- "$s"; _sm "$p" "$m" "$4" "$5"'
    '; else _t mv -f -T -- "$s" "$p"; fi; _st "$p"; }',
    # _rnf O N NOREPLACE: rename(2) of a non-directory, as ``rename`` checks it; done already
    # (O gone, N there: a batch sent again) succeeds
    '_rnf() { local o=$1 n=$2; _x "$o" || { _x "$n" && exit 0; _ne "$o"; }; _pd "${o%/*}"; _pd "${n%/*}"'
    '; if _x "$n"; then [ "$3" = 1 ] && exit 17; set -- $(stat -c %d:%i -- "$o" "$n")'
    '; [ -n "$2" ] && [ "$1" = "$2" ] && exit 0; [ -d "$n" ] && [ ! -L "$n" ] && exit 21'
    '; [ -L "$o" ] && [ "$o" -ef "$n" ] && _t rm -f -- "$n"; fi; _t mv -f -T -- "$o" "$n"; }',
    # _py N CODE ARGS...: a python3 snippet, whose exit status is already an errno; N is the
    # errno for a VM without python3.
    '_py() { local n=$1; shift; command -v python3 >/dev/null || exit $n; python3 -I -S -c "$@" || exit $?; }',
    # _pi: installs and file renames on stdin, one line each (``install_line``, ``rename_line``),
    # in ONE python3 process that prints each one's records and status like a fragment; without
    # python3, each line through _inst/_rnf in its own subshell (the fields base64, but for the
    # op and an install's content marker). Stops at the first failure with its status.
    '_pi() { if command -v python3 >/dev/null; then python3 -I -S -c "$_PYI"; return; fi'
    '; local l f x i a o; while IFS= read -r l; do a=(); i=0; o=; for f in $l; do i=$((i+1))'
    '; if [ $i = 1 ]; then o=$f; elif [ $i = 9 ]; then a+=("$f"); else x=$(printf %s "$f" | base64 -d; printf .); a+=("${x%.}"); fi; done'
    "; ( if [ \"$o\" = I ]; then _inst \"${a[@]}\"; else _rnf \"${a[@]}\"; fi\n: ); _s=$?; printf 'X\\0%d\\0' $_s"
    "; [ $_s = 0 ] || return $_s; done; }",
])

# Wrapped around every python3 snippet: arguments arrive base64-encoded in ``a``, records go
# out through ``out``, an OSError exits with its errno, anything else with EIO.
_PY_HEAD = """import os,sys,base64
a=[base64.b64decode(x) for x in sys.argv[1:]]
def out(*f):
    sys.stdout.buffer.write(b''.join(x+b'\\0' for x in f))
try:
"""
_PY_TAIL = """
    sys.stdout.flush()
except OSError as e:
    sys.exit(e.errno if 0<e.errno<256 else 5)
except Exception:
    import traceback
    traceback.print_exc()
    sys.exit(5)
"""


def _python(missing: int, body: str, *args: bytes) -> str:
    """Shell running python3 ``body`` on ``args``; exit ``missing`` where python3 is absent."""
    code = _PY_HEAD + "\n".join("    " + line for line in body.strip().splitlines()) + _PY_TAIL
    return f"_py {missing} " + " ".join(shlex.quote(word) for word in [code, *(b64(a) for a in args)])


# -- fragments, scripts and output framing --------------------------------------------------

Record = tuple[bytes, list[bytes]]
ARITY = {b"A": 11, b"E": 12, b"V": 1, b"S": 8, b"P": 1, b"X": 1, b"C": 1, b"R": 4, b"L": 1, b"T": 13, b"M": 1,
         # the change watcher's (``vmwatch``)
         b"U": 12, b"G": 1, b"D": 1, b"N": 1, b"Z": 4,
         # a listed entry's user xattr name (``_with_xattrs``)
         b"Y": 3}


@dataclass(frozen=True, slots=True)
class Fragment:
    """One operation: shell ``body`` (runs in its own subshell) and ``parse`` of its records.

    ``parse`` is called only when the fragment's status is 0."""

    body: str
    parse: Callable[[list[Record]], Any]
    # an install (``fs.batch.install``): the same step as one line for ``_pi``, which runs a
    # run of them in one python3 process
    install_line: str | None = None


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one fragment printed: its exit status and its records."""

    status: int
    records: list[Record]


class FramingError(ValueError):
    """The output does not follow the record framing (truncated, or stray output)."""


def script(fragments: Sequence[Fragment], *, stop_at_failure: bool = False) -> str:
    """The command for one run executing ``fragments`` in order; with ``stop_at_failure`` the
    first fragment that fails ends the run (its status is the run's; later ones never run)."""
    parts = ["( export LC_ALL=C", PRELUDE]
    stop = "; [ $_s = 0 ] || exit $_s" if stop_at_failure else ""
    i = 0
    while i < len(fragments):
        run = _install_run(fragments, i) if stop_at_failure else 0
        if run >= PY_INSTALL_MIN:
            if not any(p.startswith("_PYI=") for p in parts):
                parts.append("_PYI=" + shlex.quote(_PY_INSTALL))
            lines = "\n".join(f.install_line for f in fragments[i:i + run])
            parts.append(f"_pi <<'{_INSTALLS_END}'\n{lines}\n{_INSTALLS_END}\n_s=$?{stop}")
            i += run
            continue
        # ":" last: a fragment fails only through an explicit "exit N", never by a stray status
        parts.append(f"( {fragments[i].body}\n: ); _s=$?; printf 'X\\0%d\\0' $_s{stop}")
        i += 1
    parts.append("exit $_s ) </dev/null")
    return "\n".join(parts)


_INSTALLS_END = "ARKERFS_INSTALLS_END"


def _install_run(fragments: Sequence[Fragment], start: int) -> int:
    """How many fragments from ``start`` on are installs, in a row."""
    end = start
    while end < len(fragments) and fragments[end].install_line is not None:
        end += 1
    return end - start


def install_line(*fields: bytes, content: str) -> str:
    """One ``_pi`` line for ``_inst``: ``fields`` (its arguments but the 8th) base64, ``content``
    (the 8th: ``-``, ``1`` or ``b:<base64>``) as it is, in its place."""
    words = [b64(f) for f in fields]
    return " ".join(["I", *words[:7], content, *words[7:]])


def rename_line(old: bytes, new: bytes, noreplace: bool) -> str:
    """One ``_pi`` line for ``_rnf``."""
    return " ".join(["R", b64(old), b64(new), b64(b"1" if noreplace else b"0")])


def parse_output(stdout: bytes) -> list[Outcome]:
    """Split a script's stdout into one ``Outcome`` per fragment that finished."""
    fields = stdout.split(b"\0")
    if fields[-1] != b"":
        raise FramingError(f"output does not end with a NUL: ...{stdout[-40:]!r}")
    outcomes: list[Outcome] = []
    records: list[Record] = []
    i, end = 0, len(fields) - 1
    while i < end:
        tag = fields[i]
        arity = ARITY.get(tag)
        if arity is None or i + 1 + arity > end:
            raise FramingError(f"bad record at field {i}: {tag[:40]!r}")
        body = fields[i + 1 : i + 1 + arity]
        i += 1 + arity
        if tag == b"X":
            outcomes.append(Outcome(int(body[0]), records))
            records = []
        else:
            records.append((tag, body))
    if records:
        raise FramingError("records after the last fragment status")
    return outcomes


# -- attribute records ------------------------------------------------------------------------

_TYPE_BITS = {
    b"f": stat.S_IFREG, b"d": stat.S_IFDIR, b"l": stat.S_IFLNK, b"p": stat.S_IFIFO,
    b"s": stat.S_IFSOCK, b"b": stat.S_IFBLK, b"c": stat.S_IFCHR,
}


def parse_attrs(fields: Sequence[bytes]) -> Attrs:
    """The 11 fields of ``_ATTR_FMT`` as ``Attrs``; FramingError for an unknown file type."""
    kind, perm, size, nlink, uid, gid, atime, mtime, ctime, ino, target = fields
    if kind not in _TYPE_BITS:
        raise FramingError(f"unknown file type {kind!r}")
    return Attrs(
        mode=_TYPE_BITS[kind] | int(perm, 8), size=int(size), nlink=int(nlink),
        uid=int(uid), gid=int(gid), atime_ns=parse_time_ns(atime), mtime_ns=parse_time_ns(mtime),
        ctime_ns=parse_time_ns(ctime), remote_ino=int(ino),
        symlink_target=target if kind == b"l" else None,
    )


def only(records: list[Record], tag: bytes) -> list[bytes]:
    found = [fields for t, fields in records if t == tag]
    if len(found) != 1:
        raise FramingError(f"expected one {tag!r} record, got {len(found)}")
    return found[0]


def _attrs(records: list[Record]) -> Attrs:
    return parse_attrs(only(records, b"A"))


def _nothing(records: list[Record]) -> None:
    return None


def _listing(records: list[Record]) -> tuple[Attrs, list[Entry]]:
    own = _attrs(records)
    entries = []
    for tag, fields in records:
        if tag == b"E" and fields[1] in _TYPE_BITS:  # an entry find could not stat is skipped
            entries.append(Entry(fields[0], parse_attrs(fields[1:])))
    return own, entries


# -- fragment builders ------------------------------------------------------------------------
# Each returns a Fragment whose body assumes the PRELUDE. Paths are absolute VM paths as bytes.

def lstat(path: bytes) -> Fragment:
    return Fragment(f"p={quote(path)}; _st \"$p\"", _attrs)


# Entries of one listing run: about 800 KB of output (arkerfs relies on about 1 MiB, §7.6);
# a larger directory is listed in pages (``list_dir_page``).
LIST_PAGE = 8000


def list_dir(path: bytes, limit: int | None = LIST_PAGE) -> Fragment:
    """The directory's entries and its attrs; with ``limit``, at most ``limit + 1`` entries
    (more than ``limit``: the directory is listed again in pages)."""
    hide = " ! -name .arkerfs" if path == HOME_B else ""
    # 13 NUL-terminated fields per entry record
    cap = "" if limit is None else f" | head -z -n {13 * (limit + 1)}"
    return Fragment(
        f"p={quote(path)}; _x \"$p\" || _ne \"$p\"\n"
        '{ [ -d "$p" ] && [ ! -L "$p" ]; } || exit 20\n'
        '[ -r "$p" ] && [ -x "$p" ] || exit 13\n'
        f'set -o pipefail; find "$p" -mindepth 1 -maxdepth 1{hide} -printf "E\\0%f\\0$F" 2>/dev/null{cap}'
        ' || { _x "$p" || _ne "$p"; }\n'
        '_st "$p"',  # after the listing, whose read may have moved the directory's atime
        _listing,
    )


# For python3 snippets that print attrs: ``attrs(stat_result, path)`` gives the 11 fields of an
# ``A`` record (``parse_attrs``), as ``_ATTR_FMT`` prints them from ``find``.
PY_ATTRS = """import stat,errno
T={stat.S_IFREG:b'f',stat.S_IFDIR:b'd',stat.S_IFLNK:b'l',stat.S_IFIFO:b'p',stat.S_IFSOCK:b's',stat.S_IFBLK:b'b',stat.S_IFCHR:b'c'}
def tm(n):
    x,y=divmod(n,10**9); return b'%d.%09d0'%(x,y)
def attrs(s,full):
    k=stat.S_IFMT(s.st_mode)
    return (T.get(k,b'?'),b'%o'%(s.st_mode&0o7777),b'%d'%s.st_size,b'%d'%s.st_nlink,b'%d'%s.st_uid,b'%d'%s.st_gid,
            tm(s.st_atime_ns),tm(s.st_mtime_ns),tm(s.st_ctime_ns),b'%d'%s.st_ino,os.readlink(full) if k==stat.S_IFLNK else b'')
def xattrs(rel,name,full):
    try: names=[os.fsencode(x) for x in os.listxattr(full,follow_symlinks=False) if x.startswith('user.')]
    except OSError as e: names=[] if e.errno==errno.EOPNOTSUPP else [b'']
    for x in names: out(b'Y',rel,name,x)
"""


def list_dir_page(path: bytes, after: bytes | None, limit: int = LIST_PAGE) -> Fragment:
    """Up to ``limit`` entries of the directory whose names sort after ``after`` (None: from
    the first), in byte order, and its attrs. Parsed: (attrs, entries, more). Without python3:
    ENOTSUP."""
    code = PY_ATTRS + """
import bisect
p,after,limit,hide=a[0],a[1],int(a[2]),a[3]==b'1'
if not stat.S_ISDIR(os.lstat(p).st_mode): sys.exit(20)
names=sorted(n for n in os.listdir(p) if not (hide and n==b'.arkerfs'))
start=bisect.bisect_right(names,after) if a[4]==b'1' else 0
for name in names[start:start+limit]:
    f=p+b'/'+name
    try: e=os.lstat(f)
    except FileNotFoundError: continue
    out(b'E',name,*attrs(e,f))
    xattrs(b'',name,f)
out(b'M',b'1' if start+limit<len(names) else b'0')
out(b'A',*attrs(os.lstat(p),p))
"""
    hide = b"1" if path == HOME_B else b"0"
    return Fragment(_python(E.ENOTSUP, code, path, after or b"", str(limit).encode(), hide,
                            b"1" if after is not None else b"0"), _page)


def _page(records: list[Record]) -> tuple[Attrs, list[Entry], bool]:
    attrs, entries = _listing(records)
    return attrs, _with_xattrs(_xattr_names(records), b"", entries), only(records, b"M")[0] == b"1"


def _xattr_names(records: list[Record]) -> dict[tuple[bytes, bytes], list[bytes]]:
    """(directory relative to the listed one, name) -> the user xattr names a python listing
    gave (``Y`` records; an empty name: they could not be read)."""
    names: dict[tuple[bytes, bytes], list[bytes]] = {}
    for tag, fields in records:
        if tag == b"Y":
            names.setdefault((fields[0], fields[1]), []).append(fields[2])
    return names


def _with_xattrs(names: dict[tuple[bytes, bytes], list[bytes]], rel: bytes, entries: list[Entry]) -> list[Entry]:
    """``entries`` of directory ``rel`` knowing their user xattr names (unreadable: unknown)."""
    known = []
    for e in entries:
        found = names.get((rel, e.name), [])
        known.append(Entry(e.name, replace(e.attrs, xattrs=None if b"" in found else tuple(found))))
    return known


TREE_ENTRIES_MAX = 5000  # entries of one subtree listing: about 500 KB of output (PROTOCOL §7.6)


def list_tree(path: bytes, entries_max: int = TREE_ENTRIES_MAX) -> Fragment:
    """``path`` and the directories below it, breadth first, each listed whole (an ``L``
    record, then a ``T`` record per entry: its directory relative to ``path``, its name, its
    attrs as ``list_dir`` gives them) while the total stays within ``entries_max``; ``path``
    itself always (E2BIG when it alone has more: it is listed in pages). Parsed: (path's attrs,
    {relative directory: entries}). Without python3: ENOTSUP (the caller lists one directory at
    a time)."""
    code = PY_ATTRS + """
root,cap,hide=a[0],int(a[1]),a[2]==b'1'
s=os.lstat(root)
if not stat.S_ISDIR(s.st_mode): sys.exit(20)
queue,n=[b''],0
while queue:
    rel=queue.pop(0); full=root+b'/'+rel if rel else root
    try: names=os.listdir(full)
    except OSError:
        if not rel: raise
        continue
    if not rel and len(names)>cap: sys.exit(7)
    if rel and n+len(names)>cap: break
    n+=len(names); out(b'L',rel)
    for name in names:
        if hide and not rel and name==b'.arkerfs': continue
        f=full+b'/'+name
        try: e=os.lstat(f)
        except FileNotFoundError: continue
        out(b'T',rel,name,*attrs(e,f))
        xattrs(rel,name,f)
        if stat.S_ISDIR(e.st_mode): queue.append(rel+b'/'+name if rel else name)
out(b'A',*attrs(os.lstat(root),root))
"""
    hide = b"1" if path == HOME_B else b"0"
    return Fragment(_python(E.ENOTSUP, code, path, str(entries_max).encode(), hide), _tree)


def _tree(records: list[Record]) -> tuple[Attrs, dict[bytes, list[Entry]]]:
    own = _attrs(records)
    tree: dict[bytes, list[Entry]] = {}
    for tag, fields in records:
        if tag == b"L":
            tree[fields[0]] = []
        elif tag == b"T" and fields[2] in _TYPE_BITS:
            tree[fields[0]].append(Entry(fields[1], parse_attrs(fields[2:])))
    names = _xattr_names(records)
    return own, {rel: _with_xattrs(names, rel, entries) for rel, entries in tree.items()}


def readlink(path: bytes) -> Fragment:
    def parse(records: list[Record]) -> bytes:
        target = _attrs(records).symlink_target
        if target is None:
            raise FramingError("readlink of a non-link")
        return target

    return Fragment(f'p={quote(path)}; _x "$p" || _ne "$p"; [ -L "$p" ] || exit 22; _st "$p"', parse)


def statfs(path: bytes = HOME_B) -> Fragment:
    def parse(records: list[Record]) -> StatFs:
        bsize, frsize, blocks, bfree, bavail, files, ffree, namemax = map(int, only(records, b"S"))
        return StatFs(bsize, frsize, blocks, bfree, bavail, files, ffree, namemax)

    return Fragment(
        r"stat -f --printf='S\0%s\0%S\0%b\0%f\0%a\0%c\0%d\0%l\0' -- " + quote(path) + " || exit 5",
        parse,
    )


def mkdir(path: bytes, mode: int) -> Fragment:
    # Three digits, not five: GNU mkdir then keeps the set-group-ID bit a directory inherits
    # from its parent, as mkdir(2) does ("-m 00750" would clear it).
    return Fragment(
        f"p={quote(path)}; _x \"$p\" && exit 17; _pd {quote(parent_of(path))}\n"
        f'_t mkdir -m {mode & 0o7777:03o} -- "$p"; _st "$p"',
        _attrs,
    )


def rmdir(path: bytes) -> Fragment:
    return Fragment(
        f"p={quote(path)}; _x \"$p\" || _ne \"$p\"\n"
        '{ [ -d "$p" ] && [ ! -L "$p" ]; } || exit 20\n'
        f"_pd {quote(parent_of(path))}\n"
        '[ -z "$(find "$p" -mindepth 1 -maxdepth 1 -printf x -quit 2>/dev/null)" ] || exit 39\n'
        '_t rmdir -- "$p"',
        _nothing,
    )


def unlink(path: bytes) -> Fragment:
    return Fragment(
        f"p={quote(path)}; _x \"$p\" || _ne \"$p\"\n"
        '[ -d "$p" ] && [ ! -L "$p" ] && exit 21\n'
        f"_pd {quote(parent_of(path))}\n"
        '_t rm -f -- "$p"',
        _nothing,
    )


def rename(old: bytes, new: bytes, flags: int = 0) -> Fragment:
    """POSIX rename(2) with RENAME_NOREPLACE by checks + ``mv``; RENAME_EXCHANGE by renameat2."""
    if flags == RENAME_EXCHANGE:
        code = """
import ctypes
f=getattr(ctypes.CDLL(None,use_errno=True),'renameat2',None)
if f is None:
    sys.exit(22)
if f(-100,a[0],-100,a[1],2)!=0:
    e=ctypes.get_errno()
    sys.exit(22 if e in (38,95) else e)
"""
        return Fragment(_python(E.EINVAL, code, old, new), _nothing)
    if flags not in (0, RENAME_NOREPLACE):
        raise ValueError(f"rename flags {flags}")
    noreplace = flags == RENAME_NOREPLACE
    return Fragment(
        f"o={quote(old)}; n={quote(new)}; _x \"$o\" || _ne \"$o\"\n"
        f"_pd {quote(parent_of(old))}; _pd {quote(parent_of(new))}\n"
        'od=; [ -d "$o" ] && [ ! -L "$o" ] && od=1\n'
        'if _x "$n"; then\n'
        + ("  exit 17\n" if noreplace else "")
        # two names of one file: rename does nothing and succeeds
        + '  set -- $(stat -c %d:%i -- "$o" "$n"); [ -n "$2" ] && [ "$1" = "$2" ] && exit 0\n'
        '  if [ -n "$od" ]; then { [ -d "$n" ] && [ ! -L "$n" ]; } || exit 20\n'
        '    [ -z "$(find "$n" -mindepth 1 -maxdepth 1 -printf x -quit 2>/dev/null)" ] || exit 39\n'
        '  elif [ -d "$n" ] && [ ! -L "$n" ]; then exit 21; fi\n'
        "fi\n"
        '[ -n "$od" ] && case $n in "$o"/*) exit 22;; esac\n'
        + ('_t mv -n -T -- "$o" "$n"; _x "$o" && exit 17' if noreplace else
           # mv refuses "are the same file" when the source is a symlink to the target, where
           # rename(2) replaces the target with the link: then rename(2) itself, via python3
           '[ -L "$o" ] && [ "$o" -ef "$n" ] && { ' + _python(E.EIO, "os.rename(a[0],a[1])", old, new)
           + '; exit 0; }\n_t mv -f -T -- "$o" "$n"'),
        _nothing,
    )


def symlink(target: bytes, path: bytes) -> Fragment:
    return Fragment(
        f"p={quote(path)}; _x \"$p\" && exit 17; _pd {quote(parent_of(path))}\n"
        f'_t ln -s -T -- {quote(target)} "$p"; _st "$p"',
        _attrs,
    )


def link(existing: bytes, new: bytes) -> Fragment:
    return Fragment(
        f"e={quote(existing)}; n={quote(new)}; _x \"$e\" || _ne \"$e\"\n"
        '[ -d "$e" ] && [ ! -L "$e" ] && exit 1\n'
        f'_x "$n" && exit 17; _pd {quote(parent_of(new))}\n'
        '_t ln -P -T -- "$e" "$n"; _st "$n"',
        _attrs,
    )


def mknod(path: bytes, mode: int) -> Fragment:
    """Fifos by ``mkfifo``, sockets by python3 ``os.mknod`` (bind() would cap the path at 108
    bytes); the caller refuses every other type."""
    perm = mode & 0o7777
    if stat.S_ISFIFO(mode):
        make = f'_t mkfifo -m {perm:05o} -- "$p"'
    elif stat.S_ISSOCK(mode):
        make = _python(E.EPERM, f"os.mknod(a[0],{stat.S_IFSOCK | perm})\nos.chmod(a[0],{perm})", path)
    else:
        raise ValueError(f"mknod type {stat.S_IFMT(mode):o}")
    return Fragment(
        f"p={quote(path)}; _x \"$p\" && exit 17; _pd {quote(parent_of(path))}\n{make}; _st \"$p\"",
        _attrs,
    )


def create_empty(path: bytes, mode: int | None, *, exclusive: bool = True) -> Fragment:
    """An empty regular file. Exclusive: O_EXCL (bash noclobber), EEXIST if anything exists.
    Otherwise an existing file is truncated (a directory is EISDIR). ``mode`` None keeps an
    existing file's mode and gives a new one 0644, as a sync write would."""
    head = f"p={quote(path)}; "
    if exclusive:
        head += "_x \"$p\" && exit 17; n=1; "
    else:
        head += 'n=; _x "$p" || n=1; [ -d "$p" ] && exit 21; '
    chmod = (f'_t chmod {mode & 0o7777:05o} -- "$p"' if mode is not None
             else '[ -z "$n" ] || _t chmod 00644 -- "$p"')
    create = "_t _excl \"$p\"" if exclusive else '_t truncate -s 0 -- "$p"'
    return Fragment(
        head + f"_pd {quote(parent_of(path))}\n"
        "_excl() { set -C; : > \"$1\"; }\n"
        f"{create}; {chmod}; _st \"$p\"",
        _attrs,
    )


def setattr(path: bytes, *, mode: int | None = None, uid: int | None = None,
            gid: int | None = None, size: int | None = None,
            atime_ns: int | None = None, mtime_ns: int | None = None) -> Fragment:
    """Every change in one fragment: checks first (so a refused change changes nothing), then
    chown, truncate, chmod (after chown, which may clear set-id bits), touch (last: truncate
    moves mtime). Owner and times never follow a final symlink; chmod of a symlink is skipped."""
    lines = [f'p={quote(path)}; _x "$p" || _ne "$p"']
    if size is not None:
        lines.append('[ -L "$p" ] && exit 22; [ -d "$p" ] && exit 21; [ -f "$p" ] || exit 22')
    if uid is not None or gid is not None:
        owner = ("" if uid is None else f"+{uid}") + ("" if gid is None else f":+{gid}")
        lines.append(f'_t chown -h {owner} -- "$p"')
    if size is not None:
        lines.append(f'_t truncate -s {size} -- "$p"')
    if mode is not None:
        lines.append(f'[ -L "$p" ] || _t chmod {mode & 0o7777:05o} -- "$p"')
    if atime_ns is not None and atime_ns == mtime_ns:
        lines.append(f'_t touch -h -c -d {touch_time(atime_ns)} -- "$p"')
    else:
        if atime_ns is not None:
            lines.append(f'_t touch -h -c -a -d {touch_time(atime_ns)} -- "$p"')
        if mtime_ns is not None:
            lines.append(f'_t touch -h -c -m -d {touch_time(mtime_ns)} -- "$p"')
    lines.append('_st "$p"')
    return Fragment("\n".join(lines), _attrs)


# -- extended attributes (python3: coreutils has no xattr tools) --------------------------

# A VM filesystem that stores no user xattrs (EOPNOTSUPP) has none: reading or removing a name
# is ENODATA, listing gives nothing, only setxattr says ENOTSUP. Without python3: ENOTSUP.
_NO_XATTRS = f"if e.errno!={E.EOPNOTSUPP}: raise\nsys.exit({E.ENODATA})"


def getxattr(path: bytes, name: bytes) -> Fragment:
    def parse(records: list[Record]) -> bytes:
        return base64.b64decode(only(records, b"V")[0])

    code = ("try:\n    v=os.getxattr(a[0],a[1],follow_symlinks=False)\nexcept OSError as e:\n"
            + textwrap.indent(_NO_XATTRS, "    ") + "\nout(b'V',base64.b64encode(v))")
    return Fragment(_python(E.ENOTSUP, code, path, name), parse)


def setxattr(path: bytes, name: bytes, value: bytes, flags: int = 0) -> Fragment:
    code = f"os.setxattr(a[0],a[1],a[2],{flags & (XATTR_CREATE | XATTR_REPLACE)},follow_symlinks=False)"
    return Fragment(_python(E.ENOTSUP, code, path, name, value), _nothing)


def listxattr(path: bytes) -> Fragment:
    def parse(records: list[Record]) -> list[bytes]:
        return [base64.b64decode(fields[0]) for tag, fields in records if tag == b"V"]

    code = (f"try:\n    names=os.listxattr(a[0],follow_symlinks=False)\nexcept OSError as e:\n"
            f"    if e.errno!={E.EOPNOTSUPP}: raise\n    names=[]\n"
            "for n in names:\n    out(b'V',base64.b64encode(os.fsencode(n)))")
    return Fragment(_python(E.ENOTSUP, code, path), parse)


def removexattr(path: bytes, name: bytes) -> Fragment:
    code = ("try:\n    os.removexattr(a[0],a[1],follow_symlinks=False)\nexcept OSError as e:\n"
            + textwrap.indent(_NO_XATTRS, "    "))
    return Fragment(_python(E.ENOTSUP, code, path, name), _nothing)


# -- contents of paths the sync API cannot carry --------------------------------------------

@dataclass(frozen=True, slots=True)
class StagedRead:
    """A run-based read: the file's attrs and either its bytes or where a copy was staged."""

    attrs: Attrs
    content: bytes | None
    staged: bytes | None


def stage_sweep(directory: bytes) -> str:
    """Shell that drops staging files older than a day (left behind by a crash)."""
    return f"find {quote(directory)} -mindepth 1 -maxdepth 1 -mmin +1440 -delete 2>/dev/null"


def read_small_or_stage(path: bytes, staging: bytes, inline_max: int) -> Fragment:
    """Up to ``inline_max`` bytes come back base64 in the output (one run in all); a larger file
    is hard-linked (or copied) to ``staging`` for a sync read of that ASCII path. Safe to
    repeat: the link replaces an earlier one of the same name."""
    def parse(records: list[Record]) -> StagedRead:
        attrs = _attrs(records)
        values = [fields[0] for tag, fields in records if tag == b"V"]
        staged = [fields[0] for tag, fields in records if tag == b"P"]
        if len(values) + len(staged) != 1:
            raise FramingError("read fragment printed neither content nor a staged path")
        return StagedRead(attrs, base64.b64decode(values[0]) if values else None,
                          staged[0] if staged else None)

    return Fragment(
        f"p={quote(path)}; s={quote(staging)}; _x \"$p\" || _ne \"$p\"\n"
        '[ -d "$p" ] && exit 21; [ -f "$p" ] || exit 22; [ -r "$p" ] || exit 13\n'
        '_st "$p"; z=$(stat -L -c %s -- "$p") || exit 5\n'
        f'if [ "$z" -le {inline_max} ]; then c=$(base64 -w0 -- "$p") || exit 5; printf "V\\0%s\\0" "$c"\n'
        f"else _t mkdir -p -- {quote(parent_of(staging))}; {stage_sweep(parent_of(staging))}\n"
        '  ln -f -P -T -- "$p" "$s" 2>/dev/null || _t cp -f -- "$p" "$s"; printf "P\\0%s\\0" "$s"; fi',
        parse,
    )


@dataclass(frozen=True, slots=True)
class SmallFile:
    """One file of a read-ahead: its path (relative to the base), the version read, its bytes."""

    name: bytes
    size: int
    mtime_ns: int
    content: bytes


# Reads ``first`` (a path relative to the base directory), then the other regular files of
# its directory, then (``deep``) those of the rest of the base's subtree, each directory's in
# sorted order, leaving out the excluded relative paths: files of at most ``file_max`` bytes
# while the total stays within ``batch_max``, looking at no more than ``entries_max`` entries.
# A file whose size, mtime or inode moved while it was read is left out (never a mixed
# version); one that cannot be read is skipped. Symlinks are never followed.
_PY_READ_SMALL = """import stat
base,first,lim,tot,deep,cap=a[0],a[1],int(a[2]),int(a[3]),a[4]==b'1',int(a[5])
ex=set(a[6].split(b'\\0'))
top=os.path.dirname(first)
def listing(rel):
    try:
        with os.scandir(os.path.join(base,rel) if rel else base) as it:
            return sorted((e.name,e.is_dir(follow_symlinks=False)) for e in it)
    except OSError:
        return []
def walk():
    yield first
    for n,_ in listing(top):
        yield os.path.join(top,n)
    dirs=[b''] if deep else []
    while dirs:
        rel=dirs.pop(0)
        for n,isdir in listing(rel):
            r=os.path.join(rel,n)
            if isdir:
                if n!=b'.arkerfs':
                    dirs.append(r)
            elif rel!=top:
                yield r
got=0
seen=set()
for r in walk():
    cap-=1
    if cap<0:
        break
    if r in seen or r in ex and r!=first:
        continue
    seen.add(r)
    p=os.path.join(base,r)
    try:
        s=os.lstat(p)
        if not stat.S_ISREG(s.st_mode) or s.st_size>lim or got+s.st_size>tot:
            continue
        fd=os.open(p,os.O_RDONLY|os.O_NOFOLLOW|os.O_NONBLOCK|os.O_NOCTTY)
        try:
            b=bytearray()
            while len(b)<=lim:
                c=os.read(fd,lim+1-len(b))
                if not c:
                    break
                b+=c
            t=os.fstat(fd)
        finally:
            os.close(fd)
    except OSError:
        continue
    if len(b)!=t.st_size or t.st_size!=s.st_size or t.st_mtime_ns!=s.st_mtime_ns or t.st_ino!=s.st_ino:
        continue
    got+=len(b)
    out(b'R',r,str(t.st_size).encode(),str(t.st_mtime_ns).encode(),base64.b64encode(bytes(b)))
"""


def read_small_files(base: bytes, first: bytes, exclude: Sequence[bytes], file_max: int,
                     batch_max: int, *, deep: bool = False, entries_max: int = 5000) -> Fragment:
    """Small files under ``base``, ``first`` first (see ``_PY_READ_SMALL``); their names are
    paths relative to ``base``. Exits ENOTSUP where python3 is absent."""
    def parse(records: list[Record]) -> list[SmallFile]:
        return [SmallFile(f[0], int(f[1]), int(f[2]), base64.b64decode(f[3]))
                for tag, f in records if tag == b"R"]

    return Fragment(_python(E.ENOTSUP, _PY_READ_SMALL, base, first, str(file_max).encode(),
                            str(batch_max).encode(), b"1" if deep else b"0",
                            str(entries_max).encode(), b"\0".join(exclude)), parse)


def remove_staged(staging: bytes) -> Fragment:
    return Fragment(f"rm -f -- {quote(staging)}", _nothing)


def make_staging_dir() -> Fragment:
    return Fragment(f"_t mkdir -p -- {quote(STAGING)}; {stage_sweep(STAGING)}", _nothing)


def check_result(fragment: Fragment, outcome: Outcome) -> Any:
    """``fragment``'s parsed value, or FsError for its status (FramingError on bad records)."""
    if outcome.status != 0:
        raise FsError(errno_for_exit(outcome.status), f"script exit {outcome.status}")
    return fragment.parse(outcome.records)
