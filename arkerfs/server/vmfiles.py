"""Whole-file reads and atomic whole-file writes inside a VM home (blocking; call from a thread).

Writes go to a temporary file and are renamed over the target, so a reader, or a server killed
with SIGKILL, sees the old file or the new one, never a torn one (PROTOCOL.md 8.2). New files
are 0644; a replaced file keeps its mode.

The temporary file lives in ``TEMP_DIR`` next to the VM's home (``<data>/vms/<id>/tmp``), not
in the target's directory, so neither a listing through a mount nor a ``run`` inside the VM
ever sees it, and a SIGKILL mid-write leaves nothing behind in the VM; the store empties
``TEMP_DIR`` at start. Only where that directory is on another filesystem than the target
(never on a plain data dir) does the temporary file go next to the target instead.
"""

from __future__ import annotations

import os
import secrets
import shutil
import stat

from arkerfs.server import confine

TEMP_PREFIX = ".arkerfs-tmp-"
TEMP_DIR = "tmp"


def temp_dir_of(home: str) -> str:
    return os.path.join(os.path.dirname(os.path.abspath(home)), TEMP_DIR)


def _open_temp_dir(home: str, parent: int) -> int:
    """fd of the VM's temp dir when a rename from it into ``parent`` can work, else ``parent``."""
    path = temp_dir_of(home)
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return parent
    if os.fstat(fd).st_dev != os.fstat(parent).st_dev:
        os.close(fd)
        return parent
    return fd


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
        tmp_dir = _open_temp_dir(home, parent)
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=tmp_dir)
        except BaseException:
            if tmp_dir != parent:
                os.close(tmp_dir)
            raise
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
            os.replace(tmp, name, src_dir_fd=tmp_dir, dst_dir_fd=parent)
        except BaseException:
            try:
                os.unlink(tmp, dir_fd=tmp_dir)
            except FileNotFoundError:
                pass
            raise
        finally:
            if tmp_dir != parent:
                os.close(tmp_dir)
        os.fsync(parent)
    finally:
        os.close(parent)
