"""Absolute symlinks planted in the VM, seen through a real mount (``--transform-symlinks``, on by
default): a target inside /home/user reads as a relative link into the mount, so following it
reaches the VM's file; any other absolute target is shown as it is (and, followed, reaches the
LOCAL file: documented in docs/MOUNT.md). With the option off every target is shown raw."""

from __future__ import annotations

import os
import subprocess

import pytest

from tests.conftest import WRITE_MODES
from tests.mountutil import mounted

PLANT = ("cd /home/user && echo vmdata > x && mkdir -p d/e && echo deep > d/e/f"
         " && ln -s /home/user/x hx && ln -s /home/user/x d/hx && ln -s /home/user/d/e/f d/e/hf"
         " && ln -s /home/user/d/e/f d/hf && ln -s /home/user home && ln -s /home/user//d/./ d/e/up"
         " && ln -s /etc/passwd pw && ln -s /home/username/x other && ln -s x rel"
         " && ln -s /home/user/../../etc/passwd esc")

RAW = {"hx": "/home/user/x", "d/hx": "/home/user/x", "d/e/hf": "/home/user/d/e/f", "d/hf": "/home/user/d/e/f",
       "home": "/home/user", "d/e/up": "/home/user//d/./", "pw": "/etc/passwd",
       "other": "/home/username/x", "rel": "x", "esc": "/home/user/../../etc/passwd"}


@pytest.fixture(scope="module")
def planted(server):
    """A VM holding the links above (planted before any mount, so no cache hides them)."""
    from tests.mountutil import Api

    api = Api(server)
    vm_id = api.fork()
    api.sh(vm_id, PLANT)
    return vm_id


def read(path) -> bytes:
    with open(path, "rb") as f:
        return f.read()


@pytest.mark.parametrize("mode", list(WRITE_MODES))
def test_links_into_the_home_read_as_links_into_the_mount(server, api, planted, mode):
    with mounted(server, *WRITE_MODES[mode], vm_id=planted) as m:
        shown = {name: os.readlink(m.p(name)) for name in RAW}
        assert shown == {"hx": "x", "d/hx": "../x", "d/e/hf": "f", "d/hf": "e/f", "home": ".",
                         "d/e/up": "../", "pw": "/etc/passwd", "other": "/home/username/x", "rel": "x",
                         "esc": "/home/user/../../etc/passwd"}  # climbs out of the home: as it is
        for name, target in shown.items():  # a link's size is the length of what readlink returns
            assert os.lstat(m.p(name)).st_size == len(target.encode()), name
        # following them stays in the mount: cat reads the VM's file
        cat = subprocess.run(["cat", m.p("hx"), m.p("d/hx"), m.p("d/hf"), m.p("home/d/e/up/hf")],
                             capture_output=True, timeout=60)
        assert cat.returncode == 0 and cat.stdout == b"vmdata\nvmdata\ndeep\ndeep\n", cat.stderr
        assert "x" in os.listdir(m.p("home"))
        # a target outside the home is followed on this machine: the LOCAL /etc/passwd
        assert read(m.p("pw")) == read("/etc/passwd")
        # the VM's links are untouched
        assert api.sh(m.vm_id, "cd /home/user && readlink hx d/e/up") == "/home/user/x\n/home/user//d/./\n"


def test_ln_s_through_the_mount_stores_what_was_written(m, api):
    os.mkdir(m.p("d"))
    os.symlink("/home/user/x", m.p("d/abs"))
    os.symlink(m.p("x"), m.p("local"))  # the mount's own path: stored as written, meaningless in the VM
    assert api.sh(m.vm_id, "cd /home/user && readlink d/abs local") == f"/home/user/x\n{m.p('x')}\n"
    assert os.readlink(m.p("d/abs")) == "../x"
    assert os.readlink(m.p("local")) == m.p("x")


@pytest.mark.parametrize("option", [["--no-transform-symlinks"], ["-o", "no_transform_symlinks"]])
def test_without_transform_every_target_is_shown_raw(server, planted, option):
    with mounted(server, *option, vm_id=planted) as m:
        assert {name: os.readlink(m.p(name)) for name in RAW} == RAW
        assert os.lstat(m.p("hx")).st_size == len("/home/user/x")
