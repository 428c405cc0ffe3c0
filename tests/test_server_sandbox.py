"""The local server's sandbox, attacked through its own API as VM code would (the suite runs as
root, as CI does): no capabilities, no way to remount or unmount, and nothing of the host but
the VM's home, a private /tmp and read-only system programs."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path

import pytest

from arkerfs.server import sandbox


def sh(api, vm_id: str, command: str):
    result = api.run(vm_id, command)
    return result.exit_code, result.stdout.decode(errors="replace"), result.stderr.decode(errors="replace")


@pytest.fixture(scope="module")
def vm_id(api):
    return api.fork()


def test_a_command_has_no_capabilities(api, vm_id):
    code, out, _ = sh(api, vm_id, "grep -E '^Cap(Eff|Prm|Bnd|Amb):' /proc/self/status")
    assert code == 0
    assert all(line.split()[1] == "0000000000000000" for line in out.splitlines()), out


def test_the_kernels_global_knobs_and_memory_are_out_of_reach(api, vm_id):
    before = Path("/proc/sys/kernel/printk").read_text()
    code, out, err = sh(api, vm_id, "echo 1 > /proc/sys/kernel/printk; echo printk=$?; "
                                    "head -c 16 /proc/kcore | wc -c; cat /proc/keys 2>/dev/null | wc -c")
    assert "printk=0" not in out and out.split()[1:] == ["0", "0"], (out, err)
    assert Path("/proc/sys/kernel/printk").read_text() == before


def test_no_nested_user_namespace_to_regain_capabilities(api, vm_id):
    code, out, err = sh(api, vm_id, "unshare -U -r true; echo status=$?")
    assert "status=0" not in out, (out, err)


def test_remounting_the_host_writable_fails_and_writes_nothing(api, vm_id):
    canary = f"/var/tmp/arkerfs-canary-{uuid.uuid4().hex}"
    code, out, err = sh(api, vm_id, f"mount -o remount,bind,rw / && echo x > {canary}; echo status=$?")
    try:
        assert "status=0" not in out and ("permission denied" in err.lower() or "superuser" in err.lower()), (out, err)
        assert not os.path.exists(canary)
    finally:
        if os.path.exists(canary):
            os.unlink(canary)


def test_unmounting_tmp_fails_and_exposes_nothing(api, vm_id, server):
    code, out, err = sh(api, vm_id, f"umount -l /tmp; echo umount=$?; test -e {server.data_dir} && echo SEEN")
    assert "umount=0" not in out and "SEEN" not in out, (out, err)


def test_the_host_beyond_the_vm_is_not_there(api, vm_id, server):
    other = api.fork()
    key_dir = tempfile.mkdtemp(prefix="arkerfs-keyfile-")
    key_file = os.path.join(key_dir, "key")
    Path(key_file).write_text("secret")
    try:
        private = [str(server.data_dir), str(server.data_dir / "vms" / other), "/root", "/run", "/var",
                   "/etc/shadow", "/etc/gshadow", "/opt", "/srv", "/mnt", key_file, "/work",
                   os.path.realpath(__file__)]
        script = "; ".join(f"test -e {p} && echo SEEN:{p}" for p in private)
        code, out, err = sh(api, vm_id, script + "; ls /home; echo done")
        assert "SEEN" not in out, out
        assert out.split()[-2:] == ["user", "done"]  # the host's /home is not there either
        # the presigned-URL secret and other VMs' files cannot be found by name either
        code, out, _ = sh(api, vm_id, "find / -xdev -name 'secret*' -path '*arkerfs*' 2>/dev/null | head -3")
        assert out.strip() == ""
    finally:
        shutil.rmtree(key_dir)


def test_programs_a_vm_needs_still_work(api, vm_id):
    code, out, err = sh(api, vm_id, "python3 -c 'print(6*7)' && cd ~ && git init -q repo && cd repo && "
                                    "echo hi > f && git add f && git -c user.email=a@b -c user.name=n commit -qm m "
                                    "&& git log --format=%s && tar cf /tmp/t.tar f && sed -n 1p f && whoami")
    assert code == 0, err
    assert out.split() == ["42", "m", "hi", "root"]


def test_files_written_by_sync_and_by_runs_stay_editable_by_both(api, vm_id):
    api.write_file(vm_id, "/home/user/from-sync", b"a")
    code, _, err = sh(api, vm_id, "cd ~ && chmod 600 from-sync && echo b >> from-sync && mv from-sync moved "
                                  "&& echo c > from-run && chmod 400 from-run")
    assert code == 0, err
    assert api.read_file(vm_id, "/home/user/moved") == b"ab\n"
    api.write_file(vm_id, "/home/user/from-run", b"replaced")  # over a 0400 file the run made
    code, out, err = sh(api, vm_id, "cd ~ && cat from-run && rm moved from-run && ls")
    assert code == 0 and "replaced" in out and "moved" not in out, err


@pytest.fixture
def public_tmp():
    """A temp dir an unprivileged user can reach (pytest's own are private to root)."""
    path = Path(tempfile.mkdtemp(prefix="arkerfs-sandbox-"))
    os.chmod(path, 0o755)
    yield path
    shutil.rmtree(path)


def test_the_sandbox_holds_for_an_ordinary_user_too(public_tmp):
    """The same sandbox, built by an unprivileged user (as `arkerfs serve` run as one would)."""
    tmp_path = public_tmp
    home = tmp_path / "home"
    home.mkdir()
    os.chown(home, 65534, 65534)
    etc = sandbox.synthesized_etc(tmp_path)
    argv = sandbox.argv(shutil.which("bwrap"), str(home), etc, [], [
        "/bin/bash", "-c", "grep CapEff /proc/self/status; mount -o remount,rw / && echo REMOUNTED; "
        "test -e /root && echo ROOT; echo ok > /home/user/f; python3 -c 'print(1)'"])
    done = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *argv],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["CapEff:", "0000000000000000", "1"], (done.stdout, done.stderr)
    assert (home / "f").read_text() == "ok\n"
