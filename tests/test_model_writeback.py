"""The in-process model test in write-back mode: the same rules as ``test_model_inprocess``
(VFS over LocalVM, no kernel, no HTTP), with VFS over the write-back port, a real journal and
the pusher's batches.

What changes against write-through:

- the VM lags the mount by design, so the VM is compared with the reference after a push of
  everything pending (``drain``), and only every ``VM_EVERY`` steps (between them changes pile
  up in the journal, so batches coalesce and pack several operations);
- every other remount is a crash: the VFS and the port are dropped without pushing, and a new
  port on the reopened journal replays what was recorded. Half of those crash in the middle of
  a push, after the VM ran the batch and before the journal heard back (the batch is then sent
  again: its fragments must be repeatable). After the remount the VM must hold exactly what the
  reference holds: nothing whose ``close()`` returned is lost, nothing is applied twice.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
from hypothesis.stateful import invariant

from arkerfs.fs.remote import RemoteFS
from arkerfs.fs.vfs import VFS, Options
from arkerfs.writeback.journal import Journal
from arkerfs.writeback.port import WriteBack
from tests.modelrules import guard
from tests.test_model_inprocess import CACHE_TTL, InProcessModel, InProcessTarget, run_model
from tests.vfsdriver import VfsDriver

VM_EVERY = 5


class WriteBackTarget(InProcessTarget):
    def __init__(self, base: str) -> None:
        self.journal_dir = os.path.join(base, "journal")
        self.journal = None
        self.crashes = 0
        super().__init__(base)

    def _new_vfs(self) -> None:
        self.journal = Journal(Path(self.journal_dir), "vm-under-test")
        self.port = WriteBack(RemoteFS(self.vm), self.journal)
        self.vfs = VFS(self.port, b"/home/user", self.spool,
                       Options(cache_ttl=CACHE_TTL, owner=(os.getuid(), os.getgid())), timer=self.clock)
        self.driver = VfsDriver(self.vfs)
        self.mounts += 1

    def drain(self) -> None:
        failed = self.call(self.port.drain, retry_failed=True)
        assert not failed, f"changes the VM refused: {failed}"

    def vm_snapshot(self, vm_root: bytes):
        self.drain()
        return super().vm_snapshot(vm_root)

    def remount(self) -> None:
        if self.mounts % 2:
            return self.remount_clean()
        self.crashes += 1
        self.driver.drop_caches()
        if self.crashes % 2 and self.journal.has_pushable():
            self._push_without_acknowledgement()
        self.journal.close()  # the process died: the next daemon finds the journal as it was
        self._new_vfs()

    def remount_clean(self) -> None:
        self.driver.drop_caches()
        rescued = self.call(self.vfs.shutdown)
        assert not rescued, f"rescue files at remount: {rescued}"
        assert not self.journal.has_pushable(), "an unmount left changes in the journal"
        self.journal.close()
        self._new_vfs()

    def _push_without_acknowledgement(self) -> None:
        """One batch reaches the VM, then the daemon dies before the journal is told."""
        self.journal.acknowledge = lambda seqs: None
        self.call(self.port.pusher.push_batch)



class WriteBackModel(InProcessModel):
    target = None

    @invariant()
    @guard
    def vm_agrees(self):
        self.keeper.steps += 1
        if not self.handles and self.keeper.steps % VM_EVERY == 0:
            self.compare_vm("after pushing everything, with no descriptor open")


@pytest.mark.timeout(1800)
async def test_write_back_vfs_behaves_like_a_local_directory(tmp_path):
    target = WriteBackTarget(str(tmp_path))
    trace = None
    if os.environ.get("ARKERFS_WB_TRACE"):  # every batch the pusher sends, to this file
        trace = logging.FileHandler(os.environ["ARKERFS_WB_TRACE"])
        logging.getLogger("arkerfs.writeback.pusher").setLevel(logging.DEBUG)
        logging.getLogger("arkerfs.writeback.pusher").addHandler(trace)
    try:
        await run_model(target, WriteBackModel)
    finally:
        if trace is not None:
            logging.getLogger("arkerfs.writeback.pusher").removeHandler(trace)
    print(f"write-back model: {target.vm.calls['run']} runs, {target.vm.calls['sync_write']} sync writes, "
          f"{target.mounts} mounts ({target.crashes} crashes), {target.steps} steps")
