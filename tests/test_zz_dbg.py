import os, subprocess, pytest
from tests.test_writeback_mount import pushed, make_tree, vm_tree, local_tree
from tests.mountutil import mounted
@pytest.mark.parametrize("i", range(6))
def test_dbg(server, api, control, tmp_path, i):
    src = make_tree(str(tmp_path / "src"))
    with mounted(server, "--write-back", "--cache-ttl", "600", "--debug") as m:
        subprocess.run(["rsync", "-a", f"{src}/", m.p("dst/")], check=True)
        pushed(m.path)
        got, want = vm_tree(api, m.vm_id, "dst"), local_tree(src)
        if got != want:
            log = open(m.log_path).read()
            open("/tmp/dbg-fail.log", "w").write(log)
            bad = [a for a, b in zip(got[0], want[0]) if a != b]
            print("MISMATCH", bad[:3], [b for a, b in zip(got[0], want[0]) if a != b][:3])
            assert False
