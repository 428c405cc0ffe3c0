"""`sync` read and write: inline and presigned reads, the three write kinds, the ledger."""

from __future__ import annotations

import base64
import contextlib
import os
import stat
import threading
import time

import httpx
import pytest

from arkerfs.protocol import ARKUNTU_ID, new_ulid
from arkerfs.server.control import ServerProcess
from conftest import TEST_INLINE_READ_LIMIT
from test_server_support import (  # noqa: F401  (api, http, vm are fixtures)
    api, assert_error, client, http, home_of, read_inline, run, sync, vm, write, write_entry,
)

BIG = os.urandom(TEST_INLINE_READ_LIMIT + 12345)


def presigned_read(api, vm_id, path) -> dict:
    r = sync(api, vm_id, {"op": "read", "path": path})
    assert r.status_code == 200, r.text
    return r.json()


class TestRead:
    def test_inline_read(self, api, vm):
        write(api, vm, write_entry("/home/user/notes.txt", b"hello world\n"))
        body = sync(api, vm, {"op": "read", "path": "/home/user/notes.txt"}).json()
        assert body == {"ok": True, "op": "read", "path": "/home/user/notes.txt", "size": 12,
                        "content": base64.b64encode(b"hello world\n").decode(), "encoding": "base64"}

    def test_large_read_is_presigned_without_content_key(self, api, vm, server, http):
        (home_of(server, vm) / "big.bin").write_bytes(BIG)
        body = presigned_read(api, vm, "/home/user/big.bin")
        assert "content" not in body
        assert body["size"] == len(BIG) and body["method"] == "GET" and body["expires_in"] == 900
        assert body["presigned_url"].startswith(server.base_url + "/_blob/")
        r = http.get(body["presigned_url"])  # no authorization header
        assert r.status_code == 200 and r.content == BIG
        assert r.headers["accept-ranges"] == "bytes"

    @pytest.mark.parametrize("header,first,last", [("bytes=10-19", 10, 19), ("bytes=70000-", 70000, len(BIG) - 1),
                                                   ("bytes=-100", len(BIG) - 100, len(BIG) - 1),
                                                   ("bytes=5-99999999", 5, len(BIG) - 1)])
    def test_presigned_range(self, api, vm, server, header, first, last, http):
        (home_of(server, vm) / "big.bin").write_bytes(BIG)
        url = presigned_read(api, vm, "/home/user/big.bin")["presigned_url"]
        r = http.get(url, headers={"range": header})
        assert r.status_code == 206
        assert r.content == BIG[first : last + 1]
        assert r.headers["content-range"] == f"bytes {first}-{last}/{len(BIG)}"

    def test_unsatisfiable_range_is_416(self, api, vm, server, http):
        (home_of(server, vm) / "big.bin").write_bytes(BIG)
        url = presigned_read(api, vm, "/home/user/big.bin")["presigned_url"]
        r = http.get(url, headers={"range": f"bytes={len(BIG)}-"})
        assert r.status_code == 416 and r.headers["content-range"] == f"bytes */{len(BIG)}"

    def test_missing_file_is_404_with_path(self, api, vm):
        err = assert_error(sync(api, vm, {"op": "read", "path": "/home/user/missing.txt"}), 404, "not_found")
        assert err["message"] == "file not found: /home/user/missing.txt"

    def test_directory_and_fifo_are_400(self, api, vm):
        run(api, vm, "mkfifo /home/user/pipe")
        assert_error(sync(api, vm, {"op": "read", "path": "/home/user/projects"}), 400, "bad_request")
        assert_error(sync(api, vm, {"op": "read", "path": "/home/user/pipe"}), 400, "bad_request")

    @pytest.mark.parametrize("path", ["/home/user", "/home/user/", "home/user/x", "/home/user//x", "/home/user/./x",
                                      "/home/user/a/../x", "/etc/passwd", "/home/userx/a", 5])
    def test_bad_paths_are_400(self, api, vm, path):
        assert_error(sync(api, vm, {"op": "read", "path": path}), 400, "bad_request")

    def test_over_max_size_is_413(self, api, vm, server):
        with open(home_of(server, vm) / "huge.bin", "wb") as f:
            f.truncate(104_857_601)  # sparse
        assert_error(sync(api, vm, {"op": "read", "path": "/home/user/huge.bin"}), 413, "payload_too_large")

    def test_unknown_op_is_400(self, api, vm):
        assert_error(sync(api, vm, {"op": "frobnicate"}), 400, "bad_request")
        assert_error(sync(api, vm, {"op": "write", "writes": []}), 400, "bad_request")


class TestWrite:
    def test_fast_path_creates_parents_and_modes(self, api, vm, server):
        [res] = write(api, vm, write_entry("/home/user/new/deep/file.txt", b"hello world\n"))
        assert res == {"path": "/home/user/new/deep/file.txt", "size": 12, "received_bytes": 12,
                       "ranges": [{"start": 0, "end": 12}], "complete": True, "written": True, "error": None}
        target = home_of(server, vm) / "new/deep/file.txt"
        assert target.read_bytes() == b"hello world\n"
        assert stat.S_IMODE(target.stat().st_mode) == 0o644
        assert stat.S_IMODE(target.parent.stat().st_mode) == 0o755

    def test_replace_keeps_mode_and_leaves_no_temp_files(self, api, vm, server):
        run(api, vm, "printf old > script.sh && chmod 750 script.sh")
        write(api, vm, write_entry("/home/user/script.sh", b"#!/bin/sh\necho new\n"))
        target = home_of(server, vm) / "script.sh"
        assert stat.S_IMODE(target.stat().st_mode) == 0o750
        assert run(api, vm, "./script.sh; ls -A | grep -c arkerfs-tmp")["stdout"] == "new\n0\n"

    def test_several_entries_in_order_with_per_entry_errors(self, api, vm):
        results = write(api, vm, write_entry("/home/user/one", b"1"), write_entry("/etc/hosts", b"x"),
                        write_entry("/home/user/two", b"22"), {"path": "/home/user/three", "size": 3})
        assert [r["path"] for r in results] == ["/home/user/one", "/etc/hosts", "/home/user/two", "/home/user/three"]
        assert results[0]["written"] and results[2]["written"]
        assert results[1]["error"]["code"] == "bad_request" and results[1]["written"] is False
        assert results[3]["error"]["code"] == "bad_request"
        assert read_inline(api, vm, "/home/user/two") == b"22"

    def test_multi_chunk_ledger_out_of_order_and_replayed(self, api, vm):
        data = os.urandom(3000)
        uid = new_ulid()
        path = "/home/user/chunked.bin"
        [r] = write(api, vm, write_entry(path, data[2000:], uid, start=2000, size=3000))
        assert (r["received_bytes"], r["complete"], r["written"]) == (1000, False, False)
        assert r["ranges"] == [{"start": 2000, "end": 3000}]
        [r] = write(api, vm, write_entry(path, data[:1000], uid, start=0, size=3000))
        assert r["ranges"] == [{"start": 0, "end": 1000}, {"start": 2000, "end": 3000}]
        [r] = write(api, vm, write_entry(path, data[:1000], uid, start=0, size=3000))  # replay
        assert r["received_bytes"] == 2000 and r["error"] is None
        assert_error(sync(api, vm, {"op": "read", "path": path}), 404, "not_found")  # nothing visible yet
        [r] = write(api, vm, write_entry(path, data[1000:2000], uid, start=1000, size=3000))
        assert r["ranges"] == [{"start": 0, "end": 3000}] and r["complete"] and r["written"]
        assert read_inline(api, vm, path) == data
        [r] = write(api, vm, write_entry(path, data[1000:2000], uid, start=1000, size=3000))  # replay after done
        assert r["written"] is True and r["error"] is None

    def test_same_upload_id_other_path_or_size_is_conflict(self, api, vm):
        uid = new_ulid()
        write(api, vm, write_entry("/home/user/a", b"abc", uid, size=6))
        [r] = write(api, vm, write_entry("/home/user/b", b"def", uid, start=3, size=6))
        assert r["error"]["code"] == "conflict"
        [r] = write(api, vm, write_entry("/home/user/a", b"def", uid, start=3, size=7))
        assert r["error"]["code"] == "conflict"

    @pytest.mark.parametrize("entry,code", [
        ({"content": "!!!notbase64", "start": 0, "end": 3, "size": 3}, "bad_request"),
        ({"content": base64.b64encode(b"abcd").decode(), "start": 0, "end": 3, "size": 3}, "bad_request"),
        ({"content": base64.b64encode(b"abc").decode(), "start": 2, "end": 5, "size": 4}, "bad_request"),
        ({"content": "", "start": 0, "end": 0, "size": 104_857_601}, "payload_too_large"),
        ({"presigned": True, "size": -1}, "bad_request"),
    ])
    def test_bad_chunks_are_per_entry_errors(self, api, vm, entry, code):
        [r] = write(api, vm, {"path": "/home/user/x", "upload_id": new_ulid(), **entry})
        assert r["error"]["code"] == code and r["written"] is False

    def test_zero_length_chunk_creates_empty_file(self, api, vm, server):
        run(api, vm, "echo previous > empty.txt")
        [r] = write(api, vm, write_entry("/home/user/empty.txt", b""))
        assert r["complete"] and r["written"] and r["error"] is None
        assert (home_of(server, vm) / "empty.txt").read_bytes() == b""

    def test_write_onto_directory_or_below_a_file_is_per_entry_error(self, api, vm):
        [r] = write(api, vm, write_entry("/home/user/projects", b"x"))
        assert r["error"]["code"] == "bad_request"
        [r] = write(api, vm, write_entry("/home/user/hello.py/inside", b"x"))
        assert r["error"]["code"] == "bad_request"

    def test_overlong_names_are_rejected(self, api, vm):
        [r] = write(api, vm, write_entry("/home/user/" + "n" * 256, b"x"))
        assert r["error"]["code"] == "bad_request"
        assert_error(sync(api, vm, {"op": "read", "path": "/home/user/" + "d/" * 2100 + "f"}), 400, "bad_request")

    def test_sync_body_over_8_mib_is_413(self, api, vm):
        content = base64.b64encode(b"\0" * (6 * 1024 * 1024 + 1)).decode()
        entry = {"path": "/home/user/big", "size": 1, "upload_id": new_ulid(), "start": 0, "end": 1, "content": content}
        assert_error(sync(api, vm, {"op": "write", "writes": [entry]}), 413, "payload_too_large")
        assert_error(sync(api, vm, {"op": "read", "path": "/home/user/big"}), 404, "not_found")


class TestPresignedWrite:
    def presign(self, api, vm, path, size) -> dict:
        [r] = write(api, vm, {"path": path, "size": size, "presigned": True})
        assert r["error"] is None and r["method"] == "PUT" and r["expires_in"] == 900
        assert (r["complete"], r["written"]) == (False, False)
        assert r["upload_id"]
        return r

    def test_presign_put_commit_and_idempotent_commit(self, api, vm, server, http):
        data = os.urandom(200_000)
        path = "/home/user/up/big.bin"
        p = self.presign(api, vm, path, len(data))
        # Python 0.1.1 sends this content type; the server must ignore it.
        r = http.put(p["presigned_url"], content=data, headers={"content-type": "application/x-www-form-urlencoded"})
        assert 200 <= r.status_code < 300
        assert not (home_of(server, vm) / "up/big.bin").exists()  # only the commit installs it
        commit = {"path": path, "size": len(data), "upload_id": p["upload_id"]}
        [c] = write(api, vm, commit)
        assert c == {"path": path, "size": len(data), "complete": True, "written": True, "error": None}
        assert (home_of(server, vm) / "up/big.bin").read_bytes() == data
        [again] = write(api, vm, commit)
        assert again["error"] is None and again["written"] is True

    def test_commit_before_put_is_not_found(self, api, vm):
        p = self.presign(api, vm, "/home/user/never.bin", 10)
        [c] = write(api, vm, {"path": "/home/user/never.bin", "size": 10, "upload_id": p["upload_id"]})
        assert c["error"]["code"] == "not_found" and c["written"] is False
        [c] = write(api, vm, {"path": "/home/user/never.bin", "size": 10, "upload_id": "upl_unknown"})
        assert c["error"]["code"] == "not_found"

    def test_length_mismatch_is_bad_request(self, api, vm, server, http):
        p = self.presign(api, vm, "/home/user/short.bin", 100)
        assert http.put(p["presigned_url"], content=b"x" * 99).status_code == 200
        [c] = write(api, vm, {"path": "/home/user/short.bin", "size": 100, "upload_id": p["upload_id"]})
        assert c["error"]["code"] == "bad_request"
        assert not (home_of(server, vm) / "short.bin").exists()

    def test_put_over_max_size_is_413(self, api, vm, http):
        p = self.presign(api, vm, "/home/user/huge.bin", 104_857_600)
        assert_error(http.put(p["presigned_url"], content=bytes(104_857_601)), 413, "payload_too_large")
        [c] = write(api, vm, {"path": "/home/user/huge.bin", "size": 104_857_600, "upload_id": p["upload_id"]})
        assert c["error"]["code"] == "not_found"

    def test_put_token_cannot_read_and_get_token_cannot_write(self, api, vm, server, http):
        p = self.presign(api, vm, "/home/user/w.bin", 3)
        assert_error(http.get(p["presigned_url"]), 403, "forbidden")
        (home_of(server, vm) / "big.bin").write_bytes(BIG)
        url = presigned_read(api, vm, "/home/user/big.bin")["presigned_url"]
        assert_error(http.put(url, content=b"abc"), 403, "forbidden")
        assert (home_of(server, vm) / "big.bin").read_bytes() == BIG


def test_kill_9_mid_upload_never_leaves_a_partial_file(tmp_path, http):
    srv = ServerProcess(data_dir=tmp_path / "data", api_key="k").start()
    with client(srv.base_url, key="k") as c:
        vm_id = c.post(f"/api/v1/vms/{ARKUNTU_ID}/fork", json={}).json()["vm_id"]
        write(c, vm_id, write_entry("/home/user/target.bin", b"old content"))
        write(c, vm_id, write_entry("/home/user/target.bin", b"A" * 1000, size=3000))
        [p] = write(c, vm_id, {"path": "/home/user/target.bin", "size": 50_000_000, "presigned": True})
        put_started = threading.Event()

        def body():
            for _ in range(200):
                put_started.set()
                yield b"B" * 100_000
                time.sleep(0.01)

        def put():
            with contextlib.suppress(httpx.HTTPError):
                http.put(p["presigned_url"], content=body(), timeout=30)

        uploader = threading.Thread(target=put)
        uploader.start()
        put_started.wait(10)
        time.sleep(0.5)
        srv.kill()
        uploader.join(30)
    srv = ServerProcess(data_dir=tmp_path / "data", api_key="k").start()
    try:
        with client(srv.base_url, key="k") as c:
            assert read_inline(c, vm_id, "/home/user/target.bin") == b"old content"
            assert run(c, vm_id, "ls -A")["stdout"].split() == sorted(["README.md", "hello.py", "projects", "target.bin"])
    finally:
        srv.stop()
