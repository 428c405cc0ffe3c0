"""The exit statuses scripts rely on: the README's table and arkerfs/exitcodes.py agree."""

from __future__ import annotations

import re
from pathlib import Path

from arkerfs import exitcodes
from arkerfs.mount import fstab

README = Path(__file__).resolve().parent.parent / "README.md"


def _readme_statuses() -> set[int]:
    section = README.read_text().split("### Exit statuses", 1)[1].split("\n### ", 1)[0]
    return {int(n) for n in re.findall(r"^\| (\d+) \|", section, re.MULTILINE)}


def test_readme_lists_every_exit_status_and_no_other():
    defined = {value for name, value in vars(exitcodes).items()
               if name.isupper() and isinstance(value, int) and not name.startswith("MOUNT8_")}
    assert _readme_statuses() == defined
    assert len(defined) == len([n for n in vars(exitcodes) if n.isupper() and not n.startswith("MOUNT8_")
                                and isinstance(vars(exitcodes)[n], int)])  # one meaning per number


def test_the_mount8_helper_speaks_mount8s_statuses(tmp_path):
    assert fstab.main(["vm", str(tmp_path), "-o", "bogus"]) == 1  # mount(8): incorrect invocation
    assert fstab.main(["vm"]) == 1  # argparse's usage error, too
    assert fstab.main(["vm", str(tmp_path), "-f", "-o", "ro"]) == 0
    assert exitcodes.for_mount8(exitcodes.MOUNT_FAILED) == 32  # mount(8): mount failure
    assert exitcodes.for_mount8(exitcodes.INTERRUPTED) == 8
