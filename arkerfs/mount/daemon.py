"""The mount daemon's lifecycle, in order:

1. (``--local``) start the embedded server in this trio loop and fork the VM if needed;
2. resolve the VM and probe it with one listing of /home/user — everything that can fail runs
   before ``pyfuse3.init``, which mounts at once (any access before ``main`` would hang);
3. ``pyfuse3.init`` → state file → readiness reported to whoever waits (the detaching parent);
4. nursery { ``pyfuse3.main()``, signal watcher }: SIGTERM/SIGINT list the files still to push
   (for ``arkerfs umount``), push them, then ``pyfuse3.terminate()``; an external
   ``fusermount3 -u`` also ends ``main``;
5. push what is still pending (rescue files for what cannot be pushed), then
   ``pyfuse3.close(unmount=clean)``: after a crash the mount is left dead (ENOTCONN) rather than
   silently empty, and ``arkerfs umount`` cleans it up; SIGUSR2 (``arkerfs umount --force``)
   gives up pushing at any point of 4-5: handlers still waiting are cancelled and every unsent
   buffer goes to a rescue file at once;
6. write the result file (clean?, rescue files) that ``arkerfs umount`` reports from.
"""

from __future__ import annotations

import errno
import logging
import os
import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import trio

from arkerfs.mount import notify, runtime
from arkerfs.protocol import HOME

log = logging.getLogger(__name__)

SHUTDOWN_PUSH_DEADLINE = 900.0  # seconds to push pending writes at unmount
# A mount rides out short 429/503 storms: 6 attempts back off ~0.2+0.4+0.8+1.6+2 s ≈ 5 s
# before EIO (the SDK default is 4, ≈ 1.4 s). Connect failures wait up to --outage-timeout.
MOUNT_RETRY_ATTEMPTS = 6


class MountError(Exception):
    """A mount that cannot start; ``str()`` is the one-line reason shown to the user."""


@dataclass
class MountConfig:
    vm: str
    mountpoint: str  # resolved by the caller: the daemon must never stat its own mount point
    api_key: str | None = field(default=None, repr=False)  # never logged
    base_url: str | None = None
    list_base_url: str | None = None
    cache_ttl: float = 3.0
    read_only: bool = False
    write_back: bool = False  # changes go to a journal under $XDG_STATE_HOME/arkerfs/<vm-id>/ first
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
    from arkerfs.mount.report import MountReport
    from arkerfs.mount.status import serve_status

    failure: MountError | None = None
    report = MountReport(config)
    report.attach_logging()
    async with trio.open_nursery() as services:
        try:
            if config.local:
                await _start_local_server(config, services)
            arker, remote, probe = await _connect(config, report)
        except MountError as exc:
            ready(str(exc))
            failure = exc
            services.cancel_scope.cancel()
        else:
            try:
                # the status socket outlives the kernel mount: it reports the drain at unmount
                await services.start(lambda task_status: serve_status(config.mountpoint, report.snapshot,
                                                                      sync=lambda: report.vfs.push_all(),
                                                                      task_status=task_status))
                result = await _serve(config, remote, probe, ready, report)
            except MountError as exc:
                failure = exc
            finally:
                with trio.CancelScope(shield=True):
                    await arker.aclose()
                services.cancel_scope.cancel()
    report.detach_logging()
    if failure is not None:  # raised out here, not wrapped in the nursery's ExceptionGroup
        raise failure
    return result


async def _start_local_server(config: MountConfig, nursery: trio.Nursery) -> None:
    from arkerfs.server.config import ServerConfig, StartupError, default_data_dir, generated_key
    from arkerfs.server.serve import serve

    data_dir = default_data_dir()
    try:
        key, key_file = generated_key(data_dir)
        server = ServerConfig(data_dir=data_dir, api_keys=(key,), port=0, hidden_files=(key_file,))
        url = await nursery.start(lambda task_status: serve(server, task_status=task_status))
    except StartupError as exc:
        raise MountError(f"the embedded server did not start: {exc}") from None
    log.info("embedded server for %s on %s", data_dir, url)
    config.api_key, config.base_url, config.list_base_url = key, url, url


async def _connect(config: MountConfig, report):
    """Resolve the VM and list /home/user once; returns (Arker, RemoteFS, (attrs, entries))."""
    from arkerfs.client import Arker, ArkerError
    from arkerfs.client.retry import RetryPolicy
    from arkerfs.fs.errors import FsError
    from arkerfs.fs.remote import RemoteFS

    try:
        arker = Arker(config.api_key, base_url=config.base_url, list_base_url=config.list_base_url)
    except ArkerError as exc:
        raise MountError(exc.message) from None
    arker.observe(report.observe)
    try:
        # A server that accepts connections but never answers must not hang the mount command.
        with trio.move_on_after(config.connect_timeout) as deadline:
            try:
                vm = await arker.resolve(config.vm)
            except ArkerError as exc:
                if not (config.local and exc.code == "not_found"):
                    raise
                log.info("creating VM %s from arkuntu", config.vm)
                vm = await arker.vm("arkuntu").fork(name=config.vm)
            report.vm_id = vm.id
            remote = RemoteFS(vm, run_timeout=config.run_timeout, outage_timeout=config.outage_timeout)
            probe = await remote.list_dir(HOME.encode())
        if deadline.cancelled_caught:
            await arker.aclose()
            raise MountError(f"no answer from the Arker API at {config.base_url or 'the default host'} "
                             f"within {config.connect_timeout:g} s (--connect-timeout)")
        # Mounting fails fast on an unreachable API; once mounted, an outage is waited out.
        arker.retry = RetryPolicy(attempts=MOUNT_RETRY_ATTEMPTS, outage_deadline=config.outage_timeout)
    except ArkerError as exc:
        await arker.aclose()
        raise MountError(_api_reason(config, exc)) from None
    except FsError as exc:
        await arker.aclose()
        raise MountError(_fs_reason(config, exc)) from None
    return arker, remote, probe


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


async def _serve(config: MountConfig, remote, probe, ready, report) -> runtime.MountResult:
    import pyfuse3

    from arkerfs.fs.vfs import VFS, Options
    from arkerfs.mount.ops import Operations

    spool = runtime.private_dir(Path(config.spool_dir))
    owner = None if config.show_remote_owner else (os.getuid(), os.getgid())
    root_attrs, entries = probe
    journal = None
    if config.write_back:
        remote, journal = _write_back_port(remote, report.vm_id, root_attrs, ready)
    vfs = VFS(remote, HOME.encode(), str(spool),
              Options(cache_ttl=config.cache_ttl, read_only=config.read_only, owner=owner,
                      transform_symlinks=config.transform_symlinks))
    report.vfs = vfs
    vfs.cache.store_listing(HOME.encode(), root_attrs, entries, vfs.cache.generation)
    kernel_timeout = min(1.0, config.cache_ttl)
    # The handler deadline must outlast an outage wait (plus a reconciliation probe).
    ops = Operations(vfs, kernel_timeout=kernel_timeout, negative_timeout=kernel_timeout,
                     deadline=max(120.0, config.outage_timeout + config.run_timeout + 60.0))
    options = set(pyfuse3.default_options)
    options |= {f"fsname=arkerfs:{config.vm}", "subtype=arkerfs", *config.fuse_options}
    if config.read_only:
        options.add("ro")
    if config.debug_fuse:
        options.add("debug")
    try:
        pyfuse3.init(ops, config.mountpoint, options)
    except RuntimeError as exc:
        ready(f"the kernel refused the mount: {exc}")
        if journal is not None:
            journal.close()
        raise MountError(str(exc)) from None
    runtime.clear_result(config.mountpoint)
    runtime.write_state(runtime.MountState(
        pid=os.getpid(), cmdline=runtime.own_cmdline(), mountpoint=config.mountpoint,
        vm=config.vm, log_file=config.log_file, spool_dir=str(spool)))
    log.info("mounted VM %s at %s", config.vm, config.mountpoint)
    ready(None)
    notify.ready(f"mounted VM {config.vm} at {config.mountpoint}")  # systemd Type=notify
    report.state = "serving"
    clean = False
    rescued: list[str] = []
    give_up = GiveUp()
    # The signal watcher lives until the very end: a second SIGTERM during the final push must
    # not fall back to the default action (death without a result).
    async with trio.open_nursery() as watching:
        watching.start_soon(_watch_signals, vfs, config.mountpoint, give_up, watching)
        if journal is not None:  # pushes while serving and while draining; stops with the nursery
            await watching.start(remote.pusher.run)
        try:
            with give_up.scope():  # giving up also cancels handlers still waiting on the API
                await pyfuse3.main()
            clean = not give_up.given_up
            give_up.serving = False
        finally:
            give_up.serving = False  # pyfuse3.terminate() is for a running main() only
            notify.stopping("pushing pending writes before unmounting")
            report.state = "draining"
            try:
                with trio.move_on_after(SHUTDOWN_PUSH_DEADLINE) as scope:
                    scope.shield = True
                    with give_up.scope():
                        rescued = await vfs.shutdown()
                if give_up.given_up:
                    rescued = vfs.rescue_unsent()
                    clean = False
                elif scope.cancelled_caught:
                    log.error("gave up pushing pending writes after %.0f s", SHUTDOWN_PUSH_DEADLINE)
                    clean = False
            except Exception:  # still unmount (or release) the kernel side below
                log.exception("pushing pending writes at unmount failed")
                clean = False
            pyfuse3.close(unmount=clean)
            if journal is not None:
                journal.close()  # what is left in it is pushed by the next mount of this VM
            result = runtime.MountResult(clean=clean, rescued=rescued)
            runtime.write_result(config.mountpoint, result)
            runtime.remove_state(config.mountpoint)
            runtime.clear_pending(config.mountpoint)
            log.info("unmounted %s (clean=%s, rescued=%d)", config.mountpoint, clean, len(rescued))
            watching.cancel_scope.cancel()
    return result


def _write_back_port(remote, vm_id: str, root_attrs, ready):
    """The journal of this VM (replayed into the overlay) and the write-back port over ``remote``."""
    from arkerfs.writeback.journal import Journal, JournalError
    from arkerfs.writeback.port import WriteBack

    try:
        journal = Journal.for_vm(vm_id)
    except (JournalError, OSError) as exc:
        ready(f"cannot use the write-back journal: {exc}")
        raise MountError(f"cannot use the write-back journal: {exc}") from None
    for path in journal.rescued:
        log.error("journal: content no change names (its close() never returned) kept in %s", path)
    port = WriteBack(remote, journal, owner=(root_attrs.uid, root_attrs.gid))
    return port, journal


async def _watch_signals(vfs, mountpoint: str, give_up: GiveUp, nursery: trio.Nursery) -> None:
    """SIGTERM/SIGINT: push, then unmount (later ones are ignored: already on the way);
    SIGUSR2: give up pushing (``arkerfs umount --force``)."""
    import pyfuse3

    unmounting = False
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGUSR2) as signals:
        async for signum in signals:
            name = signal.Signals(signum).name
            if signum == signal.SIGUSR2:
                log.warning("%s: giving up pushing; unsent data goes to rescue files", name)
                give_up.now()
                vfs.rescue_unsent()
                if give_up.serving:
                    pyfuse3.terminate()
            elif unmounting:
                log.info("%s: already pushing pending writes and unmounting", name)
            else:
                unmounting = True
                log.info("%s: pushing pending writes, then unmounting", name)
                notify.stopping("pushing pending writes before unmounting")
                runtime.write_pending(mountpoint, vfs.pending_paths())
                nursery.start_soon(_push_then_terminate, vfs, give_up)


async def _push_then_terminate(vfs, give_up: GiveUp) -> None:
    import pyfuse3

    with give_up.scope():
        await vfs.push_all()
    if give_up.serving:
        pyfuse3.terminate()


class GiveUp:
    """SIGUSR2 (``arkerfs umount --force``): cancel every push at unmount, now and later."""

    def __init__(self) -> None:
        self.given_up = False
        self.serving = True  # pyfuse3.main() is running
        self._scopes: set[trio.CancelScope] = set()

    @contextmanager
    def scope(self) -> Iterator[trio.CancelScope]:
        cancel = trio.CancelScope()
        if self.given_up:
            cancel.cancel()
        self._scopes.add(cancel)
        try:
            with cancel:
                yield cancel
        finally:
            self._scopes.discard(cancel)

    def now(self) -> None:
        self.given_up = True
        for cancel in self._scopes:
            cancel.cancel()


