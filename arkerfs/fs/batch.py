"""Many changes in one run: ordered batches that stop at the first failure, and installs of
uploaded files that never overwrite a change made inside the VM.

Pure, like ``shell`` (text generation and parsing only). A push of accumulated work is

1. one upload of every new content to a hidden staging name (a multi-entry sync write), then
2. one run of ``batch_script``: the changes in the order applications made them (mkdir before
   what goes in the directory, a file's install before the rename that publishes it...), each
   fragment in its own subshell; the first one that fails ends the run, so nothing after it is
   applied out of order, and every fragment that ran reports its own status.

``install`` is the compare-and-swap: it names the remote version the local change was based on
(``Version``: inode, size, mtime — what the mount saw) and installs the staged file over the
target only if the target is still that version (or still absent, for a file the mount
created). Otherwise nothing is overwritten: the staged file becomes ``NAME.conflict-<stamp>``
beside the target, with the same mode and mtime. If the target's directory is gone, it goes to
the recovery directory (``RECOVERY`` by default) under its home-relative path. Either way the
fragment succeeds and reports where the local version went (a ``C`` record), so the batch goes
on: the VM's version and the local version both survive.
"""

from __future__ import annotations

import stat
from collections.abc import Sequence
from dataclasses import dataclass

from arkerfs.fs import shell as S
from arkerfs.fs.model import Attrs

RECOVERY = S.HOME_B + b"/arkerfs-recovered"


@dataclass(frozen=True, slots=True)
class Version:
    """What the mount saw of a remote file when it made its change."""

    ino: int
    size: int
    mtime_ns: int

    @classmethod
    def of(cls, attrs: Attrs) -> Version:
        return cls(attrs.remote_ino, attrs.size, attrs.mtime_ns)

    def printed(self) -> str:
        """As ``find -printf '%i:%s:%T@'`` prints it (``%T@``: seconds, '.', 10 digits)."""
        sec, frac = divmod(self.mtime_ns, 10**9)  # floor: find prints -2.5 for -1.5 s
        return f"{self.ino}:{self.size}:{sec}.{frac:09d}0"


@dataclass(frozen=True, slots=True)
class Installed:
    """Result of ``install``: the target's fresh attrs, or where the local version went."""

    attrs: Attrs | None
    conflict: bytes | None  # path of the kept local copy when the VM's file was not replaced


def batch_script(fragments: Sequence[S.Fragment]) -> str:
    """One run of ``fragments`` in order, stopping at the first that fails (see module doc)."""
    return S.script(fragments, stop_at_failure=True)


def install(staged: bytes, path: bytes, *, mode: int | None, mtime_ns: int, atime_ns: int | None = None,
            base: Version | None, stamp: str, recovery: bytes = RECOVERY,
            home: bytes = S.HOME_B, check: bool = True, size: int | None = None,
            later: Sequence[tuple[int, int]] = (), earlier: Sequence[tuple[int, int]] = (),
            empty: bool = False, content: bytes | None = None, in_place: bool = False) -> S.Fragment:
    """Move the uploaded ``staged`` file to ``path`` with ``mode`` (None: ``path``'s own) and
    exact times, if ``path`` is still ``base`` (None: still absent). ``stamp`` (e.g. a UTC
    time) names conflict copies.

    ``check=False`` installs whatever is there (the previous version is the mount's own, pushed
    earlier in the same batch). ``size`` makes a repeat harmless: when the target already is
    this very version (same size and nanosecond mtime: the batch ran before but its answer was
    lost), the staged copy is dropped instead of making a conflict copy; so it is when the target
    is one of the ``later`` versions (size, mtime_ns) the same batch installs there after this
    one. ``earlier``: (size, mtime_ns) of the mount's own earlier versions this install takes
    the place of (coalesced into it): a batch sent again may find one of them installed already,
    and replaces it like ``base``. ``content``: the (small) bytes travel in the script, no upload
    needed. ``empty``: the staged file is created by the run itself (nothing to upload for an
    empty file). ``in_place``: the bytes are copied into the target's own inode, so its hard
    links see them (not atomic)."""
    if not path.startswith(home + b"/"):
        raise ValueError("install targets live under the home")
    perm = "-" if mode is None else f"{stat.S_IMODE(mode):05o}"
    atime = S.touch_time(mtime_ns if atime_ns is None else atime_ns)
    def size_mtime(z: int, t: int) -> str:
        return Version(0, z, t).printed().split(":", 1)[1]

    expect = " ".join(["none" if base is None else base.printed(), *(f"*:{size_mtime(z, t)}" for z, t in earlier)])
    mine = " ".join(size_mtime(z, t) for z, t in ([] if size is None else [(size, mtime_ns), *later]))
    new = "1" if empty else "b:" + S.b64(content) if content else "-"
    # the prelude's _inst does the steps (one copy per script: a batch of hundreds stays small);
    # a run of installs in a batch goes through _pi instead, one line each
    args = [S.quote(staged), S.quote(path), perm, atime, S.touch_time(mtime_ns),
            S.quote(expect.encode()) if check else "-", S.quote(mine.encode()) if mine else "-", new,
            S.quote(stamp.encode()), S.quote(recovery), S.quote(home), *(["1"] if in_place else [])]
    body = "_inst " + " ".join(args)
    line = S.install_line(staged, path, perm.encode(), atime.encode(), S.touch_time(mtime_ns).encode(),
                          expect.encode() if check else b"-", mine.encode() if mine else b"-",
                          stamp.encode(), recovery, home, b"1" if in_place else b"0", content=new)
    return S.Fragment(body, _installed, install_line=line)


def conflict_name(path: bytes, stamp: str) -> bytes:
    """``NAME.conflict-<stamp>`` beside ``path``; a long NAME is shortened to keep 255 bytes."""
    suffix = b".conflict-" + stamp.encode()
    directory, _, name = path.rpartition(b"/")
    return directory + b"/" + name[:255 - len(suffix)] + suffix


def _installed(records: list[S.Record]) -> Installed:
    kept = [fields[0] for tag, fields in records if tag == b"C"]
    if kept:
        return Installed(None, kept[0])
    return Installed(S.parse_attrs(S.only(records, b"A")), None)


# -- repeatable forms of the namespace fragments --------------------------------------------
# A batch whose answer was lost (the connection dropped mid-run, the daemon crashed before the
# acknowledgement) is sent again whole. Each of these first checks whether its change is
# already there and then succeeds without doing it twice; otherwise it is ``shell``'s fragment.

def _guarded(guard: str, fragment: S.Fragment) -> S.Fragment:
    return S.Fragment(guard + "\n" + fragment.body, fragment.parse)


def mkdir(path: bytes, mode: int) -> S.Fragment:
    q = S.quote(path)
    return _guarded(f'[ -d {q} ] && [ ! -L {q} ] && {{ _st {q}; exit 0; }}', S.mkdir(path, mode))


def rmdir(path: bytes) -> S.Fragment:
    return _guarded(f"_x {S.quote(path)} || exit 0", S.rmdir(path))


def unlink(path: bytes) -> S.Fragment:
    return _guarded(f"_x {S.quote(path)} || exit 0", S.unlink(path))


def rename(old: bytes, new: bytes, flags: int = 0) -> S.Fragment:
    """Of a file (directories are renamed at once, never batched): the prelude's ``_rnf``."""
    if flags not in (0, S.RENAME_NOREPLACE):
        raise ValueError(f"rename flags {flags} are never batched")
    return S.Fragment(f"_rnf {S.quote(old)} {S.quote(new)} {1 if flags else 0}", S._nothing,
                      install_line=S.rename_line(old, new, bool(flags)))


def symlink(target: bytes, path: bytes, mtime_ns: int | None = None) -> S.Fragment:
    """``mtime_ns``: the link's times as the mount showed them since it was made."""
    q, t = S.quote(path), S.quote(target + b"\n")  # readlink prints a newline; "x" keeps it
    fragment = S.symlink(target, path)
    if mtime_ns is not None:
        stamp = S.touch_time(mtime_ns)
        body = fragment.body.replace('; _st "$p"', f'; _t touch -h -c -d {stamp} -- "$p"; _st "$p"')
        assert body != fragment.body
        fragment = S.Fragment(body, fragment.parse)
    return _guarded(f'[ -L {q} ] && [ "$(readlink -- {q}; printf x)" = {t}x ] && {{ _st {q}; exit 0; }}', fragment)


def link(existing: bytes, new: bytes, removed_later: Version | None = None) -> S.Fragment:
    """``removed_later``: the file's version when a later step of the same batch removes
    ``existing`` (git publishes an object so: link, then unlink the temporary name). Sent
    again, the batch finds ``new`` already that version and ``existing`` gone or made anew."""
    e, n = S.quote(existing), S.quote(new)
    same = f'[ "$(stat -c %d:%i -- {n})" = "$(stat -c %d:%i -- {e} 2>/dev/null)" ]'  # never follows a symlink
    if removed_later is not None:
        size_mtime = removed_later.printed().split(":", 1)[1]
        same = f'{{ {same} || [ "$(find {n} -maxdepth 0 -printf %s:%T@)" = {size_mtime} ]; }}'
    return _guarded(f'_x {n} && {same} && {{ _st {n}; exit 0; }}', S.link(existing, new))


def setattr(path: bytes, *, mode: int | None = None, atime_ns: int | None = None,
            mtime_ns: int | None = None) -> S.Fragment:
    """chmod/utimens of a name the VM may have removed since (or that this batch, sent once
    before, already renamed away): nothing to apply then, and nothing of value is lost."""
    fragment = S.setattr(path, mode=mode, atime_ns=atime_ns, mtime_ns=mtime_ns)
    return S.Fragment(f"_x {S.quote(path)} || exit 0\n" + fragment.body, _attrs_if_any)


def _attrs_if_any(records: list[S.Record]) -> Attrs | None:
    return S.parse_attrs(S.only(records, b"A")) if records else None
