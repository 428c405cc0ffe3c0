"""The exit statuses of every ``arkerfs`` command, in one place (documented in README.md).

Scripts can rely on these numbers; they do not change between releases.

| status | meaning |
|---|---|
| 0 | success |
| 1 | failed: ``mount`` could not mount, ``umount`` could not unmount cleanly or kept data in
|   | rescue files, ``rm`` not confirmed, an API error not listed below |
| 2 | usage: unknown command or option, bad value (argparse's own status), ``rm`` without
|   | ``--yes`` when stdin is not a terminal, an unknown ``-o`` option of ``mount.fuse.arkerfs`` |
| 3 | ``vms``/``fork``/``rm``: no API key, a group/other-readable key file, a refused key |
| 4 | ``vms``/``fork``/``rm``: no VM with that id or name |
| 5 | ``vms``/``fork``/``rm``: the API cannot be reached (connection refused, DNS, timeout) |
| 130 | interrupted (Ctrl-C) |

``arkerfs mount`` keeps status 1 for every failure (the one line on stderr says why): scripts and
mount(8) only distinguish "mounted" from "not mounted".
"""

from __future__ import annotations

OK = 0
FAILED = 1
USAGE = 2
AUTH = 3
NOT_FOUND = 4
UNREACHABLE = 5
INTERRUPTED = 130

# ArkerError codes that have their own status; every other code is FAILED.
_BY_API_CODE = {"unauthorized": AUTH, "forbidden": AUTH, "not_found": NOT_FOUND}


def for_api_error(exc) -> int:
    """The exit status for an ``arkerfs.client.ArkerError``."""
    if exc.code in _BY_API_CODE:
        return _BY_API_CODE[exc.code]
    if exc.status == 0 and exc.code in ("unavailable", "timeout"):
        return UNREACHABLE
    return FAILED
