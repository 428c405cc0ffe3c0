"""Plain records shared by the remote operations, the caches and the FUSE adapter.

Names and paths are ``bytes`` throughout the filesystem layers: the kernel hands us bytes and a
remote name need not be valid UTF-8. Paths are absolute VM paths (``b"/home/user/a/b"``).
"""

from __future__ import annotations

import stat
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Attrs:
    """What ``lstat`` says about one remote node (never follows a final symlink)."""

    mode: int  # full st_mode, type bits included
    size: int
    nlink: int
    uid: int
    gid: int
    atime_ns: int
    mtime_ns: int
    ctime_ns: int
    remote_ino: int = 0  # the VM's inode number: groups hard links, never exposed as st_ino
    symlink_target: bytes | None = None
    rdev: int = 0
    # the node's user.* xattr names when a listing said (None: not known, ask the VM); not part
    # of equality: two lstats of one version compare equal whether or not they carry them
    xattrs: tuple[bytes, ...] | None = field(default=None, compare=False)

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.mode)

    @property
    def is_reg(self) -> bool:
        return stat.S_ISREG(self.mode)

    @property
    def is_symlink(self) -> bool:
        return stat.S_ISLNK(self.mode)

    @property
    def content_key(self) -> tuple[int, int]:
        """(size, mtime) validator: cached content is reused while this is unchanged."""
        return (self.size, self.mtime_ns)


@dataclass(frozen=True, slots=True)
class Entry:
    """One directory entry with its attributes, as a listing returns it."""

    name: bytes
    attrs: Attrs


@dataclass(frozen=True, slots=True)
class StatFs:
    block_size: int
    fragment_size: int
    blocks: int
    blocks_free: int
    blocks_available: int
    files: int
    files_free: int
    name_max: int = 255
