"""``mount.fuse.arkerfs``: the helper mount(8) runs for ``mount -t fuse.arkerfs`` and fstab lines.

    mount -t fuse.arkerfs my-vm /mnt/vm -o ro,cache_ttl=10,api_key_file=/etc/arkerfs/key
    # /etc/fstab
    my-vm  /mnt/vm  fuse.arkerfs  noauto,_netdev,api_key_file=/etc/arkerfs/key  0  0

mount(8) calls ``/sbin/mount.fuse.arkerfs VM MOUNTPOINT [-s] [-f] [-n] [-v] [-o OPTIONS]``
(``make setup`` links it there). Each ``-o`` option maps onto an ``arkerfs mount`` option (table
below); options for mount(8) or systemd alone are accepted and dropped; the kernel's and FUSE's
own options are passed through ``-o``. Anything else is refused unless ``-s`` (sloppy) asks to
ignore it. The mount is detached: the helper returns once it is live, like sshfs.

Exit status, in mount(8)'s terms since mount(8) passes it through (mount(8), "EXIT STATUS"; see
arkerfs/exitcodes.py): 0 mounted (or ``-f`` checked), 1 incorrect invocation (an unknown or
valueless option, bad arguments), 32 the mount could not be made, 8 interrupted.
"""

from __future__ import annotations

import argparse
import shlex
import sys

from arkerfs import exitcodes

# option -> the arkerfs mount option taking its value
VALUE_OPTIONS = {
    "api_key_file": "--api-key-file",
    "base_url": "--base-url",
    "list_base_url": "--list-base-url",
    "cache_ttl": "--cache-ttl",
    "watch_ttl": "--watch-ttl",
    "outage_timeout": "--outage-timeout",
    "connect_timeout": "--connect-timeout",
    "spool_dir": "--spool-dir",
    "log_file": "--log-file",
    "log_level": "--log-level",
    "journal_max_bytes": "--journal-max-bytes",
}
# option -> arkerfs mount flag
FLAG_OPTIONS = {"ro": "--read-only", "local": "--local", "debug": "--debug", "show_remote_owner": "--show-remote-owner",
                "transform_symlinks": "--transform-symlinks", "no_transform_symlinks": "--no-transform-symlinks",
                "write_back": "--write-back", "write_through": "--write-through", "no_watch": "--no-watch"}
# for mount(8), fstab or systemd only: nothing to do here
DROPPED = {"rw", "defaults", "auto", "noauto", "_netdev", "nofail", "user", "users", "nouser", "owner", "group"}
DROPPED_PREFIXES = ("x-", "comment=")
# handled by the kernel or libfuse: passed through -o
FUSE_OPTIONS = {"noexec", "exec", "nosuid", "suid", "nodev", "dev", "allow_other", "allow_root",
                "default_permissions", "atime", "noatime", "relatime", "strictatime", "nodiratime",
                "sync", "async", "dirsync"}


class UnknownOption(Exception):
    pass


def translate(options: list[str], *, sloppy: bool = False) -> tuple[list[str], list[str]]:
    """``arkerfs mount`` arguments for mount(8)-style options; returns (arguments, ignored)."""
    args: list[str] = []
    fuse: list[str] = []
    ignored: list[str] = []
    for option in options:
        name, has_value, value = option.partition("=")
        if name in VALUE_OPTIONS and has_value and value:
            args += [VALUE_OPTIONS[name], value]
        elif option in FLAG_OPTIONS:
            args.append(FLAG_OPTIONS[option])
        elif option in FUSE_OPTIONS:
            fuse.append(option)
        elif option in DROPPED or option.startswith(DROPPED_PREFIXES):
            continue
        elif sloppy:
            ignored.append(option)
        elif name in VALUE_OPTIONS:
            raise UnknownOption(f"mount option {name!r} needs a value ({name}=...)")
        else:
            raise UnknownOption(f"unknown mount option {option!r}")
    if fuse:
        args += ["-o", ",".join(fuse)]
    return args, ignored


def split_options(groups: list[str]) -> list[str]:
    return [o for group in groups for o in group.split(",") if o]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mount.fuse.arkerfs",
        description="mount(8) helper: mount -t fuse.arkerfs VM MOUNTPOINT -o OPTIONS",
        epilog="options: " + ", ".join(f"{k}=" for k in VALUE_OPTIONS) + ", " + ", ".join(FLAG_OPTIONS)
        + " (= --read-only, --local, --debug, --show-remote-owner); passed to FUSE: " + ", ".join(sorted(FUSE_OPTIONS))
        + "; ignored: " + ", ".join(sorted(DROPPED)) + ", x-*, comment=*. The key: api_key_file= (mode 0600) "
        "or $ARKER_API_KEY.")
    parser.add_argument("vm", metavar="VM")
    parser.add_argument("mountpoint", metavar="MOUNTPOINT")
    parser.add_argument("-o", dest="options", action="append", default=[], metavar="OPTIONS")
    parser.add_argument("-s", dest="sloppy", action="store_true", help="ignore unknown options")
    parser.add_argument("-f", dest="fake", action="store_true", help="check the options, mount nothing")
    parser.add_argument("-n", dest="no_mtab", action="store_true", help="(ignored: there is no mtab to write)")
    parser.add_argument("-v", dest="verbose", action="store_true", help="print the arkerfs mount command")
    parser.add_argument("-t", dest="type", help="(ignored: always fuse.arkerfs)")
    return parser


def main(argv: list[str] | None = None) -> int:
    return exitcodes.for_mount8(_mount(argv))


def _mount(argv: list[str] | None) -> int:
    """Mount; returns an ``arkerfs`` exit status (``main`` turns it into mount(8)'s)."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # argparse: --help (0) or a usage error (2)
        return exc.code if isinstance(exc.code, int) else exitcodes.USAGE
    try:
        mount_args, ignored = translate(split_options(args.options), sloppy=args.sloppy)
    except UnknownOption as exc:
        print(f"mount.fuse.arkerfs: {exc} (see mount.fuse.arkerfs --help)", file=sys.stderr)
        return exitcodes.USAGE
    for option in ignored:
        print(f"mount.fuse.arkerfs: ignoring unknown option {option!r} (-s)", file=sys.stderr)
    argv = ["mount", *mount_args, "--", args.vm, args.mountpoint]
    if args.verbose:
        print("mount.fuse.arkerfs: arkerfs " + shlex.join(argv), file=sys.stderr)
    if args.fake:
        return exitcodes.OK
    from arkerfs.cli import main as arkerfs

    try:
        return arkerfs(argv)
    except SystemExit as exc:  # argparse refused a translated value (e.g. cache_ttl=abc)
        return exc.code if isinstance(exc.code, int) else exitcodes.USAGE


if __name__ == "__main__":
    sys.exit(main())
