"""``mount -t fuse.arkerfs`` and fstab lines, through the real mount(8) and /sbin/mount.fuse.arkerfs."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import time

import pytest

from arkerfs import exitcodes
from arkerfs.mount import runtime
from tests.test_mount_cli import arkerfs, env_for

HELPER = "/sbin/mount.fuse.arkerfs"
VENV_HELPER = os.path.join(os.path.dirname(sys.executable), "mount.fuse.arkerfs")


@pytest.fixture
def fs(server, api, workdir):
    """(vm, mnt, key file, env) with a 0600 key file; always unmounted afterwards."""
    if os.path.realpath(HELPER) != os.path.realpath(VENV_HELPER):
        pytest.fail(f"{HELPER} does not point at {VENV_HELPER}: run make setup")
    key_file = os.path.join(workdir, "key")
    fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.write(fd, server.api_key.encode())
    os.close(fd)
    mnt = os.path.realpath(os.path.join(workdir, "mnt"))
    env = env_for(workdir, None)  # no ARKER_API_KEY: the key comes from api_key_file=
    yield api.fork(), mnt, key_file, env
    if runtime.mount_entry(mnt) is not None:
        arkerfs("umount", mnt, env=env)


def mount8(*args: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(["mount", *args], capture_output=True, text=True, env=env, timeout=60,
                          stdin=subprocess.DEVNULL)


def options_of(mnt: str) -> set[str]:
    done = subprocess.run(["findmnt", "-n", "-o", "OPTIONS", mnt], capture_output=True, text=True, check=True)
    return set(done.stdout.strip().split(","))


def test_mount_t_fuse_arkerfs_with_options(server, api, fs):
    vm, mnt, key_file, env = fs
    api.write_file(vm, "/home/user/hello.txt", b"hi")
    done = mount8("-t", "fuse.arkerfs", vm, mnt, "-o",
                  f"ro,cache_ttl=10,api_key_file={key_file},base_url={server.base_url},nosuid", env=env)
    assert done.returncode == 0, done.stderr
    assert runtime.mount_entry(mnt) == (f"arkerfs:{vm}", "fuse.arkerfs")
    assert {"ro", "nosuid"} <= options_of(mnt)
    with open(os.path.join(mnt, "hello.txt")) as f:
        assert f.read() == "hi"
    with pytest.raises(OSError) as refused:
        open(os.path.join(mnt, "new.txt"), "w")
    assert refused.value.errno == errno.EROFS
    done = arkerfs("umount", mnt, env=env)
    assert done.returncode == 0, done.stderr
    assert runtime.mount_entry(mnt) is None


@pytest.mark.parametrize("mode", ["write_back", "write_through"])
def test_fstab_line(server, api, fs, workdir, mode):
    vm, mnt, key_file, env = fs
    fstab = os.path.join(workdir, "fstab")
    with open(fstab, "w") as f:
        f.write("# a comment line\n")
        f.write(f"{vm} {mnt} fuse.arkerfs noauto,_netdev,nofail,x-systemd.automount,comment=test,{mode},"
                f"api_key_file={key_file},base_url={server.base_url},allow_other,noexec 0 0\n")
    done = mount8("-T", fstab, mnt, env=env)
    assert done.returncode == 0, done.stderr
    assert runtime.mount_entry(mnt) == (f"arkerfs:{vm}", "fuse.arkerfs")
    assert {"rw", "noexec", "allow_other"} <= options_of(mnt)
    with open(os.path.join(mnt, "from-fstab.txt"), "w") as f:
        f.write("written")
    daemon = _state(env, mnt)
    done = arkerfs("status", mnt, "--json", env=env)
    assert json.loads(done.stdout)["mode"] == mode.replace("_", "-"), done.stderr
    # umount(8) works too: the daemon pushes what is pending (write-back: the journal) and exits.
    done = subprocess.run(["umount", mnt], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert runtime.mount_entry(mnt) is None
    deadline = time.monotonic() + 30
    while runtime.daemon_alive(daemon):
        assert time.monotonic() < deadline, "the daemon did not exit after umount(8)"
        time.sleep(0.05)
    assert api.read_file(vm, "/home/user/from-fstab.txt") == b"written"


def test_key_from_the_environment_and_base_url_from_the_environment(server, api, fs):
    vm, mnt, _, env = fs
    env = env | {"ARKER_API_KEY": server.api_key, "ARKER_BASE_URL": server.base_url}
    done = mount8("-t", "fuse.arkerfs", vm, mnt, env=env)
    assert done.returncode == 0, done.stderr
    try:
        assert runtime.mount_entry(mnt) == (f"arkerfs:{vm}", "fuse.arkerfs")
        state = _state(env, mnt)
        assert server.api_key not in open(f"/proc/{state.pid}/cmdline").read()
    finally:
        assert arkerfs("umount", mnt, env=env).returncode == 0


def _state(env: dict, mnt: str) -> runtime.MountState:
    path = os.path.join(env["XDG_RUNTIME_DIR"], "arkerfs", f"{runtime.mount_key(mnt)}.json")
    with open(path) as f:
        return runtime.MountState(**json.load(f))


@pytest.mark.parametrize("options,needle", [
    ("bogus", "unknown mount option 'bogus'"),
    ("uid=1000", "unknown mount option 'uid=1000'"),
    ("cache_ttl", "mount option 'cache_ttl' needs a value"),
])
def test_unknown_options_are_refused(server, fs, options, needle):
    vm, mnt, key_file, env = fs
    done = mount8("-t", "fuse.arkerfs", vm, mnt, "-o", f"api_key_file={key_file},{options}", env=env)
    assert done.returncode == exitcodes.MOUNT8_USAGE, (done.returncode, done.stderr)  # mount(8)'s "incorrect invocation"
    assert needle in done.stderr
    assert runtime.mount_entry(mnt) is None


def test_sloppy_ignores_and_fake_mounts_nothing(server, fs):
    vm, mnt, key_file, env = fs
    done = subprocess.run([VENV_HELPER, vm, mnt, "-f", "-v", "-s", "-o", f"bogus,api_key_file={key_file},ro"],
                          capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "ignoring unknown option 'bogus'" in done.stderr
    assert f"arkerfs mount --api-key-file {key_file} --read-only -- {vm} {mnt}" in done.stderr
    assert runtime.mount_entry(mnt) is None


def test_mount_failure_is_reported_by_mount8(server, fs):
    _, mnt, key_file, env = fs
    done = mount8("-t", "fuse.arkerfs", "no-such-vm", mnt, "-o", f"api_key_file={key_file},base_url={server.base_url}",
                  env=env)
    assert done.returncode == exitcodes.MOUNT8_FAILURE, (done.returncode, done.stderr)  # mount(8)'s "mount failure"
    assert "no VM is named 'no-such-vm'" in done.stderr
    assert runtime.mount_entry(mnt) is None


def test_every_freshness_option_has_its_fstab_name():
    from arkerfs.mount.fstab import translate

    args, ignored = translate(["cache_ttl=5", "watch_ttl=120", "no_watch"])
    assert args == ["--cache-ttl", "5", "--watch-ttl", "120", "--no-watch"] and ignored == []
