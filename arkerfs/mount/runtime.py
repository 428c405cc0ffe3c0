"""Where a mount keeps its runtime files, and how other processes find a running mount.

Per mountpoint (keyed by a hash of its real path), under the runtime directory
(``$XDG_RUNTIME_DIR/arkerfs``, else ``/run/arkerfs`` for root, else ``/tmp/arkerfs-<uid>``):

- ``<hash>.json``: the daemon's pid, its ``/proc/<pid>/cmdline`` (so a reused pid is never taken
  for the daemon), the VM, the log file and the spool directory;
- ``<hash>.result.json``: written by the daemon as it exits: whether it unmounted cleanly and the
  rescue files holding data it could not push;
- ``<hash>.pending.json``: written by the daemon when it is told to unmount: the files it still
  has to push, so that ``arkerfs umount`` can say what it is waiting for;
- ``<hash>.log``: the daemon's log when detached and no ``--log-file`` was given.

The spool directory (contents, write buffers, rescue files) defaults to
``$XDG_CACHE_HOME/arkerfs/spool/<hash>``, mode 0700.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path


def runtime_dir() -> Path:
    base = os.environ.get("XDG_RUNTIME_DIR")
    if base:
        path = Path(base) / "arkerfs"
    elif os.geteuid() == 0:
        path = Path("/run/arkerfs")
    else:
        path = Path(f"/tmp/arkerfs-{os.getuid()}")
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    return path


def resolve_mountpoint(path: str) -> str:
    """``path`` as the mount table spells it, found without a stat of the mounted tree: a stat
    of a mount whose API never answers would wait for it. A path that is not a mount point
    as given is resolved fully (``os.path.realpath``)."""
    absolute = os.path.abspath(path)  # lexical: no system call
    if mount_entry(absolute) is not None:
        return absolute
    head, tail = os.path.split(absolute)
    beside = os.path.join(os.path.realpath(head), tail)  # symlinks above it, not in it
    if mount_entry(beside) is not None:
        return beside
    return os.path.realpath(absolute)


def mount_key(mountpoint: str) -> str:
    """``mountpoint`` must already be resolved (``os.path.realpath``) by the caller: the daemon
    must never resolve it itself, since a stat of its own mount point would wait for itself."""
    return hashlib.sha256(mountpoint.encode()).hexdigest()[:16]


def default_spool_dir(mountpoint: str) -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "arkerfs" / "spool" / mount_key(mountpoint)


def default_log_file(mountpoint: str) -> Path:
    return runtime_dir() / f"{mount_key(mountpoint)}.log"


def private_dir(path: Path) -> Path:
    """Create ``path`` if needed and make it private (0700), even if it already existed."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path, 0o700)
    return path


@dataclass
class MountState:
    pid: int
    cmdline: str
    mountpoint: str
    vm: str
    log_file: str
    spool_dir: str


@dataclass
class MountResult:
    clean: bool
    rescued: list[str]


def _state_path(mountpoint: str, suffix: str) -> Path:
    return runtime_dir() / f"{mount_key(mountpoint)}{suffix}"


def write_json(path: Path, value) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(asdict(value)))
    os.replace(tmp, path)


def write_state(state: MountState) -> None:
    write_json(_state_path(state.mountpoint, ".json"), state)


def read_state(mountpoint: str) -> MountState | None:
    try:
        return MountState(**json.loads(_state_path(mountpoint, ".json").read_text()))
    except (OSError, ValueError, TypeError):
        return None


def remove_state(mountpoint: str) -> None:
    _state_path(mountpoint, ".json").unlink(missing_ok=True)


def write_result(mountpoint: str, result: MountResult) -> None:
    write_json(_state_path(mountpoint, ".result.json"), result)


def take_result(mountpoint: str) -> MountResult | None:
    """Read and remove the result the daemon left."""
    path = _state_path(mountpoint, ".result.json")
    try:
        result = MountResult(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        return None
    path.unlink(missing_ok=True)
    return result


def clear_result(mountpoint: str) -> None:
    _state_path(mountpoint, ".result.json").unlink(missing_ok=True)


def write_pending(mountpoint: str, paths: list[str]) -> None:
    tmp = _state_path(mountpoint, ".pending.json.tmp")
    tmp.write_text(json.dumps(paths))
    os.replace(tmp, _state_path(mountpoint, ".pending.json"))


def read_pending(mountpoint: str) -> list[str]:
    try:
        return [str(p) for p in json.loads(_state_path(mountpoint, ".pending.json").read_text())]
    except (OSError, ValueError, TypeError):
        return []


def clear_pending(mountpoint: str) -> None:
    _state_path(mountpoint, ".pending.json").unlink(missing_ok=True)


def own_cmdline() -> str:
    with open("/proc/self/cmdline", "rb") as f:
        return f.read().decode(errors="replace")


def daemon_alive(state: MountState) -> bool:
    """True if ``state.pid`` is still that daemon (same cmdline, not a zombie)."""
    try:
        with open(f"/proc/{state.pid}/cmdline", "rb") as f:
            if f.read().decode(errors="replace") != state.cmdline:
                return False
        with open(f"/proc/{state.pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (OSError, IndexError):
        return False


def mount_entry(mountpoint: str) -> tuple[str, str] | None:
    """(source, fstype) of the mount at ``mountpoint`` (a resolved path) per /proc/self/mounts,
    else None. Unlike ``os.path.ismount`` this also sees a dead FUSE mount (ENOTCONN)."""
    target = mountpoint
    with open("/proc/self/mounts", encoding="utf-8", errors="replace") as f:
        found = None
        for line in f:
            source, point, fstype = line.split(" ", 3)[:3]
            if _unescape(point) == target:
                found = (source, fstype)  # the last one is the one on top
    return found


def _unescape(field: str) -> str:
    return field.encode().decode("unicode_escape") if "\\" in field else field


def lazy_unmount(mountpoint: str) -> subprocess.CompletedProcess:
    return subprocess.run(["fusermount3", "-u", "-z", mountpoint], capture_output=True, text=True)
