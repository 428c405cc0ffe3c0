"""The change watcher's run: one bounded python3 process in the VM that reports what changed.

Why a bounded run and not a daemon in the VM: a run (and everything it started) ends when its
command ends (PROTOCOL.md 7.4; the local server's sandbox dies with it), so the watcher is a
long poll: it watches the home until something changes (then waits ``quiet`` seconds more, at
most ``4 * quiet``, to gather what belongs together) or until ``bound`` seconds pass, prints
what changed and ends; the mount starts the next one at once.

No gap between two runs: each run is given ``since``, the VM clock (ns) at which the previous
one stopped looking (minus a slack for the coarse clock the kernel stamps ctime with), and its
set-up walk, which adds an inotify watch to every directory, also stats every entry and
reports those whose ctime is ``since`` or later. A directory changed in that gap may have lost
entries, which no ctime shows: it is reported with the names it has now (``D`` then ``N``
records) so the mount drops the others.

Where inotify is unavailable the run scans instead: a stat of every entry each second, compared
with the previous scan (only for a home of at most ``SCAN_ENTRIES_MAX`` entries scanned in
under half a second; else it answers ``off``). A home of more than ``cap`` entries, or one the
VM's inotify watch limit cannot cover, is not watched either (``off``, with the reason): the
mount then falls back to its short TTL.

Records (NUL-framed like every script's, see ``shell``): ``U`` path + 11 attrs (exists now),
``G`` path (gone), ``D`` directory + its names as ``N`` records, and last ``Z`` mode
(``inotify``/``scan``/``off``), note (why off), the ``since`` of the next run, flush (``1``: the
kernel's event queue overflowed or too much changed to list: the mount forgets everything).
The staging directory (``~/.arkerfs``) is never reported.
"""

from __future__ import annotations

import errno as E
from dataclasses import dataclass, field

from arkerfs.fs import shell as S
from arkerfs.fs.model import Attrs

WATCH_ENTRIES_MAX = 200_000  # a larger home is not watched (the set-up walk would cost too much)
SCAN_ENTRIES_MAX = 20_000  # without inotify: a larger home is not scanned every second
CHANGES_MAX = 20_000  # more changed paths than this in one run: the mount forgets everything
SLACK_NS = 20_000_000  # the next run looks back this far: ctime is stamped from a clock a tick behind

_CODE = S.PY_ATTRS + """
import ctypes,select,struct,time
root,since,bound,quiet,cap,scancap,most,slack,force_scan=a[0],int(a[1]),float(a[2]),float(a[3]),int(a[4]),int(a[5]),int(a[6]),int(a[7]),a[8]==b'1'
skip=root+b'/.arkerfs'
class Off(Exception): pass
def mine(p): return p==skip or p.startswith(skip+b'/')
seen={}; unknown=set(); flush=[0]; count=[0]; wd={}
MASK=0x2|0x4|0x8|0x40|0x80|0x100|0x200|0x400|0x800|0x01000000|0x02000000|0x04000000
lib=ctypes.CDLL(None,use_errno=True)
try:
    lib.inotify_add_watch.argtypes=[ctypes.c_int,ctypes.c_char_p,ctypes.c_uint32]
    fd=-1 if force_scan else lib.inotify_init1(os.O_NONBLOCK|os.O_CLOEXEC)
except AttributeError:
    fd=-1
mode=b'inotify' if fd>=0 else b'scan'
def walk(top,since,everything,snap=None):
    stack=[top]
    while stack:
        d=stack.pop()
        if fd>=0:
            w=lib.inotify_add_watch(fd,d,MASK)
            if w<0:
                if ctypes.get_errno()==28: raise Off(b"the VM's inotify watch limit (fs.inotify.max_user_watches) is too low for the home")
                continue
            wd[w]=d
        try: it=os.scandir(d)
        except OSError: continue
        with it:
            for e in it:
                count[0]+=1
                if count[0]>cap: raise Off(b'the home has more than %d entries'%cap)
                p=e.path
                if mine(p): continue
                try:
                    isdir=e.is_dir(follow_symlinks=False)
                    s=e.stat(follow_symlinks=False) if since or snap is not None else None
                except OSError: continue
                if everything or since and s.st_ctime_ns>=since:
                    seen[p]=1
                    if isdir and not everything: unknown.add(p)
                if snap is not None: snap[p]=(s.st_ctime_ns,s.st_mtime_ns,s.st_size,s.st_ino,s.st_mode)
                if isdir: stack.append(p)
EV=struct.Struct('iIII')
def events():
    try: data=os.read(fd,1<<16)
    except BlockingIOError: return False
    i=0; got=False
    while i<len(data):
        w,m,_,ln=EV.unpack_from(data,i); name=data[i+16:i+16+ln].rstrip(b'\\0'); i+=16+ln
        if m&0x4000: flush[0]=1; got=True; continue
        if m&0x8000: wd.pop(w,None); continue
        d=wd.get(w)
        if d is None: continue
        p=d+b'/'+name if name else d
        if mine(p): continue
        got=True; seen[p]=1
        if name and m&0x3c0: seen[d]=1
        if m&0x40000000:
            if m&0x180: walk(p,0,True)
            elif m&0x40:
                for k,v in list(wd.items()):
                    if v==p or v.startswith(p+b'/'): del wd[k]
    return got
def scan(snap0=None):
    t=time.monotonic(); snap={}; count[0]=0
    walk(root,since if snap0 is None else 0,False,snap)
    if time.monotonic()-t>0.5: raise Off(b'a scan of the home takes more than 0.5 s and the VM has no inotify')
    if snap0 is not None:
        for p in snap.keys()|snap0.keys():
            if snap.get(p)!=snap0.get(p):
                seen[p]=1; seen[os.path.dirname(p)]=1
    return snap
note=b''
try:
    start=time.monotonic()
    if fd<0: cap=min(cap,scancap)
    snap=scan() if fd<0 else walk(root,since,False)
    if since:
        s=os.lstat(root)
        if s.st_ctime_ns>=since: seen[root]=1; unknown.add(root)
    first=last=start-quiet if seen else None
    while True:
        now=time.monotonic()
        wait=bound-(now-start) if first is None else min(last+quiet,first+4*quiet)-now
        if wait<=0: break
        if fd>=0:
            if select.select([fd],[],[],wait)[0] and events():
                last=time.monotonic(); first=first or last
        else:
            time.sleep(min(wait,1.0)); n=len(seen); snap=scan(snap)
            if len(seen)>n: last=time.monotonic(); first=first or last
except Off as e:
    mode,note=b'off',e.args[0]; seen.clear(); unknown.clear()
end=time.time_ns()-slack
if fd>=0 and mode!=b'off': events()
if len(seen)>most: flush[0]=1
if flush[0]: seen.clear(); unknown.clear()
for p in seen:
    try: out(b'U',p,*attrs(os.lstat(p),p))
    except OSError: out(b'G',p)
for d in unknown:
    try: names=os.listdir(d)
    except OSError: continue
    out(b'D',d)
    for n in names:
        if not mine(d+b'/'+n): out(b'N',n)
out(b'Z',mode,note,b'%d'%end,b'%d'%flush[0])
"""


@dataclass
class ChangeReport:
    """What one watch run saw: ``changed`` path -> attrs now (None: gone), ``listed``
    directory -> every name it has now (a directory changed while no run watched it)."""

    mode: str  # "inotify", "scan" or "off"
    note: str  # why "off"
    since_ns: int  # the next run's ``since``
    flush: bool  # too much changed (or the event queue overflowed): forget everything
    changed: dict[bytes, Attrs | None] = field(default_factory=dict)
    listed: dict[bytes, set[bytes]] = field(default_factory=dict)


def watch(root: bytes, since_ns: int, bound: float, *, quiet: float = 0.1,
          entries_max: int = WATCH_ENTRIES_MAX, scan_max: int = SCAN_ENTRIES_MAX,
          changes_max: int = CHANGES_MAX, scan: bool = False) -> S.Fragment:
    """One watch run over ``root`` (see the module doc); ``since_ns`` 0 for the first run,
    ``bound`` 0 only to set up and answer (a probe: is watching possible, and the VM clock).
    ``scan``: scan even where inotify works (tests). Without python3: ENOTSUP."""
    args = [root, since_ns, bound, quiet, entries_max, scan_max, changes_max, SLACK_NS, int(scan)]
    return S.Fragment(S._python(E.ENOTSUP, _CODE, *(str(a).encode() if not isinstance(a, bytes) else a
                                                     for a in args)), _report)


def _report(records: list[S.Record]) -> ChangeReport:
    mode, note, since, flush = S.only(records, b"Z")
    report = ChangeReport(mode.decode(), note.decode("utf-8", "replace"), int(since), flush == b"1")
    names: set[bytes] | None = None
    for tag, fields in records:
        if tag == b"U":
            report.changed[fields[0]] = S.parse_attrs(fields[1:]) if fields[1] in S._TYPE_BITS else None
        elif tag == b"G":
            report.changed[fields[0]] = None
        elif tag == b"D":
            names = report.listed[fields[0]] = set()
        elif tag == b"N" and names is not None:
            names.add(fields[0])
    return report
