"""How every command that talks to the Arker API gets its key and URLs ("connection options").

- ``--api-key-file F`` (which must be private: no group/other bits), else ``$ARKER_API_KEY``.
  The variable is removed from this process's environment once read, so no child inherits it.
  The key never goes into argv, logs or messages.
- ``--base-url`` / ``$ARKER_BASE_URL``; ``--list-base-url`` / ``$ARKER_LIST_BASE_URL``, which
  defaults to ``--base-url`` so that one server (e.g. ``arkerfs serve``) answers every route.
- ``--local``: start the embedded local server in this process (data in
  ``$XDG_DATA_HOME/arkerfs/server``, its own generated key) instead of using an account.

``arkerfs mount`` has the same options (arkerfs/mount/command.py); ``add_arguments`` and
``read_key_file`` here are meant for it too.
"""

from __future__ import annotations

import argparse
import contextlib
import os
from collections.abc import AsyncIterator

from arkerfs import exitcodes


class ConnectionOptionsError(Exception):
    """A key or URL problem found before any request; ``str()`` is the one-line reason."""

    def __init__(self, message: str, exit_code: int = exitcodes.AUTH) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def add_arguments(parser: argparse.ArgumentParser, *, local: bool = True) -> None:
    group = parser.add_argument_group("connection")
    group.add_argument("--api-key-file", metavar="FILE",
                       help="file holding the API key (mode 0600); default $ARKER_API_KEY")
    group.add_argument("--base-url", metavar="URL", help="API base URL (default: $ARKER_BASE_URL or the public host)")
    group.add_argument("--list-base-url", metavar="URL",
                       help="base URL for listing VMs and name lookup (default: $ARKER_LIST_BASE_URL, "
                            "else https://arker.ai for an Arker cloud --base-url, else --base-url)")
    if local:
        group.add_argument("--local", action="store_true",
                           help="use the embedded local server (no account needed)")


def read_key_file(path: str) -> str:
    """The key in ``path``; refuses a file that group or others can read, or an empty one."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise ConnectionOptionsError(f"cannot read API key file {path}: {exc.strerror}") from None
    with os.fdopen(fd, encoding="utf-8") as f:
        if os.fstat(f.fileno()).st_mode & 0o077:
            raise ConnectionOptionsError(f"API key file {path} is readable by group or others; run: chmod 600 {path}")
        key = f.read().strip()
    if not key:
        raise ConnectionOptionsError(f"API key file {path} is empty")
    return key


def api_key(args: argparse.Namespace) -> str:
    env_key = os.environ.pop("ARKER_API_KEY", None)  # read once: no child process inherits it
    key = read_key_file(args.api_key_file) if args.api_key_file else env_key
    if not key:
        raise ConnectionOptionsError("no API key: set ARKER_API_KEY or pass --api-key-file")
    return key


@contextlib.asynccontextmanager
async def open_arker(args: argparse.Namespace) -> AsyncIterator:
    """An ``Arker`` client for ``args``; with ``--local`` the embedded server runs meanwhile."""
    import trio

    from arkerfs.client import Arker

    if not getattr(args, "local", False):
        key = api_key(args)
        try:
            client = Arker(key, base_url=args.base_url, list_base_url=args.list_base_url)
        except ValueError as exc:  # a malformed URL
            raise ConnectionOptionsError(str(exc), exitcodes.USAGE) from None
        async with client:
            yield client
        return
    os.environ.pop("ARKER_API_KEY", None)  # unused here; never inherited by the server's runs
    async with trio.open_nursery() as nursery:
        url, key = await _start_local_server(nursery)
        async with Arker(key, base_url=url, list_base_url=url) as client:
            yield client
        nursery.cancel_scope.cancel()


async def _start_local_server(nursery) -> tuple[str, str]:
    from arkerfs.server.config import ServerConfig, StartupError, default_data_dir, generated_key
    from arkerfs.server.serve import serve

    data_dir = default_data_dir()
    try:
        key, key_file = generated_key(data_dir)
        config = ServerConfig(data_dir=data_dir, api_keys=(key,), port=0, hidden_files=(key_file,))
        url = await nursery.start(lambda task_status: serve(config, task_status=task_status))
    except StartupError as exc:
        raise ConnectionOptionsError(f"the embedded server did not start: {exc}", exitcodes.FAILED) from None
    return url, key
