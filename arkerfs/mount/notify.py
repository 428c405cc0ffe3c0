"""sd_notify(3) without libsystemd: tell systemd (``Type=notify``) how the mount is doing.

systemd passes ``$NOTIFY_SOCKET``, an AF_UNIX datagram socket (a path, or an abstract name
written with a leading ``@``). Each message is newline-separated ``KEY=VALUE`` lines:
``READY=1`` once the mount is live, ``STATUS=...`` for ``systemctl status``, ``STOPPING=1`` when
the unmount starts. Without ``$NOTIFY_SOCKET`` (not under systemd) every call does nothing, and
a send that fails is ignored: notifying must never break the mount.
"""

from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger(__name__)


def notify(*lines: str) -> bool:
    """Send ``lines`` (``"READY=1"``, ``"STATUS=..."``) as one datagram; True if it was sent."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address or not lines:
        return False
    if address.startswith("@"):  # abstract namespace
        address = "\0" + address[1:]
    message = "\n".join(line.replace("\n", " ") for line in lines).encode()
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto(message, address)
    except OSError as exc:
        log.debug("sd_notify to %r failed: %s", address, exc)
        return False
    return True


def ready(status: str) -> bool:
    return notify("READY=1", f"STATUS={status}")


def status(text: str) -> bool:
    return notify(f"STATUS={text}")


def stopping(status: str) -> bool:
    return notify("STOPPING=1", f"STATUS={status}")
