"""Start the sandboxes of runs from one thread that lives as long as the server.

bwrap's ``--die-with-parent`` (``PR_SET_PDEATHSIG``) fires when the *thread* that forked it
exits, not the process. ``trio.lowlevel.open_process`` forks in a thread of trio's cache, which
exits after 10 s idle: every run longer than that was SIGKILLed (exit 137) — a watch run, a
long build. Forking from one thread that never exits keeps the guarantee the flag is there for
(a sandbox never outlives the server) without cutting runs short.
"""

from __future__ import annotations

import os
import subprocess
from concurrent.futures import ThreadPoolExecutor

import trio

_SPAWNER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="arkerfs-sandbox-spawner")


class Child:
    """A started process: ``pid``, ``stdout``/``stderr`` as trio streams, ``wait()``."""

    def __init__(self, popen: subprocess.Popen) -> None:
        self._popen = popen
        self.pid = popen.pid
        self.stdout = trio.lowlevel.FdStream(os.dup(popen.stdout.fileno()))
        self.stderr = trio.lowlevel.FdStream(os.dup(popen.stderr.fileno()))
        popen.stdout.close()
        popen.stderr.close()
        self._exited = os.pidfd_open(popen.pid)  # readable once the process has exited

    @property
    def returncode(self) -> int | None:
        return self._popen.returncode

    async def wait(self) -> int:
        if self._popen.returncode is None:
            await trio.lowlevel.wait_readable(self._exited)
            self._popen.wait()
        return self._popen.returncode

    async def aclose(self) -> None:
        with trio.CancelScope(shield=True):
            await self.stdout.aclose()
            await self.stderr.aclose()
        os.close(self._exited)


async def spawn(argv: list[str], **popen_args) -> Child:
    """``subprocess.Popen(argv, stdout=PIPE, stderr=PIPE, **popen_args)`` forked by the spawner thread."""
    future = _SPAWNER.submit(subprocess.Popen, argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, **popen_args)
    return Child(await trio.to_thread.run_sync(future.result))
