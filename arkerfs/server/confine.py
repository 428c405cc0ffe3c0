"""Resolve a VM path to a file inside one VM's home, and never anywhere else (security-critical).

A VM's home is the host directory that runs see bind-mounted at ``/home/user``. Symlinks in it
were made by the VM's own commands, so their targets are *VM* paths: an absolute target
``/home/user/x`` means ``<home>/x`` and any other absolute target is outside the VM. Host
``realpath`` would get that wrong, so components are resolved here one by one:

1. ``_resolve`` expands symlinks (at most 40 hops) into a canonical list of names below the
   home, refusing anything that climbs out.
2. The canonical names are then opened with ``openat(..., O_NOFOLLOW)`` one directory at a
   time. If a VM command swaps a component for a symlink between the two steps, the open fails
   instead of following it, so a race can only produce an error, never an escape.
"""

from __future__ import annotations

import errno
import os
import stat
from collections import deque

from arkerfs.protocol import HOME

MAX_SYMLINK_HOPS = 40
MAX_PATH_BYTES = 4096
MAX_NAME_BYTES = 255
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class ConfineError(Exception):
    """The path cannot be used; ``code`` is ``bad_request`` or ``not_found``."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def check_lengths(vm_path: str) -> None:
    """Refuse paths longer than Linux allows, before touching the disk."""
    if len(vm_path.encode("utf-8")) > MAX_PATH_BYTES:
        raise ConfineError("bad_request", f"path longer than {MAX_PATH_BYTES} bytes")
    if any(len(seg.encode("utf-8")) > MAX_NAME_BYTES for seg in vm_path.split("/")):
        raise ConfineError("bad_request", f"path has a name longer than {MAX_NAME_BYTES} bytes: {vm_path}")


def _outside(vm_path: str) -> ConfineError:
    return ConfineError("bad_request", f"path resolves outside {HOME}: {vm_path}")


def _resolve(home: str, vm_path: str, *, follow_final: bool) -> tuple[list[str], bool]:
    """Canonical names below ``home`` for ``vm_path`` (already rule-checked), and whether it exists.

    Names past the first missing component are returned as given (they will be created on
    write); a ``..`` after a missing component fails, as it would in the kernel.
    """
    pending = deque(vm_path[len(HOME) + 1 :].split("/"))
    done: list[str] = []
    hops = 0
    while pending:
        name = pending.popleft()
        if name in ("", "."):
            continue
        if name == "..":
            if not done:
                raise _outside(vm_path)
            done.pop()
            continue
        try:
            st = os.lstat(os.path.join(home, *done, name))
        except FileNotFoundError:
            rest = [p for p in pending if p not in ("", ".")]
            if ".." in rest:
                raise ConfineError("not_found", f"file not found: {vm_path}") from None
            return [*done, name, *rest], False
        except NotADirectoryError:
            raise ConfineError("bad_request", f"a parent of the path is not a directory: {vm_path}") from None
        last = not pending
        if stat.S_ISLNK(st.st_mode) and (follow_final or not last):
            hops += 1
            if hops > MAX_SYMLINK_HOPS:
                raise ConfineError("bad_request", f"too many levels of symbolic links: {vm_path}")
            target = os.readlink(os.path.join(home, *done, name))
            if target.startswith("/"):
                if target != HOME and not target.startswith(HOME + "/"):
                    raise _outside(vm_path)
                done = []
                target = target[len(HOME) :]
            pending.extendleft(reversed(target.split("/")))
            continue
        if not last and not stat.S_ISDIR(st.st_mode):
            raise ConfineError("bad_request", f"a parent of the path is not a directory: {vm_path}")
        done.append(name)
    return done, True


def _open_dirs(home: str, names: list[str], vm_path: str, *, create: bool) -> int:
    """An fd for ``home/names...``, walking with O_NOFOLLOW; missing dirs made 0755 if ``create``."""
    fd = os.open(home, _DIR_FLAGS)
    try:
        for name in names:
            try:
                child = os.open(name, _DIR_FLAGS, dir_fd=fd)
            except FileNotFoundError:
                if not create:
                    raise ConfineError("not_found", f"file not found: {vm_path}") from None
                try:
                    os.mkdir(name, 0o755, dir_fd=fd)
                except FileExistsError:
                    pass  # a concurrent writer made it; the open below checks what it is
                child = os.open(name, _DIR_FLAGS, dir_fd=fd)
                os.fchmod(child, 0o755)
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                    raise ConfineError("bad_request", f"path changed while resolving or is not a directory: {vm_path}") from None
                raise
            os.close(fd)
            fd = child
        return fd
    except BaseException:
        os.close(fd)
        raise


def open_for_read(home: str, vm_path: str) -> int:
    """A read-only fd of the regular file ``vm_path`` names; symlinks followed only inside home."""
    check_lengths(vm_path)
    names, exists = _resolve(home, vm_path, follow_final=True)
    if not exists:
        raise ConfineError("not_found", f"file not found: {vm_path}")
    if not names:
        raise ConfineError("bad_request", f"path is a directory, not a file: {vm_path}")
    parent = _open_dirs(home, names[:-1], vm_path, create=False)
    try:
        # O_NONBLOCK so a FIFO cannot hang the server; it changes nothing for regular files.
        fd = os.open(names[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=parent)
    except FileNotFoundError:
        raise ConfineError("not_found", f"file not found: {vm_path}") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise ConfineError("bad_request", f"path changed while resolving: {vm_path}") from None
        raise
    finally:
        os.close(parent)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise ConfineError("bad_request", f"path is not a regular file: {vm_path}")
    return fd


def open_parent_for_write(home: str, vm_path: str) -> tuple[int, str]:
    """(fd of the target's directory, final name), creating missing parents.

    A final symlink is followed when it stays inside the home (the write lands on its target,
    as a write through the link would on a VM) and refused when it points out.
    """
    check_lengths(vm_path)
    names, _ = _resolve(home, vm_path, follow_final=True)
    if not names:
        raise ConfineError("bad_request", f"path names the home directory, not a file: {vm_path}")
    return _open_dirs(home, names[:-1], vm_path, create=True), names[-1]
