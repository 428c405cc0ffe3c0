"""The mount daemon's lifecycle: one ordered structure, entered in dependency order, left in reverse.

Each step is entered into one ``AsyncExitStack`` and pushes its own way down as soon as it has
succeeded, so leaving the stack — after serving, or after a failure at any step — undoes exactly
what was done, newest first; nothing records how far it got. (s3ql's ``mount.py`` has this shape.)
Everything that can fail runs before the kernel mount: ``pyfuse3.init`` mounts at once, and any
access to the mount before ``main`` runs would hang.

Up, and [down]:

1. local server (``--local``): the embedded server in this trio loop [stopped last: the final
   drain still talks to it];
2. remote checks: resolve the VM (``--local``: fork it if missing) and list /home/user once, see
   ``remote_checks`` [the API client is closed];
3. journal replay (``--write-back``): open this VM's journal and replay what an earlier daemon
   left in it into the change port's overlay [closed after the unmount: what is still in it is
   pushed by the next mount of this VM];
4. filesystem: the VFS over that port (or straight over the VM), seeded with step 2's listing
   (unless step 3 replayed changes: then the home is listed again, through the overlay);
5. status socket (``arkerfs status``, ``arkerfs sync``) [stopped after the final drain, which it
   shows];
6. kernel mount: ``pyfuse3.init``, then the state file [``pyfuse3.close(unmount=clean)`` — after
   a crash the mount is left dead (ENOTCONN) rather than silently empty, and ``arkerfs umount``
   cleans it up — then the result file (clean?, rescue files) that ``arkerfs umount`` reports
   from, and the state file goes];
7. signal watcher [stopped after the final drain: a second SIGTERM during it must not fall back
   to the default action, death without a result]: SIGTERM/SIGINT list the files still to push
   (for ``arkerfs umount``) and **drain while still serving** — push everything pending, the
   mount answering meanwhile — then end ``main``; later ones are ignored. SIGUSR2 (``arkerfs
   umount --force``) gives up pushing, now and in step 9: handlers still waiting on the API are
   cancelled, every unsent buffer goes to a rescue file at once, ``main`` ends;
8. pusher (``--write-back``): ships the journal in batches while serving [stopped after the
   final drain, which pushes what is left itself];
9. final drain [on the way down, whatever ended the serving — step 7, an external
   ``fusermount3 -u``, an error: push what is still pending, rescue what cannot be pushed, within
   ``SHUTDOWN_PUSH_DEADLINE``; the unmount is clean only if serving ended without an error and
   nothing was given up or left];
10. change watcher (unless ``--no-watch``): the VM reports what changed in it, see
    ``watcher`` [stopped first on the way down];
11. readiness, once the mount answers: the detaching parent (``ready``) and systemd
    (``notify``: ``READY=1``; ``STOPPING=1`` when a drain starts);
12. serving: ``pyfuse3.main()`` until unmounted or ended by step 7.
"""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Callable, Iterator
from contextlib import AsyncExitStack, contextmanager
from functools import partial
from pathlib import Path

import trio

from arkerfs.mount import notify, runtime
from arkerfs.mount.daemon import MountConfig, MountError
from arkerfs.protocol import HOME

log = logging.getLogger("arkerfs.mount.daemon")  # the daemon's lines keep one name in its log

SHUTDOWN_PUSH_DEADLINE = 900.0  # seconds to push pending writes at unmount


async def run(config: MountConfig, report, ready: Callable[[str | None], None]) -> runtime.MountResult:
    """Steps 1-12 of the module doc, in order; returns once unmounted. ``report`` is the
    ``MountReport``; ``ready(None)`` is called once the mount is live. A mount that cannot be
    made raises MountError (inside trio's exception groups: ``daemon.run_mount`` unwraps it)."""
    outcome = runtime.MountResult(clean=False, rescued=[])  # set by the drain, written at the unmount
    give_up = GiveUp()
    async with AsyncExitStack() as stack:
        if config.local:
            await _local_server(stack, config)
        remote, listing = await _remote_checks(stack, config, report)
        vm_remote = remote
        if config.write_back:
            remote = _journal_replay(stack, remote, report.vm_id, listing[0], config.journal_max_bytes)
        vfs = _filesystem(config, remote, listing, report)
        await _status_socket(stack, config, report, vfs)
        _kernel_mount(stack, config, vfs, outcome)
        await _start_service(stack, partial(_watch_signals, vfs, config.mountpoint, give_up))
        if config.write_back:
            await _start_service(stack, remote.pusher.run)
        stack.push_async_exit(partial(_final_drain, vfs, give_up, report, outcome))
        if config.watch:
            await _start_service(stack, _change_watcher(stack, config, vfs, vm_remote.pool, report).run)
        _ready(config, report, ready)
        await _serve(give_up)
    return outcome


async def _start_service(stack: AsyncExitStack, task) -> object:
    """Start the long-running ``task`` (it calls ``task_status.started(value)``): running when
    this returns ``value``; cancelled, and waited for, when the stack unwinds to this point."""
    nursery = await stack.enter_async_context(trio.open_nursery())
    stack.callback(nursery.cancel_scope.cancel)
    return await nursery.start(task)


# == 1-4: before the kernel mount, everything that can fail ==================================
async def _local_server(stack: AsyncExitStack, config: MountConfig) -> None:
    """Step 1: the embedded server on a free port; ``config`` is pointed at it."""
    from arkerfs.server.config import ServerConfig, StartupError, default_data_dir, generated_key
    from arkerfs.server.serve import serve

    data_dir = default_data_dir()
    try:
        key, key_file = generated_key(data_dir)
        server = ServerConfig(data_dir=data_dir, api_keys=(key,), port=0, hidden_files=(key_file,))
        url = await _start_service(stack, partial(serve, server))
    except StartupError as exc:
        raise MountError(f"the embedded server did not start: {exc}") from None
    log.info("embedded server for %s on %s", data_dir, url)
    config.api_key, config.base_url, config.list_base_url = key, url, url


async def _remote_checks(stack: AsyncExitStack, config: MountConfig, report):
    """Step 2: returns (RemoteFS, (attrs, entries) of /home/user)."""
    from arkerfs.mount.remote_checks import check_remote, open_client

    arker = open_client(config, report)
    stack.push_async_callback(_close_client, arker)
    return await check_remote(config, arker, report)


async def _close_client(arker) -> None:
    with trio.CancelScope(shield=True):  # also on the way out of a cancelled mount
        await arker.aclose()


def _journal_replay(stack: AsyncExitStack, remote, vm_id: str, root_attrs, max_bytes: int):
    """Step 3: the write-back port over ``remote``; it replays this VM's journal into its overlay
    (the pusher, step 8, ships what was replayed)."""
    from arkerfs.writeback.journal import Journal, JournalError
    from arkerfs.writeback.port import WriteBack

    try:
        journal = stack.enter_context(Journal.for_vm(vm_id))
    except (JournalError, OSError) as exc:
        raise MountError(f"cannot use the write-back journal: {exc}") from None
    for path in journal.rescued:
        log.error("journal: content no change names (its close() never returned) kept in %s", path)
    return WriteBack(remote, journal, owner=(root_attrs.uid, root_attrs.gid), max_bytes=max_bytes)


def _filesystem(config: MountConfig, remote, listing, report):
    """Step 4: the VFS, its spool private, /home/user's listing already cached."""
    from arkerfs.fs.vfs import VFS, Options

    spool = runtime.private_dir(Path(config.spool_dir))
    owner = None if config.show_remote_owner else (os.getuid(), os.getgid())
    vfs = VFS(remote, HOME.encode(), str(spool),
              Options(cache_ttl=config.cache_ttl, read_only=config.read_only, owner=owner,
                      transform_symlinks=config.transform_symlinks))
    if not getattr(remote, "replayed", 0):
        # Not after a replay: that listing was taken before the overlay existed, so it lacks
        # what the journal adds to the home; cached, it would hide those names once pushed.
        root_attrs, entries = listing
        vfs.cache.store_listing(HOME.encode(), root_attrs, entries, vfs.cache.generation)
    report.vfs = vfs
    return vfs


async def _status_socket(stack: AsyncExitStack, config: MountConfig, report, vfs) -> None:
    """Step 5: ``arkerfs status`` reads ``report``; ``arkerfs sync`` pushes everything pending."""
    from arkerfs.mount.status import serve_status

    await _start_service(stack, partial(serve_status, config.mountpoint, report.snapshot, sync=vfs.push_all))


# == 6-11: mounted ===========================================================================
def _kernel_mount(stack: AsyncExitStack, config: MountConfig, vfs, outcome: runtime.MountResult) -> None:
    """Step 6: from here on the kernel sends requests (answered once ``main`` runs)."""
    import pyfuse3

    from arkerfs.mount.ops import Operations

    kernel_timeout = min(1.0, config.cache_ttl)
    # The handler deadline must outlast an outage wait (plus a reconciliation probe).
    ops = Operations(vfs, kernel_timeout=kernel_timeout, negative_timeout=kernel_timeout,
                     deadline=max(120.0, config.outage_timeout + config.run_timeout + 60.0))
    try:
        pyfuse3.init(ops, config.mountpoint, _fuse_options(config))
    except RuntimeError as exc:
        raise MountError(f"the kernel refused the mount: {exc}") from None
    stack.callback(_unmount, config.mountpoint, outcome)
    runtime.clear_result(config.mountpoint)
    runtime.write_state(runtime.MountState(
        pid=os.getpid(), cmdline=runtime.own_cmdline(), mountpoint=config.mountpoint,
        vm=config.vm, log_file=config.log_file, spool_dir=vfs.spool_dir))


def _fuse_options(config: MountConfig) -> set[str]:
    import pyfuse3

    options = set(pyfuse3.default_options)
    options |= {f"fsname=arkerfs:{config.vm}", "subtype=arkerfs", *config.fuse_options}
    if config.read_only:
        options.add("ro")
    if config.debug_fuse:
        options.add("debug")
    return options


def _unmount(mountpoint: str, outcome: runtime.MountResult) -> None:
    """Step 6, down: unmount (or only release the dead mount), then report the outcome."""
    import pyfuse3

    pyfuse3.close(unmount=outcome.clean)
    runtime.write_result(mountpoint, outcome)
    runtime.remove_state(mountpoint)
    runtime.clear_pending(mountpoint)
    log.info("unmounted %s (clean=%s, rescued=%d)", mountpoint, outcome.clean, len(outcome.rescued))


def _change_watcher(stack: AsyncExitStack, config: MountConfig, vfs, pool, report):
    """Step 10 (unless ``--no-watch``): the VM reports its changes; stopped before the final
    drain, so it never tells a kernel that has let go of the mount. It has a client of its own:
    a failed watch run is its own business (an INFO line, tried again), never an outage wait."""
    from arkerfs.client.retry import RetryPolicy
    from arkerfs.mount.remote_checks import open_client
    from arkerfs.mount.watcher import Watcher, tell_kernel

    arker = open_client(config, report)
    stack.push_async_callback(_close_client, arker)
    arker.retry = RetryPolicy(attempts=2, log_level=logging.INFO)
    watcher = Watcher(vfs, arker.vm(report.vm_id), pool, watch_ttl=config.watch_ttl,
                      cache_ttl=config.cache_ttl, kernel=partial(tell_kernel, vfs))
    report.watcher = watcher
    return watcher


def _ready(config: MountConfig, report, ready: Callable[[str | None], None]) -> None:
    """Step 11: the mount is live; the systemd readiness hook (``Type=notify``) is here."""
    log.info("mounted VM %s at %s", config.vm, config.mountpoint)
    ready(None)
    notify.ready(f"mounted VM {config.vm} at {config.mountpoint}")
    report.state = "serving"


async def _serve(give_up: GiveUp) -> None:
    """Step 12: answer the kernel until unmounted or terminated (step 7)."""
    import pyfuse3

    with give_up.scope():  # giving up also cancels handlers still waiting on the API
        await pyfuse3.main()


async def _final_drain(vfs, give_up: GiveUp, report, outcome: runtime.MountResult, exc_type, exc, tb) -> None:
    """Step 9, an exit callback: ``exc_type`` is None if serving ended without an error. Fills
    ``outcome``; never stops the unmount that follows (nor hides the error)."""
    notify.stopping("pushing pending writes before unmounting")
    report.state = "draining"
    try:
        with trio.move_on_after(SHUTDOWN_PUSH_DEADLINE) as deadline:
            deadline.shield = True  # after an error too: what is pending is still worth pushing
            with give_up.scope():
                rescued = await vfs.shutdown()
    except Exception:  # still unmount (or release) the kernel side
        log.exception("pushing pending writes at unmount failed")
        return
    if give_up.given_up:
        outcome.rescued = vfs.rescue_unsent()
    elif deadline.cancelled_caught:
        log.error("gave up pushing pending writes after %.0f s", SHUTDOWN_PUSH_DEADLINE)
    else:
        outcome.rescued = rescued
        outcome.clean = exc_type is None


async def _watch_signals(vfs, mountpoint: str, give_up: GiveUp, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
    """Step 7. It lives strictly between ``pyfuse3.init`` and ``pyfuse3.close``, the span in
    which ``pyfuse3.terminate()`` is valid (before ``main`` runs it makes ``main`` return at
    once; after, it does nothing)."""
    import pyfuse3

    draining = False
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGUSR2) as signals:
        async with trio.open_nursery() as nursery:
            task_status.started()
            async for signum in signals:
                name = signal.Signals(signum).name
                if signum == signal.SIGUSR2:
                    log.warning("%s: giving up pushing; unsent data goes to rescue files", name)
                    give_up.now()
                    vfs.rescue_unsent()
                    pyfuse3.terminate()
                elif draining:
                    log.info("%s: already pushing pending writes and unmounting", name)
                else:
                    draining = True
                    log.info("%s: pushing pending writes, then unmounting", name)
                    notify.stopping("pushing pending writes before unmounting")
                    runtime.write_pending(mountpoint, vfs.pending_paths())
                    nursery.start_soon(_drain_while_serving, vfs, give_up)


async def _drain_while_serving(vfs, give_up: GiveUp) -> None:
    """SIGTERM/SIGINT: push everything pending while the mount still answers, then end ``main``."""
    import pyfuse3

    with give_up.scope():
        await vfs.push_all()
    pyfuse3.terminate()


class GiveUp:
    """SIGUSR2 (``arkerfs umount --force``): cancel every push at unmount, now and later."""

    def __init__(self) -> None:
        self.given_up = False
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
