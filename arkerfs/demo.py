"""``arkerfs demo``: mount a local VM named ``demo`` at ./demo-mnt and say what to try.

Runs ``arkerfs mount --local demo <mnt>`` (detached): the embedded server keeps its data under
``$XDG_DATA_HOME/arkerfs/server``. The mount point is ``$ARKERFS_DEMO_MNT`` if set.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import sys

VM_NAME = "demo"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--mountpoint", default=None,
                        help="where to mount (default: $ARKERFS_DEMO_MNT or ./demo-mnt)")


def run(args: argparse.Namespace) -> int:
    from arkerfs.mount import command, runtime

    mnt = os.path.realpath(args.mountpoint or os.environ.get("ARKERFS_DEMO_MNT") or "demo-mnt")
    entry = runtime.mount_entry(mnt)
    if entry is not None and entry[1] == "fuse.arkerfs":
        print(f"arkerfs demo: already mounted at {mnt}")
        print(hints(mnt))
        return 0
    os.makedirs(mnt, exist_ok=True)
    parser = argparse.ArgumentParser()
    command.add_arguments(parser)
    code = command.run(parser.parse_args(["--local", VM_NAME, mnt]))
    if code == 0:
        print(hints(mnt))
    return code


def hints(mnt: str) -> str:
    q = shlex.quote(mnt)
    return f"""
The demo VM's /home/user is mounted at {mnt}. Try:

  ls -l {q}
  echo hello > {q}/hello.txt && cat {q}/hello.txt
  vim {q}/notes.txt
  rsync -a ./some-dir/ {q}/some-dir/
  df -h {q}

close() returns once a change is saved on this machine (write-back); it reaches the VM within
about a second. To wait until everything is there: {_arkerfs_command()} sync {q}

When you are done (waits for the same push):

  {_arkerfs_command()} umount {q}
"""


def _arkerfs_command() -> str:
    """How to call arkerfs from here: the venv's script when it is not on PATH (make demo)."""
    script = os.path.join(os.path.dirname(sys.executable), "arkerfs")
    if not os.path.exists(script) or shutil.which("arkerfs") == script:
        return "arkerfs"
    return shlex.quote(os.path.relpath(script) if script.startswith(os.getcwd() + os.sep) else script)
