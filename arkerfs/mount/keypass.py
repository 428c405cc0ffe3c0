"""Keep the API key out of every process's environment, including the mount's own.

``/proc/<pid>/environ`` shows the environment block a process was *started* with: removing
``ARKER_API_KEY`` from ``os.environ`` does not change it, and a forked daemon inherits that
block. So a mount started with the key in its environment execs itself once more with the
variable removed, handing the key over through an inherited pipe whose descriptor number (not a
secret) is in ``ARKERFS_API_KEY_FD``. Same pid, same argv; only the environment differs.
"""

from __future__ import annotations

import os
import sys

KEY_VAR = "ARKER_API_KEY"
FD_VAR = "ARKERFS_API_KEY_FD"
MAX_KEY_BYTES = 4096  # far below a pipe's buffer: the write can never block


def started_with_key() -> bool:
    """True if this process's initial environment block holds the key."""
    try:
        with open("/proc/self/environ", "rb") as f:
            block = f.read()
    except OSError:
        return False
    return any(item.startswith(KEY_VAR.encode() + b"=") for item in block.split(b"\0"))


def reexec_without_key() -> None:
    """exec this same command again, with the key in a pipe instead of the environment.
    Returns only if there is no key to hand over (nothing to do)."""
    key = os.environ.get(KEY_VAR)
    env = {k: v for k, v in os.environ.items() if k not in (KEY_VAR, FD_VAR)}
    if key is not None:
        data = key.encode()[:MAX_KEY_BYTES]
        read_end, write_end = os.pipe()
        os.write(write_end, data)
        os.close(write_end)
        os.set_inheritable(read_end, True)
        env[FD_VAR] = str(read_end)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, sys.orig_argv, env)


def take_key() -> str | None:
    """The key handed over by ``reexec_without_key``, else ``$ARKER_API_KEY``; either way it is
    removed from ``os.environ`` so no child process inherits it."""
    fd_text = os.environ.pop(FD_VAR, None)
    env_key = os.environ.pop(KEY_VAR, None)
    if fd_text is None:
        return env_key
    try:
        fd = int(fd_text)
        chunks = []
        while chunk := os.read(fd, MAX_KEY_BYTES):
            chunks.append(chunk)
        os.close(fd)
    except (ValueError, OSError):
        return env_key
    return b"".join(chunks).decode(errors="replace") or env_key
