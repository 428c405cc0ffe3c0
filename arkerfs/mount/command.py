"""``arkerfs mount VM MOUNTPOINT``: check, detach, and run the mount daemon.

Local checks (mountpoint, key file) run first and fail with one line on stderr. Without
``--foreground`` the process forks: the child becomes the daemon and reports over a pipe, and the
parent exits 0 only once the mount is live, or prints the daemon's one-line reason and exits 6
(``exitcodes.MOUNT_FAILED``; a foreground daemon that ends with rescue files exits 7).
The API key comes from ``--api-key-file`` (which must not be readable by group or others) or
``ARKER_API_KEY``; it never appears in argv, the process title, the log, or the environment of
any process (a command started with ``ARKER_API_KEY`` re-execs itself without it: see keypass.py).
Before mounting, what a crashed daemon left in the spool is rescued and reported (leftovers.py).

Heavy imports (trio, pyfuse3, the client) happen only when the command runs.
"""

from __future__ import annotations

import argparse
import logging
import os
import stat
import sys

from arkerfs import exitcodes
from arkerfs.connopts import ConnectionOptionsError, read_key_file

MAX_REASON_CHARS = 500  # a failure reason is one line of at most this many characters


class CommandError(Exception):
    """A user-facing failure: one line, no traceback."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("vm", metavar="VM", help="VM id or name (with --local: the name of a local VM)")
    parser.add_argument("mountpoint", metavar="MOUNTPOINT", help="an existing empty directory")
    parser.add_argument("--foreground", "-f", action="store_true", help="stay in the foreground, log to stderr")
    parser.add_argument("--local", action="store_true",
                        help="run the embedded local server and create VM (a fork of arkuntu) if missing")
    parser.add_argument("--base-url", help="API base URL (default: $ARKER_BASE_URL or the public host)")
    parser.add_argument("--list-base-url", help="base URL for listing VMs and name lookup (default: $ARKER_LIST_BASE_URL, else https://arker.ai for an Arker cloud --base-url, else --base-url)")
    parser.add_argument("--api-key-file", help="file holding the API key (mode 0600); default $ARKER_API_KEY")
    parser.add_argument("--cache-ttl", type=float, default=3.0, metavar="SECONDS",
                        help="how long what was read from the VM is trusted without a live change "
                             "watcher (default 3)")
    parser.add_argument("--watch-ttl", type=float, default=60.0, metavar="SECONDS",
                        help="how long it is trusted while the change watcher runs (default 60)")
    parser.add_argument("--no-watch", dest="watch", action="store_false",
                        help="no change watcher: changes made in the VM show up within --cache-ttl")
    parser.add_argument("--read-only", action="store_true", help="refuse every change (EROFS)")
    writes = parser.add_mutually_exclusive_group()
    writes.set_defaults(write_back=True)
    writes.add_argument("--write-back", dest="write_back", action="store_true",
                        help="close() returns once the data is in a local journal; changes are pushed to "
                             "the VM in batches; wait with fsync, arkerfs sync or arkerfs umount "
                             "(default; see README, 'Write modes')")
    writes.add_argument("--write-through", dest="write_back", action="store_false",
                        help="every change is applied in the VM before its call returns (close() = uploaded)")
    parser.add_argument("--journal-max-bytes", type=_byte_count, default=2 * 1024**3, metavar="BYTES",
                        help="write-back: contents held locally before writers wait for pushes "
                             "(default 2G; suffixes K, M, G; never more than the free space)")
    parser.add_argument("--outage-timeout", type=float, default=60.0, metavar="SECONDS",
                        help="while the API cannot be reached, operations wait and retry this long "
                             "before failing with EIO (default 60; 0 fails at once)")
    parser.add_argument("--run-timeout", type=float, default=60.0, help=argparse.SUPPRESS)
    parser.add_argument("--connect-timeout", type=float, default=30.0, metavar="SECONDS",
                        help="give up mounting if the API has not answered the first calls by then (default 30)")
    parser.add_argument("--show-remote-owner", action="store_true",
                        help="show the VM's uid/gid and pass chown through (default: files look owned by you)")
    parser.add_argument("--spool-dir", help="private directory for cached contents, write buffers and rescue files")
    parser.add_argument("--transform-symlinks", action=argparse.BooleanOptionalAction, default=True,
                        help="show a link to /home/user/... as a relative link into the mount (default: on; "
                             "also -o transform_symlinks / -o no_transform_symlinks)")
    parser.add_argument("-o", dest="fuse_options", action="append", default=[], metavar="OPTIONS",
                        help="extra FUSE mount options, comma separated (e.g. allow_other)")
    parser.add_argument("--debug", action="store_true",
                        help="log every API call and FUSE operation with its duration (--log-level debug)")
    parser.add_argument("--debug-fuse", action="store_true", help="also pass libfuse's debug option")
    parser.add_argument("--log-file", help="log here (default: stderr in the foreground, else "
                                           "$XDG_STATE_HOME/arkerfs/logs/<vm>-<mountpoint name>.log)")
    parser.add_argument("--log-level", choices=("debug", "info", "warning", "error"), default="info",
                        help="least severe level logged (default info; --debug is --log-level debug)")


def run(args: argparse.Namespace) -> int:
    from arkerfs.mount import keypass, leftovers

    if keypass.started_with_key():  # /proc/<pid>/environ would show it for our whole life
        keypass.reexec_without_key()
    try:
        config = build_config(args)
    except CommandError as exc:
        print(f"arkerfs mount: {exc}", file=sys.stderr)
        return exitcodes.MOUNT_FAILED
    level = "debug" if args.debug else args.log_level
    note = leftovers.collect(config.spool_dir)  # what a crashed daemon left in this spool
    if note:
        print(f"arkerfs mount: {note}", file=sys.stderr)
    if args.foreground:
        return _run_daemon(config, level, ready_fd=None)
    return _detach(config, level)


def build_config(args: argparse.Namespace):
    from arkerfs.mount import runtime
    from arkerfs.mount.daemon import MountConfig
    from arkerfs.mount.logs import default_log_file

    if args.cache_ttl <= 0:
        raise CommandError("--cache-ttl must be positive")
    if args.watch_ttl <= 0:
        raise CommandError("--watch-ttl must be positive")
    if args.outage_timeout < 0:
        raise CommandError("--outage-timeout must not be negative")
    if args.run_timeout <= 0:
        raise CommandError("--run-timeout must be positive")
    if args.connect_timeout <= 0:
        raise CommandError("--connect-timeout must be positive")
    from arkerfs.mount import keypass

    mountpoint = runtime.resolve_mountpoint(args.mountpoint)
    check_mountpoint(mountpoint)
    api_key = None
    env_key = keypass.take_key()  # read once: no child process inherits it
    if not args.local:
        try:
            api_key = read_key_file(args.api_key_file) if args.api_key_file else env_key
        except ConnectionOptionsError as exc:
            raise CommandError(str(exc)) from None
        if not api_key:
            raise CommandError("no API key: set ARKER_API_KEY or pass --api-key-file")
    options = tuple(o for group in args.fuse_options for o in group.split(",") if o)
    transform_symlinks = args.transform_symlinks  # -o [no_]transform_symlinks is ours, not FUSE's
    for o in (o for o in options if o in ("transform_symlinks", "no_transform_symlinks")):
        transform_symlinks = o == "transform_symlinks"
    options = tuple(o for o in options if o not in ("transform_symlinks", "no_transform_symlinks"))
    return MountConfig(
        vm=args.vm,
        mountpoint=mountpoint,
        api_key=api_key,
        base_url=args.base_url,
        list_base_url=args.list_base_url,  # None: the SDK picks (arker.ai for a cloud region, else the base URL)
        cache_ttl=args.cache_ttl,
        watch=args.watch,
        watch_ttl=args.watch_ttl,
        read_only=args.read_only,
        write_back=args.write_back and not args.read_only,
        journal_max_bytes=args.journal_max_bytes,
        outage_timeout=args.outage_timeout,
        run_timeout=args.run_timeout,
        connect_timeout=args.connect_timeout,
        show_remote_owner=args.show_remote_owner,
        fuse_options=options,
        spool_dir=os.path.abspath(args.spool_dir) if args.spool_dir else str(runtime.default_spool_dir(mountpoint)),
        log_file=os.path.abspath(args.log_file) if args.log_file else
        ("" if args.foreground else str(default_log_file(args.vm, mountpoint))),
        debug_fuse=args.debug_fuse,
        local=args.local,
        transform_symlinks=transform_symlinks,
    )


def _byte_count(text: str) -> int:
    """``--journal-max-bytes``: a number of bytes, with an optional K, M or G (powers of 1024)."""
    units = {"K": 1024, "M": 1024**2, "G": 1024**3}
    number, unit = (text[:-1], units[text[-1].upper()]) if text and text[-1].upper() in units else (text, 1)
    try:
        value = int(float(number) * unit)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a byte count: {text!r} (e.g. 500M, 2G)") from None
    if value <= 0:
        raise argparse.ArgumentTypeError("must be more than 0")
    return value


def check_mountpoint(mountpoint: str) -> None:
    from arkerfs.mount import runtime

    entry = runtime.mount_entry(mountpoint)
    if entry is not None and entry[1] == "fuse.arkerfs" and _remove_stale(mountpoint):
        entry = None
    if entry is not None:
        if entry[1] == "fuse.arkerfs":
            raise CommandError(f"{mountpoint} is already mounted ({entry[0]})")
        raise CommandError(f"{mountpoint} is already a mount point ({entry[1]})")
    try:
        st = os.stat(mountpoint)
    except FileNotFoundError:
        raise CommandError(f"mount point {mountpoint} does not exist") from None
    except OSError as exc:
        raise CommandError(f"mount point {mountpoint}: {exc.strerror}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise CommandError(f"mount point {mountpoint} is not a directory")
    if os.listdir(mountpoint):
        raise CommandError(f"mount point {mountpoint} is not empty")


def _remove_stale(mountpoint: str) -> bool:
    """Lazily unmount an arkerfs mount whose daemon is gone (ENOTCONN); True if it was removed.

    A mount whose daemon is alive is never touched (nor stat'ed: that would wait for it).
    """
    import errno

    from arkerfs.mount import runtime

    state = runtime.read_state(mountpoint)
    if state is not None and runtime.daemon_alive(state):
        return False
    try:
        os.stat(mountpoint)
    except OSError as exc:
        if exc.errno != errno.ENOTCONN:
            return False
    else:
        return False
    done = runtime.lazy_unmount(mountpoint)
    if done.returncode != 0:
        raise CommandError(f"{mountpoint} is a stale mount (its daemon died) and fusermount3 -u -z failed: "
                           f"{done.stderr.strip()}")
    runtime.remove_state(mountpoint)
    # write-through: what close() returned for is in the VM; write-back: in the VM's journal,
    # which the next mount of that VM replays. Only writes never closed are gone.
    print(f"arkerfs mount: removed a stale mount at {mountpoint} (its daemon had died; "
          "writes no close() had returned for are lost)", file=sys.stderr)
    return True


def _detach(config, log_level: str) -> int:
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the daemon
        os.close(read_end)
        os.setsid()
        devnull = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(devnull, fd)
        os.close(devnull)
        code = exitcodes.MOUNT_FAILED
        try:
            code = _run_daemon(config, log_level, ready_fd=write_end)
        finally:
            os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        message = pipe.read().decode(errors="replace").strip()
    if message == "ok":
        print(f"arkerfs: mounted {config.vm} at {config.mountpoint} (log: {config.log_file})")
        return exitcodes.OK
    os.waitpid(pid, 0)
    reason = message.removeprefix("error: ") or f"the daemon exited before the mount was ready (log: {config.log_file})"
    print(f"arkerfs mount: {reason}", file=sys.stderr)
    return exitcodes.MOUNT_FAILED


def _run_daemon(config, log_level: str, *, ready_fd: int | None) -> int:
    import trio

    from arkerfs.mount.daemon import MountError, run_mount
    from arkerfs.mount.logs import setup_logging

    setup_logging(config.log_file or None, level=log_level)
    reported = False

    def ready(reason: str | None) -> None:
        nonlocal reported
        reported = True
        if reason is not None:  # one line, whatever a misbehaving server put in its message
            reason = " ".join(reason.split())[:MAX_REASON_CHARS]
        if reason is not None and ready_fd is None:
            print(f"arkerfs mount: {reason}", file=sys.stderr)
        if ready_fd is not None:
            os.write(ready_fd, b"ok\n" if reason is None else f"error: {reason}\n".encode())
            os.close(ready_fd)

    try:
        result = trio.run(run_mount, config, ready)
    except MountError:
        return exitcodes.MOUNT_FAILED
    except Exception as exc:
        logging.getLogger("arkerfs.mount").exception("the mount daemon failed")
        if not reported:
            ready(f"the mount daemon failed: {exc!r}")
        return exitcodes.MOUNT_FAILED
    if result.rescued:
        return exitcodes.PENDING
    return exitcodes.OK if result.clean else exitcodes.FAILED
