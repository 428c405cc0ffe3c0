"""Model-based test of a real mount: random operation sequences against the mount AND a plain
local directory (the reference), compared after every step; the VM's own truth is compared
through the API at the end of every example and after every remount.

One VM and one mount serve the whole run (mounting per example would be far too slow); each
hypothesis example works in a fresh subdirectory ``/home/user/<run>-exN`` of the mount and a
matching fresh local directory. ``remount`` really unmounts and mounts the same VM again, so
everything the mount acknowledged must have reached the VM.

Operations (paths are bytes from a hostile alphabet, see ``tests/modelfs.py``): create/overwrite
a whole file (O_CREAT|O_TRUNC, optionally O_EXCL), write at an offset, append, truncate by path,
rename (files, directories, over existing targets, into other directories, into itself),
mkdir, rmdir, unlink, symlink, hard link (following or not), chmod, utime with explicit ns
times (following or not), open a handle with random flags (O_RDONLY/O_WRONLY/O_RDWR, O_APPEND,
O_TRUNC, O_CREAT, O_EXCL), write/pwrite/read/pread/ftruncate/fsync/fstat/close through open
handles, and remount.

Compared after every step: each operation's result or exact errno; then the whole tree (types,
permission bits, sizes, contents, symlink targets, nlink of non-directories, which names are
hard links of one file, mtimes where the test set them explicitly). At the end of each example
and after each remount the same picture is taken of the VM through the API. Shell-injection
canaries hidden in names must never create ``/home/user/CANARY`` in the VM or ``/tmp/CANARY``
locally, and the daemon must log no WARNING/ERROR.

Tolerances (each deliberate, nothing else is loosened):
- mtimes are compared only when the test set them explicitly (utime) and nothing changed the
  node since; otherwise they are "now" on two clocks. Directory mtimes are compared only in the
  utime step itself: an upload renames a temporary file into the directory on the VM.
- atime only in the utime step's own result (any later read may move it).
- directory sizes and nlink are never compared (they depend on the backing filesystem).

CI runs a small derandomized budget. A longer hunt:

    ARKERFS_MODEL_EXAMPLES=500 ARKERFS_MODEL_STEPS=60 .venv/bin/python -m pytest tests/test_model.py

(``ARKERFS_MODEL_SEED=N`` picks a seed for a long run; without it a long run is random and
prints a ``@reproduce_failure`` blob on failure.)
"""

from __future__ import annotations

import os

import pytest
import hypothesis
from hypothesis import HealthCheck, reproduce_failure, seed, settings
from hypothesis.stateful import run_state_machine_as_test

from tests.conftest import WRITE_MODES
from tests.modelfs import MountKeeper
from tests.modelrules import FsModel

EXAMPLES = int(os.environ.get("ARKERFS_MODEL_EXAMPLES", "15"))
STEPS = int(os.environ.get("ARKERFS_MODEL_STEPS", "25"))
SEED = os.environ.get("ARKERFS_MODEL_SEED")
DAEMON_ARGS = os.environ.get("ARKERFS_MODEL_DAEMON_ARGS", "").split()  # e.g. "--debug"
REPRODUCE = os.environ.get("ARKERFS_MODEL_REPRODUCE")  # the blob of a printed @reproduce_failure
LONG = "ARKERFS_MODEL_EXAMPLES" in os.environ or "ARKERFS_MODEL_STEPS" in os.environ
REMOUNT_EVERY = 12  # at least this many steps between remounts (each costs ~1 s)


class MountModel(FsModel):
    """The rules (``tests/modelrules.py``) on a real mount (``target`` is a ``MountKeeper``)."""

    target = None


def _settings(examples: int = EXAMPLES) -> settings:
    common = dict(max_examples=examples, stateful_step_count=STEPS, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck), print_blob=True)
    if LONG and SEED is None:
        return settings(**common)
    return settings(**common, derandomize=SEED is None)


@pytest.mark.timeout(max(300, EXAMPLES * STEPS * 2))
@pytest.mark.parametrize("mode", list(WRITE_MODES))
def test_mount_behaves_like_a_local_directory(server, mode):
    """In write-back mode the VM is compared after `arkerfs sync` (``Api`` waits for it); fewer
    examples there, since the in-process model runs thousands of write-back steps already."""
    MountModel.target = MountKeeper(server, *WRITE_MODES[mode], *DAEMON_ARGS, remount_every=REMOUNT_EVERY)
    try:
        machine = MountModel
        if SEED is not None:
            machine = seed(int(SEED))(MountModel)
        if REPRODUCE:
            machine = reproduce_failure(hypothesis.__version__, REPRODUCE)(machine)
        examples = EXAMPLES if mode == "write-through" or LONG else max(5, EXAMPLES // 2)
        run_state_machine_as_test(machine, settings=_settings(examples))
    except BaseException:
        keeper, MountModel.target = MountModel.target, None
        try:
            keeper.down()
        except AssertionError:
            pass  # the test's own failure is the one to report
        raise
    keeper, MountModel.target = MountModel.target, None
    keeper.down()
