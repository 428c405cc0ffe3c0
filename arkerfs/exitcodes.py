"""The exit statuses of every ``arkerfs`` command, in one place (documented in README.md).

Scripts can rely on these numbers; they do not change between releases.

| status | meaning |
|---|---|
| 0 | success |
| 1 | failed, for a reason not listed below: ``umount`` of something that is not mounted or could not
|   | unmount cleanly, ``status``/``sync`` of a mount that is not there or does not answer, ``rm``
|   | not confirmed, an API error not listed below |
| 2 | usage: unknown command or option, bad value (argparse's own status), ``rm`` without
|   | ``--yes`` when stdin is not a terminal |
| 3 | ``vms``/``fork``/``rm``: no API key, a group/other-readable key file, a refused key |
| 4 | ``vms``/``fork``/``rm``: no VM with that id or name |
| 5 | ``vms``/``fork``/``rm``: the API cannot be reached (connection refused, DNS, timeout) |
| 6 | ``mount``: the mount could not be made (every reason: bad mount point, no or refused key,
|   | no such VM, API unreachable, kernel refusal; the one line on stderr says which) |
| 7 | data left pending: ``umount`` kept data in rescue files, or timed out (or was forced)
|   | with data not pushed; ``sync`` could not push everything (each path named on stderr);
|   | a foreground ``mount`` daemon that ended with rescue files |
| 130 | interrupted (Ctrl-C) |

``mount.fuse.arkerfs`` (the mount(8) helper) answers in mount(8)'s own terms instead, since
mount(8) passes its helper's status through (mount(8), "EXIT STATUS"): 0 mounted, 1 incorrect
invocation (an unknown ``-o`` option, bad arguments), 32 mount failure (any status 6 above),
8 interrupted. See ``MOUNT8_STATUS``.
"""

from __future__ import annotations

OK = 0
FAILED = 1
USAGE = 2
AUTH = 3
NOT_FOUND = 4
UNREACHABLE = 5
MOUNT_FAILED = 6
PENDING = 7
INTERRUPTED = 130

# mount(8)'s statuses (util-linux mount(8), "EXIT STATUS"), for mount.fuse.arkerfs
MOUNT8_USAGE = 1
MOUNT8_INTERRUPTED = 8
MOUNT8_FAILURE = 32
MOUNT8_STATUS = {OK: OK, USAGE: MOUNT8_USAGE, INTERRUPTED: MOUNT8_INTERRUPTED}  # anything else: MOUNT8_FAILURE

# ArkerError codes that have their own status; every other code is FAILED.
_BY_API_CODE = {"unauthorized": AUTH, "forbidden": AUTH, "not_found": NOT_FOUND}


def for_api_error(exc) -> int:
    """The exit status for an ``arkerfs.client.ArkerError``."""
    if exc.code in _BY_API_CODE:
        return _BY_API_CODE[exc.code]
    if exc.status == 0 and exc.code in ("unavailable", "timeout"):
        return UNREACHABLE
    return FAILED


def for_mount8(status: int) -> int:
    """What ``mount.fuse.arkerfs`` exits with for an ``arkerfs mount`` status."""
    return MOUNT8_STATUS.get(status, MOUNT8_FAILURE)
