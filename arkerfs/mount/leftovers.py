"""What a dead daemon left in its spool directory: find it, keep user data, report it.

A write buffer past 4 MiB lives in a named ``<spool>/write-*`` file (arkerfs/fs/buffers.py)
that the daemon removes when the file is closed; a daemon killed with ``kill -9`` leaves it
behind. It may hold the only copy of data the application wrote, so it is never deleted: it is
moved to ``<spool>/rescue/<spool name>.<date>`` (the rescue directory close failures use);
empty ones are removed.

Liveness is per file, so spool directories shared by several mounts are safe: a daemon holds
a shared ``flock`` on each of its spool files for as long as it has it open, and the kernel
drops it when the daemon dies. A file whose exclusive lock cannot be taken belongs to a live
daemon and is left alone.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time

PREFIX = "write-"


def collect(spool_dir: str) -> str | None:
    """Rescue or remove what dead daemons left in ``spool_dir``; returns one line saying what
    was found (None if nothing)."""
    try:
        names = sorted(n for n in os.listdir(spool_dir) if n.startswith(PREFIX))
    except OSError:
        return None
    kept: list[str] = []
    kept_bytes = removed = 0
    for name in names:
        path = os.path.join(spool_dir, name)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            continue  # gone meanwhile (its daemon closed it), or not a plain file
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # a live daemon holds it
            st = os.fstat(fd)
            if st.st_size == 0:
                os.unlink(path)
                removed += 1
                continue
            rescue_dir = os.path.join(spool_dir, "rescue")
            os.makedirs(rescue_dir, mode=0o700, exist_ok=True)
            stamp = time.strftime("%Y%m%dT%H%M%S", time.localtime(st.st_mtime))
            target = os.path.join(rescue_dir, f"{name}.{stamp}")
            os.rename(path, target)  # same directory tree: no copy, nothing lost on failure
            kept.append(target)
            kept_bytes += st.st_size
        except OSError:
            continue
        finally:
            with contextlib.suppress(OSError):
                os.close(fd)
    if not kept and not removed:
        return None
    if not kept:
        return f"removed {removed} empty write buffer(s) a crashed daemon left in spool {spool_dir}"
    return (f"a crashed daemon left {len(kept)} unsent write buffer(s) ({kept_bytes / 1e6:.1f} MB) in spool "
            f"{spool_dir}; kept as rescue file(s): {', '.join(kept)}")
