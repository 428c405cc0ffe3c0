"""Whole-file reads and atomic whole-file writes inside a VM home (blocking; call from a thread).

Writes go to a temporary file in the target's own directory and are renamed over the target,
so a reader, or a server killed with SIGKILL, sees the old file or the new one, never a torn
one (PROTOCOL.md 8.2). New files are 0644; a replaced file keeps its mode.
"""

from __future__ import annotations

import os
import secrets
import shutil
import stat

from arkerfs.server import confine

TEMP_PREFIX = ".arkerfs-tmp-"


def read_all(fd: int) -> bytes:
    """Everything left in ``fd`` (which the caller owns)."""
    parts = []
    while chunk := os.read(fd, 1 << 20):
        parts.append(chunk)
    return b"".join(parts)


def install(home: str, vm_path: str, data: bytes | None = None, staged: str | None = None) -> None:
    """Atomically replace ``vm_path`` with ``data`` or with the contents of host file ``staged``."""
    parent, name = confine.open_parent_for_write(home, vm_path)
    try:
        try:
            old = os.stat(name, dir_fd=parent, follow_symlinks=False)
        except FileNotFoundError:
            mode = 0o644
        else:
            if stat.S_ISDIR(old.st_mode):
                raise confine.ConfineError("bad_request", f"path is a directory: {vm_path}")
            mode = stat.S_IMODE(old.st_mode) if stat.S_ISREG(old.st_mode) else 0o644
        tmp = TEMP_PREFIX + secrets.token_hex(8)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=parent)
        try:
            with os.fdopen(fd, "wb") as out:
                if staged is not None:
                    with open(staged, "rb") as src:
                        shutil.copyfileobj(src, out, 1 << 20)
                elif data:
                    out.write(data)
                out.flush()
                os.fchmod(out.fileno(), mode)
                os.fsync(out.fileno())
            os.replace(tmp, name, src_dir_fd=parent, dst_dir_fd=parent)
        except BaseException:
            try:
                os.unlink(tmp, dir_fd=parent)
            except FileNotFoundError:
                pass
            raise
        os.fsync(parent)
    finally:
        os.close(parent)
