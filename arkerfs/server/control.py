"""Drive a local server from tests, benchmarks and the demo.

``ServerProcess`` starts ``arkerfs serve`` in a subprocess and reads its base URL from the
line it prints when ready; ``LocalControl`` speaks the ``/_local/`` test hooks.
"""

from __future__ import annotations

import os
import re
import select
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

READY_LINE = re.compile(r"listening on (http://\S+)")


@dataclass
class LocalControl:
    """Synchronous client for ``/_local/``: health, stats and fault injection."""

    base_url: str
    api_key: str

    def _client(self) -> httpx.Client:
        return httpx.Client(
            base_url=self.base_url, headers={"authorization": f"Bearer {self.api_key}"}, timeout=30
        )

    def health(self) -> dict:
        with self._client() as c:
            r = c.get("/_local/health")
            r.raise_for_status()
            return r.json()

    def stats(self) -> dict:
        with self._client() as c:
            r = c.get("/_local/stats")
            r.raise_for_status()
            return r.json()

    def calls(self) -> dict[str, int]:
        return self.stats()["calls"]

    def nonzero_calls(self) -> dict[str, int]:
        """Only the routes that were called: what a test's failure message should show."""
        return {route: n for route, n in self.calls().items() if n}

    def total_calls(self) -> int:
        return sum(self.calls().values())

    def reset_stats(self) -> None:
        with self._client() as c:
            c.post("/_local/stats/reset").raise_for_status()

    def set_faults(self, **faults) -> None:
        """latency_ms, fail_rate, fail_status, busy_rate, seed; no arguments clears them."""
        with self._client() as c:
            c.post("/_local/faults", json=faults).raise_for_status()

    def clear_faults(self) -> None:
        self.set_faults()


@dataclass
class ServerProcess:
    """``arkerfs serve`` in a subprocess on a loopback port: ``port`` (0, the default, picks a
    free one). Once started, ``port`` holds the bound port, so a later ``start()`` (after
    ``stop()`` or ``kill()``) comes back on the same port and data dir, as a restart would."""

    data_dir: Path
    api_key: str
    extra_args: list[str] = field(default_factory=list)
    log_path: Path | None = None
    proc: subprocess.Popen | None = None
    base_url: str = ""
    port: int = 0

    def start(self, timeout: float = 30) -> "ServerProcess":
        cmd = [sys.executable, "-m", "arkerfs", "serve", "--data-dir", str(self.data_dir),
               "--port", str(self.port), *self.extra_args]
        # The key travels in the environment, never on the command line (ps shows argv).
        env = {**os.environ, "ARKER_API_KEY": self.api_key}
        log = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, stdin=subprocess.DEVNULL, env=env)
        deadline = time.monotonic() + timeout
        buffered = b""
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"arkerfs serve exited with {self.proc.returncode} before it was ready")
            ready, _, _ = select.select([self.proc.stdout], [], [], 0.2)
            if ready:
                chunk = os.read(self.proc.stdout.fileno(), 4096)
                buffered += chunk
                match = READY_LINE.search(buffered.decode(errors="replace"))
                if match:
                    self.base_url = match.group(1)
                    self.port = int(self.base_url.rsplit(":", 1)[1].split("/")[0])
                    return self
        self.stop()
        raise RuntimeError("arkerfs serve did not print its URL in time")

    @property
    def control(self) -> LocalControl:
        return LocalControl(self.base_url, self.api_key)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def __enter__(self) -> "ServerProcess":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
