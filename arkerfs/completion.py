"""``arkerfs completion bash|zsh``: print the shell completion script (argcomplete's).

``eval "$(arkerfs completion bash)"`` in ~/.bashrc (or ``zsh`` in ~/.zshrc) completes commands,
options and choices; it is the same script as ``register-python-argcomplete arkerfs``.
"""

from __future__ import annotations

import argparse
import sys

SHELLS = ("bash", "zsh")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("shell", choices=SHELLS, help="the shell to print the script for")


def run(args: argparse.Namespace) -> int:
    import argcomplete

    sys.stdout.write(argcomplete.shellcode(["arkerfs"], shell=args.shell))
    return 0
