"""The running mount's self-report: what ``arkerfs status`` shows (through ``status``).

One ``MountReport`` per daemon collects the API calls (as the SDK's observer), the last problem
logged, and, once the filesystem exists, its caches and pending changes. ``snapshot()`` turns it
into plain JSON-able data; it costs no call and takes no lock.
"""

from __future__ import annotations

import logging
import os
import time

from arkerfs.mount.metrics import ApiCalls, LastProblem, uptime_since

NOTHING_PENDING = {"files": 0, "bytes": 0, "oldest_age_s": None, "pushing": 0, "failed": 0}


class MountReport:
    def __init__(self, config) -> None:
        self.config = config
        self.vm_id = config.vm
        self.calls = ApiCalls()
        self.problems = LastProblem()
        self.bytes_up = self.bytes_down = 0
        self.vfs = None  # set once the filesystem exists
        self.watcher = None  # the change watcher, once started
        self.state = "connecting"  # connecting, serving, draining
        self._started = time.monotonic()
        self._started_wall = time.time()

    def observe(self, kind: str, seconds: float, ok: bool, sent: int, received: int) -> None:
        """The SDK's observer (``Arker.observe``): one call per HTTP attempt."""
        self.calls.record(kind, seconds, ok)
        self.bytes_up += sent
        self.bytes_down += received

    def attach_logging(self) -> None:
        logging.getLogger().addHandler(self.problems)

    def detach_logging(self) -> None:
        logging.getLogger().removeHandler(self.problems)

    def snapshot(self) -> dict:
        config, vfs = self.config, self.vfs
        caches = {}
        if vfs is not None:
            caches = {
                "metadata": _rate(vfs.meta_hits, vfs.meta_misses),
                "content": _rate(vfs.content.hits, vfs.content.misses),
            }
        return {
            "mountpoint": config.mountpoint,
            "vm": config.vm,
            "vm_id": self.vm_id,
            "server": config.base_url or "the default Arker host",
            "mode": "read-only" if config.read_only else "write-back" if config.write_back else "write-through",
            "state": self.state,
            "pid": os.getpid(),
            "started_at": self._started_wall,
            "uptime_s": uptime_since(self._started),
            "cache_ttl_s": config.cache_ttl,
            "api": {"total": self.calls.total(), "calls": self.calls.snapshot(),
                    "bytes_up": self.bytes_up, "bytes_down": self.bytes_down},
            "caches": caches,
            "watcher": self.watcher.snapshot() if self.watcher is not None else {
                "state": "off", "mode": None, "ttl_s": config.cache_ttl,
                "why": "--no-watch" if not config.watch else "not started yet"},
            "pending": NOTHING_PENDING if vfs is None else vfs.pending_summary(),
            "conflicts": _conflicts(vfs),
            "last_error": self.problems.last,
            "rescued": [] if vfs is None else list(vfs.rescued),
        }


def _conflicts(vfs) -> dict | None:
    """Files changed in the VM while the mount had a change of them pending (both versions
    kept): the pusher's (write-back) and the open files' own pushes (both modes)."""
    if vfs is None:
        return None
    pusher = getattr(getattr(vfs, "remote", None), "pusher", None)
    found = sorted([*getattr(pusher, "conflicts", []), *vfs.conflicts], key=lambda c: c.when)
    return {"count": len(found),
            "recent": [{"path": c.path, "kept": c.kept, "at": c.when} for c in found[-10:]]}


def _rate(hits: int, misses: int) -> dict:
    total = hits + misses
    return {"hits": hits, "misses": misses, "hit_rate": round(hits / total, 3) if total else None}
