"""The ``arkerfs`` command: one subcommand per module, each with ``add_arguments`` and ``run``.

Exit statuses are listed in arkerfs/exitcodes.py. Shell completion (argcomplete): the parser is
handed to ``argcomplete.autocomplete`` when the shell asks (``$_ARGCOMPLETE`` is set); see
``arkerfs completion``.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from arkerfs import __version__, exitcodes

# subcommand -> (module[:object], one-line help); the module (or the object in it) has
# ``add_arguments`` and ``run``. Modules are imported lazily so `arkerfs serve`
# never loads pyfuse3 and `arkerfs mount` never loads the server unless it needs it.
SUBCOMMANDS = {
    "serve": ("arkerfs.server.command", "run the local Arker-compatible server"),
    "mount": ("arkerfs.mount.command", "mount a VM's /home/user"),
    "umount": ("arkerfs.mount.umount", "push pending writes and unmount"),
    "status": ("arkerfs.mount.statuscmd", "show what each live mount is doing (no API call)"),
    "sync": ("arkerfs.mount.synccmd", "wait until everything pending is in the VM"),
    "demo": ("arkerfs.demo", "try arkerfs against the embedded local server"),
    "vms": ("arkerfs.vmcommands:vms", "list your VMs"),
    "fork": ("arkerfs.vmcommands:fork", "copy a VM (or a template) into a new VM"),
    "rm": ("arkerfs.vmcommands:rm", "delete a VM"),
    "completion": ("arkerfs.completion", "print the shell completion script (bash or zsh)"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="arkerfs", description="Arker VM home directories as a local filesystem")
    parser.add_argument("--version", action="version", version=f"arkerfs {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (spec, help_text) in SUBCOMMANDS.items():
        module_name, _, attr = spec.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name != module_name:
                raise
            continue  # not built yet
        command = getattr(module, attr) if attr else module
        sp = sub.add_parser(name, help=help_text, description=help_text)
        command.add_arguments(sp)
        sp.set_defaults(_run=command.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    if "_ARGCOMPLETE" in os.environ:  # the shell's completion function is asking; exits when done
        import argcomplete

        argcomplete.autocomplete(parser)
    args = parser.parse_args(argv)
    try:
        return int(args._run(args) or 0)
    except KeyboardInterrupt:
        return exitcodes.INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
