"""What a VM command sees of the host: the bubblewrap arguments for one run (security-critical).

The sandbox is an allow-list, not the host minus hidden parts: an empty root with the system
directories programs need (``/usr``, ``/bin``, ``/lib*``, ``/sbin``) and a handful of ``/etc``
files read-only, the VM's home at ``/home/user``, a private ``/tmp``, a fresh ``/proc`` and a
minimal ``/dev``. Everything else (``/root``, ``/run``, ``/var``, the host's ``/home``, the
server's data dir with other VMs and the signing secret, key files) simply is not there.

The command runs in a new user namespace as uid/gid 1000 (``user``) with every capability
dropped, so it cannot mount, unmount or remount anything, nor create further user namespaces.
Only the server's own uid is mapped (to 1000): files that runs write land on the host owned by
the server user, exactly like the files the sync path writes, so each can change the other's.
"""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass, field
from pathlib import Path

import trio

from arkerfs.protocol import HOME

SANDBOX_UID = SANDBOX_GID = 1000
SANDBOX_USER = "user"
HOSTNAME = "arker"

SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
# /etc entries programs read to run: loader, name service, certs, shell start-up, locale and
# time, MIME/magic, interpreter config. Nothing with credentials (shadow, ssl/private, pip.conf,
# npmrc, ssh) and nothing naming the host's users (passwd/group/hosts are synthesized).
ETC_ENTRIES = (
    "nsswitch.conf", "host.conf", "gai.conf", "resolv.conf", "protocols", "services",
    "ld.so.cache", "ld.so.conf", "ld.so.conf.d", "alternatives",
    "ssl/certs", "ssl/openssl.cnf", "pki/tls/certs", "pki/ca-trust/extracted", "ca-certificates.conf",
    "gitconfig", "profile", "profile.d", "bash.bashrc", "inputrc", "shells",
    "localtime", "timezone", "locale.alias", "os-release", "lsb-release", "debian_version",
    "mime.types", "magic", "magic.mime", "xattr.conf", "terminfo", "vim", "fonts",
)
ETC_GLOBS = ("python3*", "java-*")  # interpreter config some installs link into from /usr

# Strongest first; a host that refuses one gets the next (older bwrap has no
# --disable-userns; without user namespaces a root server still drops every capability).
_NAMESPACE_VARIANTS = (
    ["--unshare-user", "--uid", str(SANDBOX_UID), "--gid", str(SANDBOX_GID), "--disable-userns"],
    ["--unshare-user", "--uid", str(SANDBOX_UID), "--gid", str(SANDBOX_GID)],
    [],
)
_COMMON_FLAGS = [
    "--cap-drop", "ALL", "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-net",
    "--unshare-cgroup-try", "--hostname", HOSTNAME, "--die-with-parent", "--new-session",
]


PROC_READ_ONLY = ("/proc/sys", "/proc/sysrq-trigger", "/proc/irq", "/proc/bus", "/proc/fs")
PROC_MASKED = ("/proc/kcore", "/proc/kmsg", "/proc/keys", "/proc/key-users", "/proc/timer_list",
               "/proc/sched_debug", "/proc/latency_stats", "/proc/timer_stats", "/proc/acpi",
               "/proc/scsi", "/proc/asound", "/proc/kallsyms", "/proc/kpagecount", "/proc/kpageflags",
               "/proc/kpagecgroup", "/proc/vmallocinfo", "/proc/slabinfo", "/proc/config.gz")


def synthesized_etc() -> dict[str, str]:
    """Files made up for the sandbox rather than copied from the host."""
    return {
        "passwd": (
            "root:x:0:0:root:/root:/bin/bash\n"
            f"{SANDBOX_USER}:x:{SANDBOX_UID}:{SANDBOX_GID}:{SANDBOX_USER}:{HOME}:/bin/bash\n"
            "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n"
        ),
        "group": f"root:x:0:\n{SANDBOX_USER}:x:{SANDBOX_GID}:\nnogroup:x:65534:\n",
        "hosts": f"127.0.0.1\tlocalhost\n127.0.1.1\t{HOSTNAME}\n::1\tlocalhost ip6-localhost ip6-loopback\n",
        "hostname": f"{HOSTNAME}\n",
    }


def _system_args() -> tuple[list[str], list[tuple[Path, str]]]:
    """bwrap arguments for the read-only system part, and (host source, sandbox path) per bind."""
    args: list[str] = []
    binds: list[tuple[Path, str]] = []
    for path in SYSTEM_DIRS:
        if os.path.islink(path):  # merged /usr: keep the symlink, /usr is bound anyway
            args += ["--symlink", os.readlink(path), path]
        elif os.path.isdir(path):
            args += ["--ro-bind", path, path]
            binds.append((Path(path).resolve(), path))
    args += ["--perms", "0755", "--dir", "/etc"]
    names = list(ETC_ENTRIES)
    for pattern in ETC_GLOBS:
        names += sorted(os.path.relpath(p, "/etc") for p in glob.glob(f"/etc/{pattern}"))
    for name in names:
        src = f"/etc/{name}"
        if os.path.exists(src):  # follows symlinks: a dangling one (e.g. into /run) is copied as content or skipped
            args += ["--ro-bind", src, src]
            binds.append((Path(src).resolve(), src))
    args += ["--symlink", "/proc/self/mounts", "/etc/mtab"]
    return args, binds


@dataclass
class Sandbox:
    """The fixed part of every run's bwrap command line, built once at server start."""

    bwrap: str
    etc_dir: Path  # where the synthesized /etc files are written (server-private)
    hidden: list[Path] = field(default_factory=list)  # host paths that must never be visible
    namespace_flags: list[str] = field(default_factory=lambda: list(_NAMESPACE_VARIANTS[0]))

    def __post_init__(self) -> None:
        self.etc_dir.mkdir(parents=True, exist_ok=True)
        self._system, self._binds = _system_args()
        for name, text in synthesized_etc().items():
            path = self.etc_dir / name
            path.write_text(text, encoding="utf-8")
            path.chmod(0o644)
            self._system += ["--ro-bind", str(path), f"/etc/{name}"]
        # Covers a hidden file; the host's /dev/null would not do (nodev in a user namespace).
        self._empty = self.etc_dir / "empty"
        self._empty.write_bytes(b"")
        self._system += self._cover_hidden()

    def _cover_hidden(self) -> list[str]:
        """Cover hidden host paths that an allowed bind would still show (e.g. a key under /usr)."""
        args: list[str] = []
        for path in (p.resolve() for p in self.hidden):
            for src, dest in self._binds:
                if path == src or src in path.parents:
                    inside = os.path.join(dest, os.path.relpath(path, src))
                    if path.is_dir():
                        args += ["--tmpfs", inside, "--remount-ro", inside]
                    else:
                        args += ["--ro-bind", str(self._empty), inside]
        return args

    def _proc_guard(self) -> list[str]:
        """The only mapped uid is the server's: as root, a run reaches host-root-owned kernel
        files by their mode alone. Their global knobs go read-only, their windows on host memory
        and keys are masked (as container runtimes do)."""
        args: list[str] = []
        for path in PROC_READ_ONLY:
            args += ["--ro-bind-try", path, path]
        for path in PROC_MASKED:
            if os.path.isdir(path):
                args += ["--tmpfs", path, "--remount-ro", path]
            elif os.path.exists(path):
                args += ["--ro-bind", str(self._empty), path]
        return args

    def argv(self, home: str, command: list[str]) -> list[str]:
        """bwrap + layout + namespaces, running ``command`` in ``home`` (seen as /home/user)."""
        return [
            self.bwrap, *self.namespace_flags, *_COMMON_FLAGS, *self._system,
            "--dev", "/dev", "--proc", "/proc", *self._proc_guard(),
            "--perms", "1777", "--tmpfs", "/tmp",
            "--perms", "0755", "--dir", "/home", "--bind", home, HOME,
            "--remount-ro", "/", "--chdir", HOME, *command,
        ]

    async def choose_namespaces(self) -> str | None:
        """Pick the strongest namespace set bwrap accepts here; None if ok, else the last error."""
        error = None
        for flags in _NAMESPACE_VARIANTS:
            self.namespace_flags = list(flags)
            probe = self.argv(str(self.etc_dir), ["/bin/true"])
            result = await trio.run_process(probe, capture_stderr=True, check=False)
            if result.returncode == 0:
                return None
            lines = result.stderr.decode(errors="replace").strip().splitlines()
            error = lines[-1] if lines else f"exit {result.returncode}"
        return error
