"""Security: sync and presigned URLs stay inside the VM's home, and URLs cannot be forged."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from arkerfs.protocol import new_ulid
from conftest import TEST_INLINE_READ_LIMIT
from test_server_support import (  # noqa: F401  (api, http, vm, private_server are fixtures)
    api, assert_error, client, http, fork, home_of, private_server, read_inline, run, sync, vm, write, write_entry,
)


@pytest.fixture
def outside(tmp_path) -> Path:
    """A host file no VM may read or change."""
    victim = tmp_path / "outside" / "victim.txt"
    victim.parent.mkdir()
    victim.write_bytes(b"host secret\n")
    return victim


def refused_both_ways(api, vm_id, path: str) -> None:
    """Reading and writing ``path`` are both refused as bad requests."""
    assert_error(sync(api, vm_id, {"op": "read", "path": path}), 400, "bad_request")
    [r] = write(api, vm_id, write_entry(path, b"pwned\n"))
    assert r["error"]["code"] == "bad_request" and r["written"] is False


def test_symlink_to_host_directory(api, vm, outside):
    run(api, vm, f"ln -s {outside.parent} out && ln -s /etc etc")
    refused_both_ways(api, vm, "/home/user/out/victim.txt")
    refused_both_ways(api, vm, "/home/user/out/new.txt")
    assert_error(sync(api, vm, {"op": "read", "path": "/home/user/etc/passwd"}), 400, "bad_request")
    assert outside.read_bytes() == b"host secret\n"
    assert sorted(os.listdir(outside.parent)) == ["victim.txt"]


def test_final_symlink_to_host_file(api, vm, outside):
    run(api, vm, f"ln -s {outside} victim && ln -s /etc/passwd pw")
    refused_both_ways(api, vm, "/home/user/victim")
    assert_error(sync(api, vm, {"op": "read", "path": "/home/user/pw"}), 400, "bad_request")
    assert outside.read_bytes() == b"host secret\n"


def test_dangling_symlink_out_of_home_is_not_created(api, vm, outside):
    target = outside.parent / "created-by-vm.txt"
    run(api, vm, f"ln -s {target} dangling")
    [r] = write(api, vm, write_entry("/home/user/dangling", b"x"))
    assert r["error"]["code"] == "bad_request"
    assert not target.exists()


def test_relative_escapes(api, vm, server):
    other = fork(api)["vm_id"]
    run(api, other, "echo mine > private.txt")
    # <data>/vms/<vm>/home/up -> ../../.. is <data>; as a VM path it climbs above /home/user.
    run(api, vm, f"ln -s ../../.. up && ln -s ../../{other}/home sib && mkdir -p d && ln -s ../../x d/esc")
    refused_both_ways(api, vm, f"/home/user/up/vms/{other}/home/private.txt")
    refused_both_ways(api, vm, "/home/user/sib/private.txt")
    refused_both_ways(api, vm, "/home/user/d/esc")
    assert read_inline(api, other, "/home/user/private.txt") == b"mine\n"
    api.delete(f"/api/v1/vms/{other}")


def test_symlink_into_another_vm_by_host_path(api, vm, server):
    other = fork(api)["vm_id"]
    run(api, other, "echo mine > private.txt")
    run(api, vm, f"ln -s {home_of(server, other)} other")
    refused_both_ways(api, vm, "/home/user/other/private.txt")
    assert read_inline(api, other, "/home/user/private.txt") == b"mine\n"
    api.delete(f"/api/v1/vms/{other}")


def test_symlinks_inside_home_are_followed(api, vm, server):
    run(api, vm, "mkdir -p real && echo data > real/file && ln -s /home/user/real abs && ln -s real rel "
                 "&& ln -s /home/user/real/file absfile && ln -s ../real/file real/../loop-free")
    assert read_inline(api, vm, "/home/user/abs/file") == b"data\n"
    assert read_inline(api, vm, "/home/user/rel/file") == b"data\n"
    assert read_inline(api, vm, "/home/user/absfile") == b"data\n"
    [r] = write(api, vm, write_entry("/home/user/absfile", b"through link\n"))
    assert r["written"] is True
    assert (home_of(server, vm) / "real/file").read_bytes() == b"through link\n"
    assert (home_of(server, vm) / "absfile").is_symlink()


def test_symlink_loop_is_refused(api, vm):
    run(api, vm, "ln -s a b && ln -s b a")
    assert_error(sync(api, vm, {"op": "read", "path": "/home/user/a"}), 400, "bad_request")


def test_presigned_get_never_follows_a_later_symlink(api, vm, server, outside, http):
    home = home_of(server, vm)
    (home / "big.bin").write_bytes(b"x" * (TEST_INLINE_READ_LIMIT + 1))
    url = sync(api, vm, {"op": "read", "path": "/home/user/big.bin"}).json()["presigned_url"]
    (home / "big.bin").unlink()
    (home / "big.bin").symlink_to(outside)
    r = http.get(url)
    # The URL serves the version it was issued for (held since the read; see
    # test_readver_server.py), never what the path points to now.
    assert r.status_code == 200 and r.content == b"x" * (TEST_INLINE_READ_LIMIT + 1)


def flip(token: str, index: int) -> str:
    swapped = "A" if token[index] != "A" else "B"
    return token[:index] + swapped + token[index + 1 :]


def test_tampered_tokens_are_403(api, vm, server, http):
    (home_of(server, vm) / "big.bin").write_bytes(b"y" * (TEST_INLINE_READ_LIMIT + 1))
    url = sync(api, vm, {"op": "read", "path": "/home/user/big.bin"}).json()["presigned_url"]
    base, token = url.rsplit("/", 1)
    payload_len = token.index(".")
    for index in (3, payload_len - 2, payload_len + 3, len(token) - 1):
        assert_error(http.get(f"{base}/{flip(token, index)}"), 403, "forbidden")
    # Another spelling of the same MAC bytes (base64's spare low bits in the last character)
    # is still a different token and must be refused.
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    last = alphabet.index(token[-1])
    respelled = token[:-1] + alphabet[last ^ 1]
    assert_error(http.get(f"{base}/{respelled}"), 403, "forbidden")
    for junk in ("x", "a.b", "a..b", token + "x", token.replace(".", "")):
        assert_error(http.get(f"{base}/{junk}"), 403, "forbidden")
    assert http.get(url).status_code == 200


def test_expiry(private_server, http):
    srv = private_server("--presign-ttl", "1", "--inline-read-limit", "10")
    with client(srv.base_url) as c:
        vm_id = fork(c)["vm_id"]
        read_url = sync(c, vm_id, {"op": "read", "path": "/home/user/README.md"}).json()["presigned_url"]
        [p] = write(c, vm_id, {"path": "/home/user/late.bin", "size": 3, "presigned": True})
        assert p["expires_in"] == 1
        [ok] = write(c, vm_id, {"path": "/home/user/early.bin", "size": 3, "presigned": True})
        assert http.put(ok["presigned_url"], content=b"abc").status_code == 200
        uid = new_ulid()
        write(c, vm_id, write_entry("/home/user/chunked", b"ab", uid, size=4))
        time.sleep(1.3)
        assert_error(http.get(read_url), 403, "forbidden")
        assert_error(http.put(p["presigned_url"], content=b"abc"), 403, "forbidden")
        [late] = write(c, vm_id, {"path": "/home/user/early.bin", "size": 3, "upload_id": ok["upload_id"]})
        assert late["error"]["code"] == "expired"
        [chunk] = write(c, vm_id, write_entry("/home/user/chunked", b"cd", uid, start=2, size=4))
        assert chunk["error"]["code"] == "expired"
        names = run(c, vm_id, "ls")["stdout"].split()
        assert "early.bin" not in names and "chunked" not in names

