"""The mount daemon's entry: ``run_mount(config, ready)`` runs one mount from start to unmount.

The steps, in order, are in ``lifecycle``: the embedded server (``--local``), the remote checks,
the journal replay (``--write-back``), the VFS, the status socket, the kernel mount, the signal
watcher, the pusher, readiness, serving, the drain (on SIGTERM while still serving, and once more
on the way out), the unmount and the result file. Here: the configuration, the one error a mount
that cannot start raises, and how its reason reaches whoever waits for the mount.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from arkerfs.mount import runtime


class MountError(Exception):
    """A mount that cannot start; ``str()`` is the one-line reason shown to the user."""


@dataclass
class MountConfig:
    vm: str
    mountpoint: str  # resolved by the caller: the daemon must never stat its own mount point
    api_key: str | None = field(default=None, repr=False)  # never logged
    base_url: str | None = None
    list_base_url: str | None = None
    cache_ttl: float = 3.0  # how long a cached entry is trusted without a live change watcher
    watch: bool = True  # run the change watcher (``mount.watcher``)
    watch_ttl: float = 60.0  # how long a cached entry is trusted while the watcher is live
    read_only: bool = False
    write_back: bool = True  # changes go to a journal under $XDG_STATE_HOME/arkerfs/<vm-id>/ first
    journal_max_bytes: int = 2 * 1024**3  # writers wait for pushes beyond this (and the free space)
    outage_timeout: float = 60.0  # see docs/RELIABILITY.md: wait this long for an unreachable API
    run_timeout: float = 60.0  # server-side bound of every run the mount issues
    connect_timeout: float = 30.0  # the whole of resolving + probing the VM before mounting
    show_remote_owner: bool = False
    fuse_options: tuple[str, ...] = ()
    spool_dir: str = ""
    log_file: str = ""
    debug_fuse: bool = False
    local: bool = False  # run the embedded server and create the VM if missing
    transform_symlinks: bool = True  # links to /home/user/... read as links into the mount


async def run_mount(config: MountConfig, ready: Callable[[str | None], None]) -> runtime.MountResult:
    """Mount, serve until unmounted or signalled, clean up. ``ready(None)`` is called once the
    mount is live, ``ready(reason)`` if it could not be made (then MountError is raised)."""
    from arkerfs.mount import lifecycle
    from arkerfs.mount.report import MountReport

    report = MountReport(config)
    report.attach_logging()
    try:
        return await lifecycle.run(config, report, ready)
    except (MountError, BaseExceptionGroup) as exc:
        failure = _single(exc)
        if not isinstance(failure, MountError):
            raise
        ready(str(failure))
        raise failure from None  # bare, not inside the groups of the nurseries it came through
    finally:
        report.detach_logging()


def _single(exc: BaseException) -> BaseException:
    """The one exception inside nested single-member groups (trio wraps what leaves a nursery)."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc
