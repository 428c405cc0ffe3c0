"""Start a local server on trio: ``serve(config)`` for both the command and embedded use.

The mount daemon's embedded mode runs ``await nursery.start(serve, config)`` and gets the
base URL back once the socket is bound (port 0 works); cancelling the task stops the server.
The command passes a ``shutdown_trigger`` so SIGTERM/SIGINT drain requests gracefully.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve as hypercorn_serve

from arkerfs.server.app import create_app
from arkerfs.server.config import ServerConfig, StartupError
from arkerfs.server.faults import Faults
from arkerfs.server.runner import Runner
from arkerfs.server.sandbox import Sandbox
from arkerfs.server.state import ServerState
from arkerfs.server.store import VmStore
from arkerfs.server.tokens import Signer, load_secret
from arkerfs.server.uploads import Uploads

log = logging.getLogger("arkerfs.server")
SWEEP_INTERVAL = 30.0


def _tool(name: str, why: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise StartupError(f"{name} not found on PATH; {why}")
    return path


async def _check_sandbox(sandbox: Sandbox) -> None:
    """Refuse to start where bubblewrap cannot build the sandbox runs need (e.g. no namespaces)."""
    error = await sandbox.choose_namespaces()
    if error is not None:
        raise StartupError(f"bubblewrap cannot create a sandbox on this host: {error}")
    if "--unshare-user" not in sandbox.namespace_flags:
        log.warning("bubblewrap cannot create a user namespace here: runs keep the server's uid, without capabilities")


def _lock_data_dir(data_dir: Path) -> int:
    """An exclusive lock on the data dir: two servers would corrupt each other's staging."""
    fd = os.open(data_dir / "lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise StartupError(f"data dir {data_dir} is in use by another arkerfs serve") from None
    return fd


def _hypercorn_config(config: ServerConfig) -> HypercornConfig:
    hc = HypercornConfig()
    host = f"[{config.host}]" if ":" in config.host else config.host
    hc.bind = [f"{host}:{config.port}"]
    hc.accesslog = None  # request lines carry nothing useful, and headers must never be logged
    hc.errorlog = logging.getLogger("arkerfs.server.http")  # whatever logging the process set up
    hc.graceful_timeout = 5.0
    return hc


def build_state(config: ServerConfig, data_dir: Path, sandbox: Sandbox, cp: str) -> ServerState:
    """Open (or create) everything under ``data_dir``; blocking, done once at start."""
    staging = data_dir / "staging"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    store = VmStore(data_dir, cp)
    store.load()
    runner = Runner(sandbox, work_dir=staging, ceiling=config.run_timeout_ceiling)
    return ServerState(
        config=config, store=store, runner=runner,
        uploads=Uploads(staging, ttl=config.presign_ttl),
        signer=Signer(load_secret(data_dir)),
        faults=Faults(latency_ms=config.latency_ms),
    )


async def _sweep(uploads: Uploads) -> None:
    """Drop long-expired uploads now and then, so abandoned staging files do not pile up."""
    while True:
        await trio.sleep(SWEEP_INTERVAL)
        for path in uploads.sweep():
            await trio.to_thread.run_sync(partial(path.unlink, missing_ok=True))


async def serve(
    config: ServerConfig,
    *,
    shutdown_trigger: Callable[[], Awaitable[None]] | None = None,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve until ``shutdown_trigger`` returns or the task is cancelled; reports the base URL."""
    bwrap = _tool("bwrap", "arkerfs serve runs VM commands under bubblewrap (apt-get install bubblewrap)")
    cp = _tool("cp", "forks copy VM homes with cp")
    data_dir = config.data_dir.expanduser().resolve()
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    lock = _lock_data_dir(data_dir)
    try:
        # Runs never see the data dir or key files anyway (allow-list); hiding them too guards
        # against one that sits inside an allowed system dir.
        sandbox = Sandbox(bwrap, etc_dir=data_dir / "sandbox-etc", hidden=[data_dir, *config.hidden_files])
        await _check_sandbox(sandbox)
        state = await trio.to_thread.run_sync(build_state, config, data_dir, sandbox, cp)
        app = create_app(state)
        async with trio.open_nursery() as nursery:

            async def http(task_status: trio.TaskStatus[list[str]]) -> None:
                await hypercorn_serve(app, _hypercorn_config(config), shutdown_trigger=shutdown_trigger, task_status=task_status)
                nursery.cancel_scope.cancel()

            binds = await nursery.start(http)
            nursery.start_soon(_sweep, state.uploads)
            log.info("serving data dir %s on %s", data_dir, binds[0])
            task_status.started(binds[0])
    finally:
        os.close(lock)
