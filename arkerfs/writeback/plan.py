"""Pending changes → one batch: the uploads and the one script that applies them. Pure.

A batch is a prefix of the journal (oldest first), packed as

- ``uploads``: every new content, each to its own staging name (``STAGING/wb-<spool name>``;
  the same name on every attempt, so sending a batch again overwrites rather than piles up);
- ``steps``: one fragment per surviving change, in the order applications made them, run as
  one script that stops at the first failure (``batch.batch_script``).

Coalescing, decided on the changes of the batch alone:

- a create followed by a write of the same file: only the write goes (it creates the file);
- two writes of a file with nothing else touching it in between: only the second goes;
- a file created here and removed again before its push (with nothing renaming or linking it
  in between): none of its changes go;
- a chmod/utimens of a file right after its create or write (nothing else touching the file in
  between): folded into that install, which sets the final mode and times.

A run of installs goes through one python3 process in the VM (``shell._pi``), not about ten
forked tools per file.

Every skipped change travels with the step that makes it unnecessary, so it is acknowledged
only together with that step (or at once when nothing needs to run for it).

Records (``args``, JSON): paths as ``os.fsdecode`` strings; ``attrs`` as ``encode_attrs``;
``base`` of a write or create is null (the file did not exist), ``"chain"`` (it follows an
earlier pending change of the same file) or ``[ino, size, mtime_ns]`` (the VM's version the
local change was made on).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from arkerfs.fs import batch as B
from arkerfs.fs import shell as S
from arkerfs.fs.model import Attrs
from arkerfs.writeback.journal import Change

CHAIN = "chain"
MAX_STEPS = 1000  # fragments per run: keeps the script and its output well inside PROTOCOL.md §7.6
MAX_UPLOAD_BYTES = 64 * 1024 * 1024  # new content per batch
# A run's command reaches the VM's shell as one argument (``bash -c``), which Linux caps at
# 128 KiB (MAX_ARG_STRLEN): the script, prelude included, stays well under it.
MAX_SCRIPT_BYTES = 100_000
# A batch with this little new content carries it in the script (base64): one call, no upload.
INLINE_BATCH_BYTES = 24 * 1024


def encode_attrs(attrs: Attrs) -> list:
    target = None if attrs.symlink_target is None else os.fsdecode(attrs.symlink_target)
    return [attrs.mode, attrs.size, attrs.nlink, attrs.uid, attrs.gid, attrs.atime_ns,
            attrs.mtime_ns, attrs.ctime_ns, attrs.remote_ino, target]


def decode_attrs(fields: list) -> Attrs:
    *numbers, target = fields
    return Attrs(*numbers, symlink_target=None if target is None else os.fsencode(target))


def paths_of(change: Change) -> tuple[bytes, ...]:
    a = change.args
    if change.op == "rename":
        return os.fsencode(a["old"]), os.fsencode(a["new"])
    if change.op == "link":
        return os.fsencode(a["existing"]), os.fsencode(a["new"])
    return (os.fsencode(a["path"]),)


@dataclass
class Step:
    fragment: S.Fragment
    change: Change  # the change this fragment applies
    covers: list[int] = field(default_factory=list)  # seqs of skipped changes it makes unnecessary

    @property
    def seqs(self) -> list[int]:
        return [self.change.seq, *self.covers]


@dataclass
class Upload:
    staged: bytes  # VM path
    spool_name: str  # journal spool file
    size: int


@dataclass
class Batch:
    uploads: list[Upload]
    steps: list[Step]
    skipped: list[int]  # seqs that need nothing in the VM: acknowledge at once
    last_seq: int  # the newest change this batch covers


def staged_name(spool_name: str) -> bytes:
    return S.STAGING + b"/wb-" + spool_name[:16].encode()  # 64 random bits: unique enough


def take(changes: Sequence[Change]) -> list[Change]:
    """The prefix that fits in one batch by count and content (``fit`` then bounds the script)."""
    taken, size = [], 0
    for change in changes:
        if taken and (len(taken) >= MAX_STEPS or size + change.size > MAX_UPLOAD_BYTES):
            break
        taken.append(change)
        size += change.size
    return taken


def fit(changes: Sequence[Change], landed: dict[bytes, B.Version], stamp: str,
        read: Callable[[str], bytes] | None = None) -> Batch:
    """``plan`` of the longest prefix of ``changes`` whose script stays within MAX_SCRIPT_BYTES.
    ``read(spool_name)``: the bytes of a content, to carry small batches inline."""
    changes = list(changes)
    while True:
        batch = plan(changes, landed, stamp, read)
        size = len(S.PRELUDE) + sum(len(s.fragment.body) + 60 for s in batch.steps)
        if size <= MAX_SCRIPT_BYTES or len(changes) == 1:
            return batch
        changes = changes[:max(1, int(len(changes) * MAX_SCRIPT_BYTES / size * 0.95))]


def plan(changes: Sequence[Change], landed: dict[bytes, B.Version], stamp: str,
         read: Callable[[str], bytes] | None = None) -> Batch:
    """The batch applying ``changes`` (see the module doc). ``landed``: the VM version of files
    this mount pushed before, for a write whose base is ``chain`` to an earlier batch."""
    changes = list(changes)
    touching: dict[bytes, list[int]] = {}
    for i, change in enumerate(changes):
        for path in paths_of(change):
            touching.setdefault(path, []).append(i)
    skipped: set[int] = set()
    covered: dict[int, list[int]] = {}
    inherited: dict[int, object] = {}  # index -> base taken over from a skipped change
    absorbed: dict[int, list[tuple[int, int]]] = {}  # index -> (size, mtime_ns) of the versions it replaces

    def next_on(path: bytes, i: int) -> int | None:
        later = [j for j in touching[path] if j > i and j not in skipped]
        return later[0] if later else None

    for i, change in enumerate(changes):
        if i in skipped or change.op not in ("create", "write"):
            continue
        path = paths_of(change)[0]
        j = next_on(path, i)
        if j is not None and changes[j].op == "write":
            skipped.add(i)
            covered.setdefault(j, []).extend([change.seq, *covered.pop(i, [])])
            inherited[j] = inherited.pop(i, change.args.get("base"))
            size = change.size if change.op == "write" else 0
            absorbed[j] = [*absorbed.pop(i, []), (size, decode_attrs(change.args["attrs"]).mtime_ns)]
    # created here and removed again: nothing of it goes
    for i, change in enumerate(changes):
        if i in skipped or change.op not in ("create", "write", "symlink"):
            continue
        if change.op != "symlink" and inherited.get(i, change.args.get("base")) is not None:
            continue  # it replaced a file the VM has: the unlink must go
        path = paths_of(change)[0]
        run = [i]
        j = next_on(path, i)
        while j is not None and changes[j].op == "setattr":
            run.append(j)
            j = next_on(path, j)
        if j is not None and changes[j].op == "unlink":
            run.append(j)
            for k in run:
                skipped.add(k)
            for k in run:
                skipped.update(_seq_index(changes, s) for s in covered.pop(k, []))

    # a chmod/utimens right after a file's content (tar, rsync, cp -p) rides on its install
    folded: dict[int, dict[str, int]] = {}
    for i, change in enumerate(changes):
        if i in skipped or change.op not in ("create", "write"):
            continue
        path = paths_of(change)[0]
        j = next_on(path, i)
        while j is not None and changes[j].op == "setattr":
            given = {k: changes[j].args[k] for k in ("mode", "atime_ns", "mtime_ns") if changes[j].args.get(k) is not None}
            folded[i] = {**folded.get(i, {}), **given}
            skipped.add(j)
            covered.setdefault(i, []).extend([changes[j].seq, *covered.pop(j, [])])
            j = next_on(path, j)

    produced: set[bytes] = set()
    uploads: list[Upload] = []
    new_bytes = sum(c.size for i, c in enumerate(changes) if i not in skipped and c.op == "write")
    inline = read if read is not None and new_bytes <= INLINE_BATCH_BYTES else None
    steps: list[Step] = []
    for i, change in enumerate(changes):
        if i in skipped:
            continue
        base = inherited.get(i, change.args.get("base"))
        after = [k for k in touching[paths_of(change)[0]] if k > i and k not in skipped]
        later = _later_versions(changes, i, after) if change.op in ("create", "write") else []
        removed_later = change.op == "link" and _name_goes_later(changes, i, after)
        fragment = _fragment(change, base, produced, landed, stamp, uploads, later, inline, removed_later,
                             absorbed.get(i, []), folded.get(i, {}))
        steps.append(Step(fragment, change, covered.get(i, [])))
        for path in paths_of(change)[-1:]:
            produced.add(path)
    in_steps = {s for step in steps for s in step.seqs}
    return Batch(uploads, steps, [c.seq for c in changes if c.seq not in in_steps],
                 changes[-1].seq if changes else 0)


def _later_versions(changes: list[Change], i: int, after: list[int]) -> list[tuple[int, int]]:
    """(size, mtime_ns) of every version the changes after ``i`` give the same file by name:
    its later installs and the times set on them. Finding one of these there means this batch
    ran before (its answer was lost), not that the VM changed the file. ``after``: the indices
    of the changes after ``i`` that touch its path and go in this batch, in order."""
    size = changes[i].size
    found = []
    for k in after:
        c = changes[k]
        if c.op in ("create", "write"):
            size = c.size if c.op == "write" else 0
            found.append((size, decode_attrs(c.args["attrs"]).mtime_ns))
        elif c.op == "setattr" and c.args.get("mtime_ns") is not None:
            found.append((size, c.args["mtime_ns"]))
        elif c.op != "setattr":
            break  # renamed, linked or removed: the name stops being this file's
    return found


def _name_goes_later(changes: list[Change], i: int, after: list[int]) -> bool:
    """Whether a change after ``i`` (``after``: as for ``_later_versions``) unlinks or renames
    away the first path of change ``i``."""
    path = paths_of(changes[i])[0]
    return any(changes[k].op in ("unlink", "rename") and paths_of(changes[k])[0] == path for k in after)


def _seq_index(changes: list[Change], seq: int) -> int:
    return next(i for i, c in enumerate(changes) if c.seq == seq)


def _fragment(change: Change, base, produced: set[bytes], landed: dict[bytes, B.Version], stamp: str,
              uploads: list[Upload], later: list[tuple[int, int]], inline,
              removed_later: bool = False, earlier: Sequence[tuple[int, int]] = (),
              folded: dict[str, int] | None = None) -> S.Fragment:
    folded = folded or {}
    a, op = change.args, change.op
    if op in ("create", "write"):
        path = os.fsencode(a["path"])
        attrs = decode_attrs(a["attrs"])
        check, version = True, None
        if base == CHAIN:
            version = None if path in produced else landed.get(path)
            check = version is not None
        elif base is not None:
            version = B.Version(*base)
        content = None
        if op == "write" and change.content is not None and change.size > 0:
            staged = staged_name(change.content)
            if inline is not None:
                content = inline(change.content)
            else:
                uploads.append(Upload(staged, change.content, change.size))
            empty = False
        else:
            staged = S.STAGING + b"/wb-" + str(change.seq).encode()
            empty = True
        return B.install(staged, path, mode=stat.S_IMODE(folded.get("mode", attrs.mode)),
                         mtime_ns=folded.get("mtime_ns", attrs.mtime_ns),
                         atime_ns=folded.get("atime_ns", attrs.atime_ns), base=version, check=check, stamp=stamp,
                         size=0 if empty else change.size, later=later, earlier=earlier, empty=empty,
                         content=content)
    if op == "mkdir":
        return B.mkdir(os.fsencode(a["path"]), a["mode"])
    if op == "rmdir":
        return B.rmdir(os.fsencode(a["path"]))
    if op == "unlink":
        return B.unlink(os.fsencode(a["path"]))
    if op == "rename":
        return B.rename(os.fsencode(a["old"]), os.fsencode(a["new"]), a.get("flags", 0))
    if op == "symlink":
        return B.symlink(os.fsencode(a["target"]), os.fsencode(a["path"]), decode_attrs(a["attrs"]).mtime_ns)
    if op == "link":
        attrs = decode_attrs(a["attrs"])
        version = B.Version.of(attrs) if removed_later else None
        return B.link(os.fsencode(a["existing"]), os.fsencode(a["new"]), version)
    if op == "setattr":
        return B.setattr(os.fsencode(a["path"]), mode=a.get("mode"), atime_ns=a.get("atime_ns"),
                         mtime_ns=a.get("mtime_ns"))
    raise ValueError(f"unknown journal operation {op!r}")
