"""What a VM command sees: an allow-list sandbox built with bubblewrap.

A run gets a new user namespace (in which it cannot create another) with every capability dropped (``CapEff`` is zero even when the
server runs as root), so it cannot mount, unmount, remount or change owners, and new mount, PID,
IPC, UTS, cgroup and network namespaces. Its filesystem is built from nothing:

- ``/home/user``: the VM's home (read-write), the only host directory it can change;
- ``/tmp``: a private tmpfs; ``/proc``: its own, with the kernel's global knobs (``/proc/sys``,
  ``sysrq-trigger``...) read-only and its windows on host memory and keys (``kcore``, ``kmsg``,
  ``keys``...) masked; ``/dev``: bwrap's minimal one (null, zero,
  full, random, urandom, tty, pts, shm);
- read-only: ``/usr`` and the merged-usr links or directories ``/bin``, ``/sbin``, ``/lib*``
  (programs and libraries), and a minimal ``/etc``: the few host files programs need to run
  (the dynamic loader's cache, name service and locale settings, TLS certificates, shells,
  alternatives) plus a ``passwd``/``group`` of the server's own making. No shadow files.

Everything else of the host — the server's data directory (other VMs, the presigned-URL
secret, staging), ``/root``, ``/home``, ``/run``, ``/var``, ``/opt``, ``/srv``, ``/mnt``, key
files, spools — is simply not there. Paths to the allowed system trees that hold something
private (the data dir placed under ``/usr``, say) are covered with an empty tmpfs.
"""

from __future__ import annotations

import os
from pathlib import Path

from arkerfs.protocol import HOME

# Host /etc entries a VM command may read (files or directories, copied in read-only if present).
ETC_ALLOWED = (
    "ld.so.cache", "ld.so.conf", "ld.so.conf.d", "nsswitch.conf", "host.conf", "hosts",
    "resolv.conf", "localtime", "timezone", "locale.alias", "locale.gen", "default/locale",
    "ssl", "ca-certificates", "ca-certificates.conf", "alternatives", "shells", "profile",
    "profile.d", "bash.bashrc", "inputrc", "environment", "mime.types", "magic", "magic.mime",
    "gitconfig", "vim", "python3", "python3.11", "protocols", "services", "terminfo", "os-release",
    "debian_version", "lsb-release", "login.defs", "selinux",
)
# Top-level system trees: bound read-only when they are directories, recreated when they are the
# merged-usr symlinks (``/bin -> usr/bin``).
SYSTEM_TREES = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
# Not even allowed trees may show these.
NEVER_SHOWN = ("shadow", "gshadow", "shadow-", "gshadow-", "sudoers", "sudoers.d", "ssh")


PROC_READ_ONLY = ("/proc/sys", "/proc/sysrq-trigger", "/proc/irq", "/proc/bus", "/proc/fs")
PROC_MASKED = ("/proc/kcore", "/proc/kmsg", "/proc/keys", "/proc/key-users", "/proc/timer_list",
               "/proc/sched_debug", "/proc/latency_stats", "/proc/timer_stats", "/proc/acpi",
               "/proc/scsi", "/proc/asound", "/proc/kallsyms", "/proc/kpagecount", "/proc/kpageflags",
               "/proc/kpagecgroup", "/proc/vmallocinfo", "/proc/slabinfo", "/proc/config.gz")


def synthesized_etc(work_dir: Path) -> Path:
    """A directory holding the VM's own ``passwd``/``group`` (root and user); created once."""
    etc = work_dir / "vm-etc"
    etc.mkdir(mode=0o755, exist_ok=True)
    (etc / "passwd").write_text(
        "root:x:0:0:root:/home/user:/bin/bash\n"
        "user:x:1000:1000:user:/home/user:/bin/bash\n"
        "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n")
    (etc / "group").write_text("root:x:0:\nuser:x:1000:\nnogroup:x:65534:\n")
    (etc / "hostname").write_text("arker\n")
    (etc / "empty").write_bytes(b"")
    for name in ("passwd", "group", "hostname", "empty"):
        os.chmod(etc / name, 0o644)
    return etc


def argv(bwrap: str, home: str, etc: Path, hidden: list[str], command: list[str]) -> list[str]:
    """bwrap's arguments for one run of ``command`` with ``home`` at /home/user."""
    empty = str(etc / "empty")  # covers a file (the host's /dev/null is nodev in a user namespace)
    args = [bwrap, "--unshare-user", "--disable-userns", "--cap-drop", "ALL", "--unshare-ipc", "--unshare-pid",
            "--unshare-uts", "--unshare-net", "--unshare-cgroup-try", "--hostname", "arker",
            "--die-with-parent", "--new-session"]
    for tree in SYSTEM_TREES:
        if os.path.islink(tree):
            args += ["--symlink", os.readlink(tree), tree]
        elif os.path.isdir(tree):
            args += ["--ro-bind", tree, tree]
    args += ["--dir", "/etc"]
    for name in ETC_ALLOWED:
        source = os.path.join("/etc", name)
        if os.path.lexists(source) and name not in NEVER_SHOWN:
            args += ["--ro-bind", source, source]
    for name in ("passwd", "group", "hostname"):
        args += ["--ro-bind", str(etc / name), f"/etc/{name}"]
    args += ["--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp"]
    # When the server runs as root, the sandbox's uid is the host's root for file access: the
    # kernel's global knobs under /proc must be out of its reach (as container runtimes do).
    for path in PROC_READ_ONLY:
        args += ["--ro-bind-try", path, path]
    for path in PROC_MASKED:
        if os.path.isdir(path):
            args += ["--tmpfs", path, "--remount-ro", path]
        elif os.path.exists(path):
            args += ["--ro-bind", empty, path]
    for path in hidden:  # something private inside an allowed tree
        args += ["--tmpfs", path, "--remount-ro", path] if os.path.isdir(path) else ["--ro-bind", empty, path]
    # the skeleton (/, /etc, /home) is read-only too: only the home and /tmp take writes
    args += ["--dir", "/home", "--bind", home, HOME, "--remount-ro", "/", "--chdir", HOME, *command]
    return args


def inside_allowed_trees(path: Path) -> bool:
    """Whether ``path`` lies in a tree a VM command can see (so it must be covered)."""
    resolved = str(path.resolve())
    roots = [os.path.realpath(t) for t in SYSTEM_TREES if os.path.exists(t)]
    roots += [os.path.realpath(os.path.join("/etc", n)) for n in ETC_ALLOWED if os.path.lexists(os.path.join("/etc", n))]
    return any(resolved == r or resolved.startswith(r.rstrip("/") + "/") for r in roots)
