"""The VM registry on disk: ``<data>/vms/<vm_id>/{meta.json, home/}``.

Each VM is a directory standing in for its ``/home/user`` plus a small metadata file. Forks
are copied into ``<data>/work/`` and renamed into ``vms/`` only when complete, and deletes
rename out of ``vms/`` before removing, so a crash never leaves a half-made VM listed. The
template ``arkuntu`` is seeded on first start and can be forked but not deleted or listed.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

import trio

from arkerfs.protocol import ARKUNTU_ID, SOURCE_ALIASES, new_ulid
from arkerfs.server import vmfiles
from arkerfs.server.errors import ApiError

REGION = "local"
TEMPLATE_NAME = "arkuntu"
SORT_KEYS = ("created_at", "-created_at", "region", "-region")

TEMPLATE_FILES = {
    "README.md": "# arkuntu\n\nThis is the home directory of a local arkerfs VM (forked from the `arkuntu` template).\n",
    "hello.py": 'print("hello from arkuntu")\n',
    "projects/demo/notes.txt": "Notes for the demo project.\n",
}


@dataclass
class Vm:
    vm_id: str
    name: str | None
    base_image: str
    region: str
    created_at: float  # unix seconds
    template: bool = False

    def item(self) -> dict:
        """The list-item / fork-response shape (PROTOCOL.md 4.1)."""
        stamp = datetime.fromtimestamp(self.created_at, timezone.utc).isoformat(timespec="milliseconds")
        return {
            "vm_id": self.vm_id, "name": self.name, "base_image": self.base_image,
            "region": self.region, "created_at": stamp.replace("+00:00", "Z"),
        }


def _write_meta(vm_dir: Path, vm: Vm) -> None:
    tmp = vm_dir / "meta.json.tmp"
    tmp.write_text(json.dumps(asdict(vm)), encoding="utf-8")
    os.replace(tmp, vm_dir / "meta.json")


class VmStore:
    """In-memory index of the VMs under ``data_dir``, kept in step with the disk."""

    def __init__(self, data_dir: Path, cp: str) -> None:
        self._vms_dir = data_dir / "vms"
        self._work = data_dir / "work"
        self._cp = cp
        self._vms: dict[str, Vm] = {}

    def load(self) -> None:
        """Read every VM, drop leftovers of interrupted forks/deletes, seed the template."""
        self._vms_dir.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(self._work, ignore_errors=True)
        self._work.mkdir()
        for meta in self._vms_dir.glob("*/meta.json"):
            vm = Vm(**json.loads(meta.read_text(encoding="utf-8")))
            self._vms[vm.vm_id] = vm
            # Temp files of writes a crash interrupted (vmfiles.TEMP_DIR, outside the home).
            shutil.rmtree(meta.parent / vmfiles.TEMP_DIR, ignore_errors=True)
        if ARKUNTU_ID not in self._vms:
            self._seed_template()

    def _seed_template(self) -> None:
        vm = Vm(ARKUNTU_ID, TEMPLATE_NAME, TEMPLATE_NAME, REGION, time.time(), template=True)
        staging = self._work / ARKUNTU_ID
        for rel, text in TEMPLATE_FILES.items():
            target = staging / "home" / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text, encoding="utf-8")
        _write_meta(staging, vm)
        os.rename(staging, self._vms_dir / ARKUNTU_ID)
        self._vms[vm.vm_id] = vm

    def get(self, vm_id: str) -> Vm:
        vm = self._vms.get(vm_id)
        if vm is None:
            raise ApiError("not_found", f"VM not found: {vm_id}")
        return vm

    def home(self, vm_id: str) -> str:
        """Host path of the VM's /home/user (raises not_found for an unknown VM)."""
        return str(self._vms_dir / self.get(vm_id).vm_id / "home")

    def by_name(self, name: str) -> Vm:
        """Resolve a by-name fork source: an alias, else the newest VM with exactly that name."""
        if name in SOURCE_ALIASES:
            return self.get(SOURCE_ALIASES[name])
        named = [vm for vm in self._vms.values() if vm.name == name]
        if not named:
            raise ApiError("not_found", f"no VM named {name!r}")
        return max(named, key=lambda vm: (vm.created_at, vm.vm_id))

    def list(self, *, q: str | None, sort: str, limit: int, offset: int) -> tuple[list[Vm], int]:
        """One page of non-template VMs and the total number of matches."""
        vms = [vm for vm in self._vms.values() if not vm.template]
        if q:
            vms = [vm for vm in vms if vm.name is not None and q.casefold() in vm.name.casefold()]
        key = sort.lstrip("-")
        # Ties (every local VM is in region "local") fall back to newest first.
        vms.sort(key=lambda vm: (vm.created_at, vm.vm_id), reverse=True)
        vms.sort(key=lambda vm: getattr(vm, key), reverse=sort.startswith("-"))
        return vms[offset : offset + limit], len(vms)

    async def fork(self, source_id: str, name: str | None) -> Vm:
        """Copy a VM's home (reflink where the filesystem allows) into a new VM."""
        source = self.get(source_id)
        vm_id = f"{new_ulid()}_{secrets.token_hex(2)}"
        vm = Vm(vm_id, name, source.base_image, REGION, time.time())
        staging = self._work / vm_id
        staging.mkdir()
        try:
            await trio.run_process(
                [self._cp, "-a", "--reflink=auto", "--", self.home(source_id), str(staging / "home")],
                capture_stderr=True,
            )
            _write_meta(staging, vm)
            os.rename(staging, self._vms_dir / vm_id)
        except BaseException:
            await trio.to_thread.run_sync(shutil.rmtree, staging, True)
            raise
        self._vms[vm_id] = vm
        return vm

    async def delete(self, vm_id: str) -> None:
        vm = self.get(vm_id)
        if vm.template:
            raise ApiError("forbidden", f"the template VM {vm_id} cannot be deleted")
        doomed = self._work / f"deleted-{vm_id}-{secrets.token_hex(4)}"
        os.rename(self._vms_dir / vm_id, doomed)
        del self._vms[vm_id]
        await trio.to_thread.run_sync(shutil.rmtree, doomed)
