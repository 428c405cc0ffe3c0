"""``arkerfs serve``: parse argv into a ServerConfig and run the server in the foreground.

Stdout contract (tests and the demo read it): when the socket is bound the command prints
``arkerfs serve: listening on http://HOST:PORT`` and flushes. When it generated the API key
it first prints ``arkerfs serve: API key stored in <path>`` (the path, never the key).
Errors are one line on stderr; a refused --host exits 2, other start-up failures exit 1.

Only argparse is imported at module level: ``arkerfs --help`` must stay fast.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

ENV_KEY = "ARKER_API_KEY"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", type=Path, help="where VMs, uploads and secrets live "
                        "(default: $XDG_DATA_HOME/arkerfs/server)")
    parser.add_argument("--host", default="127.0.0.1", help="loopback address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8600, help="TCP port, 0 for any free one (default 8600)")
    parser.add_argument("--api-key", help="accepted bearer key (prefer --api-key-file or $ARKER_API_KEY)")
    parser.add_argument("--api-key-file", type=Path, help="file holding the accepted bearer key")
    parser.add_argument("--latency-ms", type=float, default=0.0, help="initial injected latency per API/blob request")
    parser.add_argument("--inline-read-limit", type=int, default=None, metavar="BYTES",
                        help="sync reads up to this size are inline, larger ones presigned (default 4 MiB)")
    parser.add_argument("--presign-ttl", type=float, default=None, help=argparse.SUPPRESS)


def _config(args: argparse.Namespace):
    from arkerfs.server import config as cfg

    data_dir = args.data_dir or cfg.default_data_dir()
    cfg.check_loopback(args.host)
    if not 0 <= args.port <= 65535:
        raise cfg.StartupError("--port must be from 0 to 65535", 2)
    if args.latency_ms < 0 or (args.inline_read_limit is not None and args.inline_read_limit < 0):
        raise cfg.StartupError("--latency-ms and --inline-read-limit must not be negative", 2)
    if args.presign_ttl is not None and args.presign_ttl <= 0:
        raise cfg.StartupError("--presign-ttl must be positive", 2)
    hidden: tuple[Path, ...] = ()
    if args.api_key:
        key = args.api_key
    elif args.api_key_file:
        key, hidden = cfg.read_key_file(args.api_key_file), (args.api_key_file,)
    elif os.environ.get(ENV_KEY):
        key = os.environ[ENV_KEY]
    else:
        key, path = cfg.generated_key(Path(data_dir).expanduser())
        print(f"arkerfs serve: API key stored in {path}", flush=True)
    extra = {}
    if args.inline_read_limit is not None:
        extra["inline_read_limit"] = args.inline_read_limit
    if args.presign_ttl is not None:
        extra["presign_ttl"] = args.presign_ttl
    return cfg.ServerConfig(
        data_dir=Path(data_dir), api_keys=(key,), host=args.host, port=args.port,
        latency_ms=args.latency_ms, hidden_files=hidden, **extra,
    )


async def _main(config) -> None:
    import signal

    import trio

    from arkerfs.server.serve import serve

    stop = trio.Event()

    async def watch_signals(receiver) -> None:
        async for signum in receiver:
            print(f"arkerfs serve: {signal.Signals(signum).name}, shutting down", file=sys.stderr, flush=True)
            stop.set()
            return

    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as receiver:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch_signals, receiver)
            url = await nursery.start(lambda task_status: serve(config, shutdown_trigger=stop.wait, task_status=task_status))
            print(f"arkerfs serve: listening on {url}", flush=True)


def run(args: argparse.Namespace) -> int:
    import logging

    import trio

    from arkerfs.server.config import StartupError

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        config = _config(args)
        trio.run(_main, config)
    except (StartupError, OSError, BaseExceptionGroup) as exc:
        failure = _single(exc)
        if not isinstance(failure, (StartupError, OSError)):
            raise
        print(f"arkerfs serve: error: {failure}", file=sys.stderr, flush=True)
        return getattr(failure, "exit_code", 1)
    return 0


def _single(exc: BaseException) -> BaseException:
    """The one exception inside nested single-member groups (trio wraps start-up failures)."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc
