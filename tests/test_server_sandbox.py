"""What a `run` can reach: no capabilities, no mounts, only an allow-list of the host (issue 7).

These run against the real server as root, as CI does: the escapes they pin down (remounting /
read-write, unmounting /tmp to reach the data dir and its signing secret, reading /etc/shadow)
all worked when the sandbox was the whole host read-only with full capabilities.
"""

from __future__ import annotations

import os
import select
import shlex
import shutil
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import pytest

from arkerfs.server.control import READY_LINE
from conftest import TEST_KEY
from test_server_support import (  # noqa: F401  (api, vm, private_server are fixtures)
    api, client, fork, home_of, private_server, read_inline, run, vm, write, write_entry,
)


def visible(api, vm_id: str, path: str) -> bool:
    body = run(api, vm_id, f"test -e {shlex.quote(path)} && echo seen || echo absent")
    return body["stdout"] == "seen\n"


def test_runs_have_no_capabilities(api, vm):
    body = run(api, vm, "grep -E '^Cap(Inh|Prm|Eff|Bnd|Amb):' /proc/self/status")
    caps = dict(line.split(":\t") for line in body["stdout"].splitlines())
    assert caps["CapEff"] == "0000000000000000", body["stdout"]
    assert set(caps.values()) == {"0000000000000000"}


def test_cannot_remount_the_root_writable_or_write_the_host(api, vm):
    canary = Path("/var/tmp") / f"arkerfs-canary-{uuid.uuid4().hex}"
    try:
        body = run(api, vm, f"mount -o remount,bind,rw / && echo {canary.name} > {canary} && echo escaped")
        assert body["exit_code"] != 0 and "escaped" not in body["stdout"]
        assert body["stderr"]  # mount says why it cannot
        body = run(api, vm, f"echo x > {canary} && echo wrote")
        assert body["exit_code"] != 0 and "wrote" not in body["stdout"]
        assert not canary.exists()
    finally:
        canary.unlink(missing_ok=True)


def test_cannot_unmount_tmp_to_reach_the_data_dir(api, vm, server):
    body = run(api, vm, f"umount -l /tmp && ls {server.data_dir} && echo escaped")
    assert body["exit_code"] != 0 and "escaped" not in body["stdout"]
    assert not visible(api, vm, str(Path(server.data_dir) / "blob-secret"))


def test_cannot_create_a_user_namespace_to_mount_in(api, vm):
    body = run(api, vm, "unshare -rm sh -c 'mount -t tmpfs none /home/user && echo mounted'")
    assert body["exit_code"] != 0 and "mounted" not in body["stdout"]


@pytest.mark.parametrize("path", [
    "/root", "/run", "/etc/shadow", "/etc/ssl/private", "/var", "/opt", "/srv", "/mnt", "/sys",
])
def test_host_paths_outside_the_allow_list_are_absent(api, vm, path):
    assert os.path.lexists(path)  # so the check means something on this host
    assert not visible(api, vm, path)


def test_data_dir_other_vms_and_host_homes_are_absent(api, vm, server):
    other = fork(api)["vm_id"]
    try:
        run(api, other, "echo secret > /home/user/private.txt")
        for path in (server.data_dir, home_of(server, other), Path.cwd(), Path(sys.executable).parent):
            assert not visible(api, vm, str(path)), path
        assert run(api, vm, "ls -A /home")["stdout"] == "user\n"
    finally:
        api.delete(f"/api/v1/vms/{other}")


def test_a_key_file_outside_the_data_dir_is_unreachable(private_server):
    key_dir = Path(tempfile.mkdtemp(prefix="arkerfs-key-", dir="/var/tmp"))
    try:
        key_file = key_dir / "api-key"
        key_file.write_text(TEST_KEY + "\n")
        srv = private_server("--api-key-file", str(key_file))
        with client(srv.base_url) as c:
            vm_id = fork(c)["vm_id"]
            assert not visible(c, vm_id, str(key_dir))
            assert TEST_KEY not in run(c, vm_id, f"cat {key_file}")["stdout"]
    finally:
        shutil.rmtree(key_dir)


def test_etc_has_what_programs_need_and_no_secrets(api, vm):
    body = run(api, vm, "id -un; id -u; echo $USER $HOME; getent passwd user; ls /etc")
    name, uid, env, entry, *etc = body["stdout"].splitlines()
    assert (name, env) == ("user", "user /home/user")
    assert entry.startswith(f"user:x:{uid}:") and entry.endswith(":/home/user:/bin/bash")
    assert {"passwd", "group", "hosts", "ld.so.cache"} <= set(etc)
    assert not {"shadow", "gshadow", "sudoers", "machine-id", "subuid"} & set(etc)


def test_python_git_and_tools_work_inside(api, vm):
    script = (
        "set -e; python3 -c 'import json, ssl, sqlite3; print(json.dumps([6*7]))'; "
        "mkdir repo && cd repo && git init -q && echo hi > f && git add f && "
        "git -c user.name=t -c user.email=t@example.com commit -qm one && git log --format=%s; "
        "tar cf /tmp/a.tar f && tar tf /tmp/a.tar; find . -maxdepth 1 -name f -printf '%f\\n'; "
        "stat -c %s f; sed s/hi/ho/ f"
    )
    body = run(api, vm, script)
    assert body["exit_code"] == 0, body["stderr"]
    assert body["stdout"] == "[42]\none\nf\nf\n3\nho\n"


def test_runs_and_sync_writes_can_change_each_others_files(api, vm, server):
    write(api, vm, write_entry("/home/user/d/from-sync", b"sync\n"))
    body = run(api, vm, "cd d && echo run >> from-sync && chmod 600 from-sync && mv from-sync renamed && "
                        "touch -d @0 renamed && rm renamed && echo made > from-run && mkdir sub && ls")
    assert body["exit_code"] == 0, body["stderr"]
    assert body["stdout"] == "from-run\nsub\n"
    assert (home_of(server, vm) / "d" / "from-run").stat().st_uid == os.getuid()  # as the server user
    write(api, vm, write_entry("/home/user/d/from-run", b"by sync\n"), write_entry("/home/user/d/sub/x", b"x"))
    assert read_inline(api, vm, "/home/user/d/from-run") == b"by sync\n"
    assert run(api, vm, "rm -r d/sub d/from-run && ls -A d")["stdout"] == ""


def _serve_as_nobody(data_dir: Path) -> tuple[subprocess.Popen, str]:
    """`arkerfs serve` as uid/gid 65534 (an ordinary user), with a data dir it owns."""
    cmd = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
           sys.executable, "-m", "arkerfs", "serve", "--data-dir", str(data_dir), "--port", "0"]
    env = {"PATH": os.environ["PATH"], "ARKER_API_KEY": TEST_KEY, "HOME": str(data_dir)}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                            env=env, cwd=str(data_dir))
    buffered = b""
    while proc.poll() is None and select.select([proc.stdout], [], [], 30)[0]:
        buffered += os.read(proc.stdout.fileno(), 4096)
        if match := READY_LINE.search(buffered.decode(errors="replace")):
            return proc, match.group(1)
    proc.kill()
    raise AssertionError(f"unprivileged server did not start: {proc.stderr.read().decode(errors='replace')}")


def test_the_sandbox_holds_when_the_server_is_not_root():
    data = Path(tempfile.mkdtemp(prefix="arkerfs-nobody-", dir="/var/tmp"))
    os.chown(data, 65534, 65534)
    proc, base_url = _serve_as_nobody(data)
    try:
        with client(base_url) as c:
            vm_id = fork(c)["vm_id"]
            body = run(c, vm_id, "grep CapEff /proc/self/status; id -un; ls -A /home; "
                                 "test -e /var || test -e /run || test -e /root || echo hidden; "
                                 "echo from-run > f && head -c 5 hello.py")
            assert body["stdout"] == "CapEff:\t0000000000000000\nuser\nuser\nhidden\nprint", body["stderr"]
            write(c, vm_id, write_entry("/home/user/f", b"from sync\n"))
            assert run(c, vm_id, "echo more >> f && rm f && echo done")["stdout"] == "done\n"
    finally:
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(data)


def test_the_kernels_global_knobs_and_memory_are_out_of_reach(api, vm):
    """The run's uid maps to the server's (root here): /proc/sys and kcore must still be out of reach."""
    before = Path("/proc/sys/kernel/printk").read_text()
    body = run(api, vm, "echo 1 > /proc/sys/kernel/printk; echo printk=$?; "
                        "head -c 16 /proc/kcore 2>/dev/null | wc -c; cat /proc/keys 2>/dev/null | wc -c")
    out = body["stdout"]
    assert "printk=0" not in out and out.split()[1:] == ["0", "0"], out
    assert Path("/proc/sys/kernel/printk").read_text() == before
