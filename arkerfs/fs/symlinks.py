"""How a symlink's target reads through the mount (sshfs's ``transform_symlinks``).

A link in the VM whose target is absolute and inside the home (``/home/user/x``) would resolve
on the LOCAL machine when followed through the mount. ``transform`` rewrites such a target as
a path relative to the link's own directory, so it resolves inside the mount wherever the mount
is, and to the very same file inside the VM. Any other target is returned unchanged: relative
ones already work, and absolute ones outside the home (``/etc/passwd``, and
``/home/user/../etc`` which climbs out of it) name something the mount cannot show (following
them reaches the local file; docs/MOUNT.md says so).

Like sshfs: climb from the link's directory, then descend the target's remainder taken
literally. Unlike sshfs, the directories both paths share are not climbed (``x``, not
``../d/x``, for a link in ``d`` to ``/home/user/d/x``); only empty and ``.`` components are
dropped, never a ``..``, so the result names what the original named even through symlinked
directories.
"""

from __future__ import annotations


def transform(target: bytes, link_path: bytes, home: bytes) -> bytes:
    """``target`` of the link at ``link_path`` (both VM paths) as it should read in the mount."""
    if not (target == home or target.startswith(home + b"/")):
        return target
    wanted = [c for c in target[len(home):].split(b"/") if c not in (b"", b".")]
    if _climbs_out(wanted):  # /home/user/../../etc/passwd: outside the home, left as it is
        return target
    here = [c for c in link_path[len(home):].split(b"/") if c][:-1]  # the link's directory
    shared = 0
    while shared < min(len(wanted), len(here)) and wanted[shared] == here[shared]:
        shared += 1
    parts = [b".."] * (len(here) - shared) + wanted[shared:]
    result = b"/".join(parts) or b"."
    if target.endswith(b"/") and result != b".":
        result += b"/"  # "must be a directory" is part of what the target says
    return result


def _climbs_out(parts: list[bytes]) -> bool:
    depth = 0
    for part in parts:
        depth += -1 if part == b".." else 1
        if depth < 0:
            return True
    return False
