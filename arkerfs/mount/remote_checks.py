"""The mount's remote checks: resolve the VM and list /home/user once, before anything is mounted.

Everything that can go wrong with the API or the VM at mount time goes wrong here, as a
``MountError`` whose text is the one-line reason the user sees: a refused key, no such VM, an
unreachable or silent server (bounded by ``--connect-timeout``). Once the checks pass the client
switches to the mount's retry policy: mounting fails fast, a mounted filesystem waits an outage out.
"""

from __future__ import annotations

import errno
import logging

import trio

from arkerfs.mount.daemon import MountConfig, MountError
from arkerfs.protocol import HOME

log = logging.getLogger("arkerfs.mount.daemon")  # the daemon's lines keep one name in its log

# A mount rides out short 429/503 storms: 6 attempts back off ~0.2+0.4+0.8+1.6+2 s ≈ 5 s
# before EIO (the SDK default is 4, ≈ 1.4 s). Connect failures wait up to --outage-timeout.
MOUNT_RETRY_ATTEMPTS = 6


def open_client(config: MountConfig, report):
    """The Arker client of this mount, observed by ``report`` (``MountReport``); the caller closes it."""
    from arkerfs.client import Arker, ArkerError

    try:
        arker = Arker(config.api_key, base_url=config.base_url, list_base_url=config.list_base_url)
    except ArkerError as exc:
        raise MountError(exc.message) from None
    arker.observe(report.observe)
    return arker


async def check_remote(config: MountConfig, arker, report):
    """Resolve the VM (``--local``: fork it from arkuntu if missing) and list /home/user once;
    returns (RemoteFS, (attrs, entries) of /home/user)."""
    from arkerfs.client import ArkerError
    from arkerfs.client.retry import RetryPolicy
    from arkerfs.fs.errors import FsError

    try:
        # A server that accepts connections but never answers must not hang the mount command.
        with trio.move_on_after(config.connect_timeout) as deadline:
            remote, listing = await _resolve_and_list(config, arker, report)
    except ArkerError as exc:
        raise MountError(_api_reason(config, exc)) from None
    except FsError as exc:
        raise MountError(_fs_reason(config, exc)) from None
    if deadline.cancelled_caught:
        raise MountError(f"no answer from the Arker API at {config.base_url or 'the default host'} "
                         f"within {config.connect_timeout:g} s (--connect-timeout)")
    # Mounting fails fast on an unreachable API; once mounted, an outage is waited out.
    arker.retry = RetryPolicy(attempts=MOUNT_RETRY_ATTEMPTS, outage_deadline=config.outage_timeout)
    return remote, listing


async def _resolve_and_list(config: MountConfig, arker, report):
    from arkerfs.client import ArkerError
    from arkerfs.fs.remote import RemoteFS

    try:
        vm = await arker.resolve(config.vm)
    except ArkerError as exc:
        if not (config.local and exc.code == "not_found"):
            raise
        log.info("creating VM %s from arkuntu", config.vm)
        vm = await arker.vm("arkuntu").fork(name=config.vm)
    report.vm_id = vm.id
    remote = RemoteFS(vm, run_timeout=config.run_timeout, outage_timeout=config.outage_timeout)
    return remote, await remote.list_dir(HOME.encode())


def _api_reason(config: MountConfig, exc) -> str:
    if exc.code in ("unauthorized", "forbidden"):
        return f"the API key was refused ({exc.message})"
    if exc.code == "not_found":
        return exc.message if config.vm in exc.message else f"no VM {config.vm!r} ({exc.message})"
    if exc.status == 0:
        return f"cannot reach the Arker API at {config.base_url or 'the default host'}: {exc.message}"
    return f"{exc.code}: {exc.message}"


def _fs_reason(config: MountConfig, exc) -> str:
    if exc.errno == errno.ENOENT:
        return f"no VM {config.vm!r} (or it has no {HOME})"
    if exc.errno == errno.EACCES:
        return f"the API key was refused for VM {config.vm!r} ({exc})"
    return f"cannot list {HOME} on VM {config.vm!r}: {exc}"
