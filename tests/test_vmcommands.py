"""``arkerfs vms`` / ``fork`` / ``rm`` / ``--version`` / ``completion`` end to end, and exit statuses."""

from __future__ import annotations

import json
import os
import pty
import secrets
import subprocess
import sys
import tempfile

import pytest

from arkerfs import exitcodes
from tests.test_mount_cli import free_port

BIN = os.path.dirname(sys.executable)


def cli(*args: str, key: str | None = None, env: dict | None = None, stdin=subprocess.DEVNULL,
        timeout: float = 60) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("ARKER_")}
    if key is not None:
        full_env["ARKER_API_KEY"] = key
    full_env |= env or {}
    return subprocess.run([sys.executable, "-m", "arkerfs", *args], capture_output=True, text=True,
                          env=full_env, stdin=stdin, timeout=timeout)


@pytest.fixture
def on(server):
    """``on("vms", ...)``: a command against the session server with the key in the environment."""
    def call(*args: str, **kw) -> subprocess.CompletedProcess:
        kw.setdefault("key", server.api_key)
        return cli(*args, "--base-url", server.base_url, **kw)
    return call


def unique(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(4)}"


def test_version():
    done = cli("--version")
    assert (done.returncode, done.stdout.strip()) == (0, "arkerfs 0.1.0")


def test_vms_table_json_paging_and_sort(api, on):
    tag = unique("vmls")
    first, second = api.fork(f"{tag}-a"), api.fork(f"{tag}-b")
    table = on("vms", "--q", tag)
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split() == ["ID", "NAME", "REGION", "CREATED"]
    assert [line.split()[:2] for line in lines[1:]] == [[second, f"{tag}-b"], [first, f"{tag}-a"]]  # newest first
    listed = json.loads(on("vms", "--q", tag, "--sort=created_at", "--json").stdout)
    assert [(item["vm_id"], item["name"]) for item in listed["items"]] == [(first, f"{tag}-a"), (second, f"{tag}-b")]
    assert listed["total"] == 2
    page = on("vms", "--q", tag, "--limit", "1", "--offset", "1")
    assert page.stdout.splitlines()[1].split()[0] == first
    assert "(2-2 of 2; see --offset)" in page.stdout
    assert on("vms", "--q", unique("nothing")).stdout.splitlines()[1] == "(no VMs; 0 in all)"


def test_fork_prints_the_new_id_and_name_and_accepts_a_name_as_source(api, on):
    name = unique("forked")
    done = on("fork", "arkuntu", "--name", name)
    assert done.returncode == 0, done.stderr
    vm_id, shown = done.stdout.strip().split("\t")
    assert shown == name
    assert api.sh(vm_id, "cat README.md")  # a real fork of the template
    again = on("fork", name, "--json")  # by name: the fork-by-name route
    assert again.returncode == 0, again.stderr
    child = json.loads(again.stdout)
    assert child["name"] is None and child["vm_id"] != vm_id
    listed = json.loads(on("vms", "--q", name, "--json").stdout)
    assert [item["vm_id"] for item in listed["items"]] == [vm_id]


def test_rm_needs_yes_without_a_terminal(api, on):
    name = unique("doomed")
    vm_id = api.fork(name)
    refused = on("rm", name)
    assert refused.returncode == exitcodes.USAGE and "pass --yes" in refused.stderr
    assert api.sh(vm_id, "echo alive") == "alive\n"
    done = on("rm", "--yes", name)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"deleted {name} ({vm_id})"
    gone = on("rm", "--yes", vm_id)
    assert gone.returncode == exitcodes.NOT_FOUND, gone.stderr
    assert on("rm", "--yes", name).returncode == exitcodes.NOT_FOUND


def _rm_on_a_terminal(on, vm: str, answer: bytes) -> subprocess.CompletedProcess:
    controller, terminal = pty.openpty()
    try:
        os.write(controller, answer)  # typed ahead: read once the prompt is up
        return on("rm", vm, stdin=terminal)
    finally:
        os.close(controller)
        os.close(terminal)


def test_rm_asks_on_a_terminal(api, on):
    vm_id = api.fork()
    kept = _rm_on_a_terminal(on, vm_id, b"n\n")
    assert kept.returncode == exitcodes.FAILED
    assert f"delete VM {vm_id}? This cannot be undone. [y/N] " in kept.stderr and "not deleted" in kept.stderr
    assert api.sh(vm_id, "echo alive") == "alive\n"
    deleted = _rm_on_a_terminal(on, vm_id, b"y\n")
    assert deleted.returncode == 0, deleted.stderr
    assert on("rm", "--yes", vm_id).returncode == exitcodes.NOT_FOUND


def test_exit_statuses(server, on):
    key = server.api_key
    no_key = on("vms", key=None)
    assert no_key.returncode == exitcodes.AUTH and "no API key" in no_key.stderr
    wrong = on("vms", key="ark_wrong_key_000000000")
    assert wrong.returncode == exitcodes.AUTH
    assert on("rm", "--yes", unique("no-such-vm")).returncode == exitcodes.NOT_FOUND
    assert on("fork", unique("no-such-vm")).returncode == exitcodes.NOT_FOUND
    dead = cli("vms", "--base-url", f"http://127.0.0.1:{free_port()}", key=key)
    assert dead.returncode == exitcodes.UNREACHABLE and "cannot connect" in dead.stderr
    assert on("vms", "--limit", "0").returncode == exitcodes.USAGE
    assert on("vms", "--sort", "name").returncode == exitcodes.USAGE
    assert cli("no-such-command").returncode == exitcodes.USAGE
    for done in (no_key, wrong, dead):
        assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr
        assert key not in done.stderr + done.stdout


def test_key_file_must_be_private(server, on, tmp_path):
    key_file = tmp_path / "key"
    key_file.write_text(server.api_key)
    key_file.chmod(0o644)
    loose = on("vms", "--api-key-file", str(key_file), key=None)
    assert loose.returncode == exitcodes.AUTH and "chmod 600" in loose.stderr
    key_file.chmod(0o600)
    assert on("vms", "--api-key-file", str(key_file), key=None).returncode == 0


def test_local_embedded_server(tmp_path):
    env = {"XDG_DATA_HOME": str(tmp_path)}
    forked = cli("fork", "--local", "arkuntu", "--name", "mine", env=env, timeout=90)
    assert forked.returncode == 0, forked.stderr
    vm_id = forked.stdout.split("\t")[0]
    listed = cli("vms", "--local", "--json", env=env, timeout=90)
    assert [item["vm_id"] for item in json.loads(listed.stdout)["items"]] == [vm_id]
    assert cli("rm", "--local", "--yes", "mine", env=env, timeout=90).returncode == 0
    assert json.loads(cli("vms", "--local", "--json", env=env, timeout=90).stdout)["items"] == []


# -- shell completion -----------------------------------------------------------------------------
def _complete(line: str) -> list[str]:
    """What bash's completion of ``line`` offers, through the script ``arkerfs completion bash`` prints."""
    script = (
        'source <(arkerfs completion bash) || exit 9\n'
        f'COMP_LINE={line!r}; COMP_POINT=${{#COMP_LINE}}; read -ra COMP_WORDS <<< "$COMP_LINE"\n'
        'COMP_CWORD=$(( ${#COMP_WORDS[@]} - 1 )); [[ $COMP_LINE == *" " ]] && COMP_CWORD=${#COMP_WORDS[@]}\n'
        'COMP_TYPE=9; _python_argcomplete arkerfs; printf "%s\\n" "${COMPREPLY[@]}"\n'
    )
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}"}
    done = subprocess.run(["bash", "-c", script], capture_output=True, text=True, env=env, timeout=60,
                          cwd=tempfile.gettempdir())
    assert done.returncode == 0, done.stderr
    return [word.strip() for word in done.stdout.splitlines() if word.strip()]


def test_bash_completion_offers_commands_options_and_choices():
    assert _complete("arkerfs v") == ["vms"]
    assert _complete("arkerfs fo") == ["fork"]
    assert "--sort" in _complete("arkerfs vms --so")
    assert {"bash", "zsh"} <= set(_complete("arkerfs completion "))


@pytest.mark.parametrize("shell", ["bash", "zsh"])
def test_completion_scripts(shell):
    done = cli("completion", shell)
    assert done.returncode == 0
    assert "_python_argcomplete" in done.stdout and "arkerfs" in done.stdout
    check = subprocess.run(["bash", "-n"], input=done.stdout, capture_output=True, text=True)
    assert check.returncode == 0, check.stderr  # bash syntax (the zsh script is the same dual-use text)
