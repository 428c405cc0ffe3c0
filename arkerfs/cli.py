"""The ``arkerfs`` command: one subcommand per module, each with ``add_arguments`` and ``run``."""

from __future__ import annotations

import argparse
import importlib
import sys

# subcommand -> (module, one-line help). Modules are imported lazily so `arkerfs serve`
# never loads pyfuse3 and `arkerfs mount` never loads the server unless it needs it.
SUBCOMMANDS = {
    "serve": ("arkerfs.server.command", "run the local Arker-compatible server"),
    "mount": ("arkerfs.mount.command", "mount a VM's /home/user"),
    "umount": ("arkerfs.mount.umount", "push pending writes and unmount"),
    "status": ("arkerfs.mount.statuscmd", "show what each live mount is doing (no API call)"),
    "demo": ("arkerfs.demo", "try arkerfs against the embedded local server"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="arkerfs", description="Arker VM home directories as a local filesystem")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name != module_name:
                raise
            continue  # not built yet
        sp = sub.add_parser(name, help=help_text, description=help_text)
        module.add_arguments(sp)
        sp.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args._run(args) or 0)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
