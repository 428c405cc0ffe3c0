"""The local server's presigned URLs name one version of one object.

A GET URL serves the file as it was when the URL was issued (like an object store), or refuses
with 412; it never serves bytes of a later version. A PUT URL takes at most the size it was
issued for.
"""

from __future__ import annotations

import os

import pytest

from arkerfs.server.control import ServerProcess
from conftest import TEST_INLINE_READ_LIMIT, TEST_KEY
from test_server_support import (  # noqa: F401  (api, http, vm are fixtures)
    api, assert_error, client, fork, http, home_of, run, sync, vm, write, write_entry,
)

SIZE = 300_000  # above the test server's 64 KiB inline limit: reads are presigned
OLD, NEW = os.urandom(SIZE), os.urandom(SIZE)


def _presign(api, vm_id: str, path: str) -> dict:
    r = sync(api, vm_id, {"op": "read", "path": path})
    assert r.status_code == 200, r.text
    body = r.json()
    assert "presigned_url" in body, body
    return body


def _replace(api, vm_id: str, how: str) -> None:
    if how == "run":  # what a program in the VM does: write a new file, rename it over the old
        write(api, vm_id, write_entry("/home/user/new", NEW))
        run(api, vm_id, "cd /home/user && mv new big")
    else:
        write(api, vm_id, write_entry("/home/user/big", NEW))


@pytest.mark.parametrize("how", ["run", "sync_write"])
def test_a_url_keeps_serving_the_version_it_was_issued_for(api, vm, http, how):
    write(api, vm, write_entry("/home/user/big", OLD))
    url = _presign(api, vm, "/home/user/big")["presigned_url"]
    first = http.get(url, headers={"range": "bytes=0-99999"})
    assert first.status_code == 206 and first.content == OLD[:100_000]
    assert first.headers["etag"] and first.headers["last-modified"]
    _replace(api, vm, how)
    rest = http.get(url, headers={"range": "bytes=100000-"})
    assert rest.status_code == 206, rest.text
    assert rest.content == OLD[100_000:]  # the old bytes, never the new ones
    assert rest.headers["etag"] == first.headers["etag"]
    assert rest.headers["content-range"] == f"bytes 100000-{SIZE - 1}/{SIZE}"
    assert http.get(url).content == OLD
    # A URL issued now names the new version, with another validator.
    fresh = http.get(_presign(api, vm, "/home/user/big")["presigned_url"], headers={"range": "bytes=0-9"})
    assert fresh.content == NEW[:10] and fresh.headers["etag"] != first.headers["etag"]


def test_a_file_changed_in_place_is_refused_with_412(api, vm, http):
    write(api, vm, write_entry("/home/user/big", OLD))
    url = _presign(api, vm, "/home/user/big")["presigned_url"]
    assert http.get(url, headers={"range": "bytes=0-9"}).content == OLD[:10]
    # Same inode, same size, other bytes: the snapshot cannot hold the old ones.
    run(api, vm, "printf XYZ | dd of=/home/user/big bs=1 seek=200000 conv=notrunc status=none")
    assert_error(http.get(url, headers={"range": "bytes=199990-200009"}), 412, "precondition_failed")
    assert_error(http.get(url), 412, "precondition_failed")


def test_after_a_restart_an_old_url_serves_only_an_unchanged_file(tmp_path, http):
    # No descriptor survives a restart: the path is opened again and checked against the URL.
    args = ["--inline-read-limit", str(TEST_INLINE_READ_LIMIT)]
    srv = ServerProcess(data_dir=tmp_path / "data", api_key=TEST_KEY, extra_args=args).start()
    try:
        with client(srv.base_url) as c:
            vm_id = fork(c)["vm_id"]
            write(c, vm_id, write_entry("/home/user/same", OLD), write_entry("/home/user/big", OLD))
            same = _presign(c, vm_id, "/home/user/same")["presigned_url"]
            big = _presign(c, vm_id, "/home/user/big")["presigned_url"]
        old_base = srv.base_url
        srv.stop()
        srv = ServerProcess(data_dir=tmp_path / "data", api_key=TEST_KEY, extra_args=args).start()
        same, big = same.replace(old_base, srv.base_url), big.replace(old_base, srv.base_url)
        with client(srv.base_url) as c:
            write(c, vm_id, write_entry("/home/user/big", NEW))
        assert http.get(same, headers={"range": "bytes=10-"}).content == OLD[10:]
        assert_error(http.get(big, headers={"range": "bytes=10-"}), 412, "precondition_failed")
    finally:
        srv.stop()


def test_snapshots_are_invisible_in_the_vm(api, vm, http, server):
    write(api, vm, write_entry("/home/user/big", OLD))
    url = _presign(api, vm, "/home/user/big")["presigned_url"]
    _replace(api, vm, "run")
    assert http.get(url, headers={"range": "bytes=0-9"}).content == OLD[:10]
    listing = run(api, vm, "cd /home/user && ls -A && stat -c %h big")["stdout"].split()
    assert listing == sorted(["README.md", "big", "hello.py", "projects"]) + ["1"]
    assert sorted(os.listdir(home_of(server, vm))) == sorted(["README.md", "big", "hello.py", "projects"])


def test_presigned_put_stops_at_the_declared_size(api, vm, http, server, control):
    [p] = write(api, vm, {"path": "/home/user/ten.bin", "size": 10, "presigned": True})

    def body():  # chunked: no content-length for the server to refuse up front
        for _ in range(100 * 16):
            yield b"B" * 65536

    staging = os.path.join(server.data_dir, "staging")
    before = set(os.listdir(staging))  # the session server's: other tests' unfinished uploads
    control.reset_stats()
    r = http.put(p["presigned_url"], content=body())
    assert_error(r, 413, "payload_too_large")
    assert r.headers["connection"] == "close"
    read = control.stats()["bytes_in"]
    assert read < 4 * 2**20, f"the server read {read} bytes of a body for a 10-byte URL"
    assert set(os.listdir(staging)) <= before  # nothing of it was kept
    # A declared length over the size is refused before any of the body is read.
    assert_error(http.put(p["presigned_url"], content=b"x" * 11), 413, "payload_too_large")
    # The URL still takes the right body.
    assert http.put(p["presigned_url"], content=b"0123456789").status_code == 200
    [done] = write(api, vm, {"path": "/home/user/ten.bin", "size": 10, "upload_id": p["upload_id"]})
    assert done["written"] is True, done
    assert (home_of(server, vm) / "ten.bin").read_bytes() == b"0123456789"
