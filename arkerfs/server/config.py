"""Settings of one local server, and the start-up checks that can refuse them.

``ServerConfig`` is what both entry points hand to ``serve()``: the ``arkerfs serve``
command builds it from argv, the mount daemon's embedded mode builds it directly. It is kept
free of heavy imports so the command module stays cheap to import.
"""

from __future__ import annotations

import ipaddress
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from arkerfs.protocol import CHUNK_SIZE, PRESIGN_EXPIRES_IN, SERVER_MAX_FILE_BYTES

DEFAULT_PORT = 8600
DEFAULT_HOST = "127.0.0.1"
# A run with no timeout (or 0) still ends here, so a forgotten `sleep infinity` cannot pin
# a session forever. Matches the later API's 300 s sync window with room to spare.
RUN_TIMEOUT_CEILING = 600.0
API_KEY_FILE = "api-key"
GENERATED_KEY_PREFIX = "ark_local_"


class StartupError(Exception):
    """The server cannot start; ``str(exc)`` is the one-line reason, ``exit_code`` the status."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@dataclass(frozen=True)
class ServerConfig:
    """Everything ``serve()`` needs. ``api_keys`` are the accepted bearer keys."""

    data_dir: Path
    api_keys: tuple[str, ...]
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    latency_ms: float = 0.0
    inline_read_limit: int = CHUNK_SIZE
    presign_ttl: float = PRESIGN_EXPIRES_IN
    run_timeout_ceiling: float = RUN_TIMEOUT_CEILING
    max_file_bytes: int = SERVER_MAX_FILE_BYTES
    # Host files that runs must not see even read-only (e.g. an --api-key-file outside the
    # data dir); the data dir itself is always hidden.
    hidden_files: tuple[Path, ...] = ()

    def __post_init__(self) -> None:
        check_loopback(self.host)
        if not self.api_keys or not all(self.api_keys):
            raise StartupError("at least one non-empty API key is required")


def default_data_dir() -> Path:
    """``$XDG_DATA_HOME/arkerfs/server``, falling back to ``~/.local/share/arkerfs/server``."""
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(base) / "arkerfs" / "server"


def check_loopback(host: str) -> None:
    """Refuse anything but loopback: the server runs commands for anyone holding the key."""
    if host == "localhost":
        return
    try:
        if ipaddress.ip_address(host).is_loopback:
            return
    except ValueError:
        pass
    raise StartupError(f"--host must be a loopback address (127.0.0.0/8, ::1, localhost), not {host!r}", 2)


def read_key_file(path: Path) -> str:
    """The key stored in ``path`` (surrounding whitespace ignored); refuses an empty file."""
    try:
        key = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise StartupError(f"cannot read API key file {path}: {exc.strerror}", 2) from None
    if not key:
        raise StartupError(f"API key file {path} is empty", 2)
    return key


def generated_key(data_dir: Path) -> tuple[str, Path]:
    """Reuse or create ``<data-dir>/api-key`` (mode 0600); returns (key, file path)."""
    path = data_dir / API_KEY_FILE
    if path.exists():
        return read_key_file(path), path
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = GENERATED_KEY_PREFIX + secrets.token_urlsafe(24)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(key + "\n")
    return key, path
