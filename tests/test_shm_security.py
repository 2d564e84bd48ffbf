"""Another local user cannot make a node use, read or sweep files of theirs in /dev/shm.

Issue 9, items 1 and 9. /dev/shm is world-writable and the segment names of a
node are public (session and node ids are on the raylet's command line). The
attacker here is real: ``nobody``, through ``setpriv``, plants files while a
root driver runs: spares of the right sizes (0666), a symlink named as a spare
that points at a root file, a segment with a spilled object's name holding a
pickle that runs a command, a directory named like a node's. The driver's puts,
gets, task returns and restores must never land in or read from any of them,
and ``zray.shutdown()`` must clean up our files and leave theirs.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import stat
import struct
import subprocess
import sys
import tempfile
import textwrap

import numpy as np
import pytest
from backend import IS_RAY, wait_until

pytestmark = [
    pytest.mark.skipif(IS_RAY, reason="zray's /dev/shm layout"),
    pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv"),
                       reason="needs root and setpriv to act as a second user"),
]

MB = 1 << 20
NOBODY = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]

# Runs as nobody: carries out a list of plantings, prints what it could do.
PLANT = textwrap.dedent("""
    import json, os, sys
    out = []
    for a in json.loads(sys.argv[1]):
        try:
            if a["op"] == "file":
                fd = os.open(a["path"], os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o666)
                os.fchmod(fd, 0o666)
                os.ftruncate(fd, a.get("size", 0))
                os.pwrite(fd, bytes.fromhex(a.get("data", "")) or b"EVIL", 0)
                os.close(fd)
            elif a["op"] == "symlink":
                os.symlink(a["target"], a["path"])
            elif a["op"] == "dir":
                os.mkdir(a["path"])
                os.chmod(a["path"], 0o777)
            out.append("ok")
        except OSError as e:
            out.append(type(e).__name__)
    print(json.dumps(out))
""")


class _Evil:
    """Unpickling this runs a shell command: what the attacker's pickle stream does."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _segment(frame: bytes) -> bytes:
    """A well-formed zray segment (objstore/shm.py layout) holding one pickle frame."""
    off = 64
    return struct.pack("<4sIQ", b"ZRO1", 1, off + len(frame)) + struct.pack(
        "<QQ", off, len(frame)) + b"\0" * (off - 32) + frame


@pytest.fixture
def attacker():
    """plant(actions) -> results, run as nobody; removes every planted path afterwards."""
    d = tempfile.mkdtemp(prefix="zray-sec-", dir="/tmp")
    os.chmod(d, 0o755)  # nobody must read the script
    script = os.path.join(d, "plant.py")
    with open(script, "w") as f:
        f.write(PLANT)
    os.chmod(script, 0o644)
    planted: list[str] = []

    def plant(actions: list[dict]) -> list[str]:
        planted.extend(a["path"] for a in actions)
        p = subprocess.run([*NOBODY, sys.executable, script, json.dumps(actions)],
                           capture_output=True, text=True, timeout=60)
        assert p.returncode == 0, p.stderr
        return json.loads(p.stdout)

    plant.dir = d
    yield plant
    for path in planted:
        if os.path.islink(path) or os.path.isfile(path):
            os.unlink(path)
        elif os.path.isdir(path):
            shutil.rmtree(path)
    shutil.rmtree(d)


def _classes() -> list[int]:
    from zray.objstore import spare

    return sorted({spare.size_class(n) for n in range(8 * MB, 80 * MB, MB // 2)})


def _state(path: str) -> tuple:
    st = os.lstat(path)
    head = b""
    if stat.S_ISREG(st.st_mode):
        with open(path, "rb") as f:
            head = f.read(4)
    return st.st_ino, st.st_uid, st.st_size, head


def test_planted_spares_symlinks_and_names_are_never_used(attacker):
    import zray

    if zray.is_initialized():
        zray.shutdown()
    zray.init(num_cpus=1, object_store_memory=100 * MB)
    try:
        ctx = zray.get_runtime_context()
        session, node = ctx.session_dir, ctx.get_node_id()
        pat = f"zray-{os.path.basename(session.rstrip('/'))[-8:]}-{node[:8]}-"
        victim = os.path.join(attacker.dir, "victim")
        with open(victim, "wb") as f:
            f.write(b"VICTIM" * 100)
        marker = os.path.join(attacker.dir, "pwned")
        acts = [{"op": "file", "path": f"/dev/shm/{pat}spare-{c}-evil", "size": c}
                for c in _classes()]
        acts += [{"op": "symlink", "path": f"/dev/shm/{pat}spare-{c}-link", "target": victim}
                 for c in _classes()]
        acts += [{"op": "dir", "path": f"/dev/shm/{pat}evil"}]
        assert attacker(acts) == ["ok"] * len(acts)
        theirs = {a["path"]: _state(a["path"]) for a in acts}

        value = np.arange(12 * MB // 8, dtype=np.int64)
        ref = zray.put(value)

        @zray.remote
        def make(n):
            return np.full(n, 7, dtype=np.uint8)

        ret = make.remote(20 * MB)
        np.testing.assert_array_equal(zray.get(ref), value)
        assert zray.get(ret).sum() == 7 * 20 * MB
        for _ in range(3):  # put/free: recycled spares, claimed again
            r = zray.put(np.ones(30 * MB, np.uint8))
            assert zray.get(r).sum() == 30 * MB
            del r

        # Nothing of theirs was claimed, written, renamed or followed.
        for path, was in theirs.items():
            assert _state(path) == was, path
        with open(victim, "rb") as f:
            assert f.read() == b"VICTIM" * 100

        # A spilled object: a file planted under its (old, flat) name is never restored into.
        spilled = [zray.put(np.full(40 * MB, i, np.uint8)) for i in range(3)]
        spill_dir = os.path.join(session, "spill", node[:12])
        name = spilled[0].hex()
        assert wait_until(lambda: os.path.exists(os.path.join(spill_dir, name)), 30)
        evil = _segment(pickle.dumps(_Evil(marker), protocol=5)).hex()
        assert attacker([{"op": "file", "path": f"/dev/shm/{pat}{name}", "data": evil}]) == ["ok"]
        theirs[f"/dev/shm/{pat}{name}"] = _state(f"/dev/shm/{pat}{name}")
        assert zray.get(spilled[0]).sum() == 0
        assert not os.path.exists(marker), "the attacker's pickle ran as root"
        for path, was in theirs.items():
            assert _state(path) == was, path

        # The node's segments are in a private directory of ours: nobody gets in.
        mine = [n for n in os.listdir("/dev/shm") if n.startswith(pat) and n not in
                {p[len("/dev/shm/"):] for p in theirs}]
        assert len(mine) == 1, mine
        st = os.lstat("/dev/shm/" + mine[0])
        assert stat.S_ISDIR(st.st_mode) and st.st_uid == 0 and st.st_mode & 0o777 == 0o700
        got = attacker([{"op": "file", "path": f"/dev/shm/{mine[0]}/{name}", "data": evil},
                        {"op": "file", "path": f"/dev/shm/{mine[0]}/spare-{_classes()[3]}-x"}])
        assert got == ["PermissionError"] * 2
        for d, _, files in os.walk("/dev/shm/" + mine[0]):
            for f in files:
                s = os.lstat(os.path.join(d, f))
                assert s.st_uid == 0 and stat.S_ISREG(s.st_mode) and s.st_mode & 0o077 == 0, f
        del ref, ret, spilled
    finally:
        zray.shutdown()  # must not raise on their files
    # Ours are gone, theirs are left.
    assert not os.path.lexists("/dev/shm/" + mine[0])
    for path in theirs:
        assert os.path.lexists(path), f"swept another user's {path}"
    assert not os.path.exists(marker)


def test_checks_hold_in_a_directory_another_user_made(attacker):
    """Defence in depth: even where others can write, nothing of theirs is read or written."""
    from zray.objstore import shm

    tag = os.urandom(4).hex()
    d = f"zray-sectest-{tag}-d"  # named like a node directory, made by nobody first
    flat = f"zray-sectest-{tag}-"
    oid = os.urandom(20).hex()
    cls = _classes()[2]
    evil = _segment(pickle.dumps(_Evil(os.path.join(attacker.dir, "pwned")))).hex()
    acts = [{"op": "dir", "path": f"/dev/shm/{d}"},
            {"op": "file", "path": f"/dev/shm/{d}/{oid}", "data": evil},
            {"op": "symlink", "path": f"/dev/shm/{d}/link", "target": "/etc/hostname"},
            {"op": "file", "path": f"/dev/shm/{flat}{oid}", "data": evil},
            {"op": "symlink", "path": f"/dev/shm/{flat}link", "target": "/etc/hostname"},
            {"op": "file", "path": f"/dev/shm/{flat}spare-{cls}-evil", "size": cls}]
    assert attacker(acts) == ["ok"] * len(acts)
    before = {a["path"]: _state(a["path"]) for a in acts}
    with pytest.raises(shm.NotOursError):
        shm.check_dir(f"/dev/shm/{d}")
    with pytest.raises(shm.NotOursError):
        shm.read(f"{d}/{oid}")
    with pytest.raises(shm.NotOursError):
        shm.read(f"{flat}{oid}")
    with pytest.raises(shm.NotOursError):
        shm.read(f"{flat}link")
    with pytest.raises(shm.NotOursError):
        shm.create(f"{d}/{os.urandom(20).hex()}", [b"x"])
    # A large write with a planted spare of its size class: a new file of ours instead.
    name = flat + os.urandom(20).hex()
    data = np.ones(cls - MB, np.uint8)
    shm.create(name, [b"head", data])
    st = os.lstat(shm.segment_path(name))
    assert st.st_uid == 0 and st.st_mode & 0o777 == 0o600
    assert bytes(shm.read(name)[0]) == b"head"
    # Sweeps take ours and leave theirs, without an error.
    assert shm.remove_all(flat) == 1 and not os.path.exists(shm.segment_path(name))
    shm.remove_all(d + "/")
    for path, was in before.items():
        assert _state(path) == was, path
    assert not os.path.exists(os.path.join(attacker.dir, "pwned"))


SWEEP = textwrap.dedent("""
    import importlib.util, json, os, sys
    spec = importlib.util.spec_from_file_location("shm", sys.argv[1])
    shm = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(shm)  # stdlib only: no zray install needed as nobody
    flat, d = sys.argv[2], sys.argv[3]
    os.close(os.open(f"/dev/shm/{flat}mine", os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600))
    if hasattr(shm, "make_node_dir"):
        prefix = shm.make_node_dir(flat)
    else:  # the code before the fix: flat names
        prefix = flat
    os.close(os.open(f"/dev/shm/{prefix}seg", os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600))
    try:
        n = shm.remove_all(flat)
        print(json.dumps({"removed": n, "left": sorted(os.listdir("/dev/shm"))}))
    except OSError as e:
        print(json.dumps({"error": repr(e)}))
""")


def test_sweep_by_another_user_skips_files_not_theirs(attacker):
    """Issue 9: a file of another user matching the prefix made shutdown's sweep raise
    PermissionError and stop. Here the sweeping user is nobody and the stranger is root."""
    from zray.objstore import shm

    tag = os.urandom(4).hex()
    flat = f"zray-sweeptest-{tag}-"
    theirs = f"/dev/shm/{flat}planted"  # root's, in the sticky /dev/shm: nobody cannot unlink it
    with open(theirs, "wb") as f:
        f.write(b"x")
    script = os.path.join(attacker.dir, "sweep.py")
    with open(script, "w") as f:
        f.write(SWEEP)
    os.chmod(script, 0o644)
    try:
        p = subprocess.run([*NOBODY, sys.executable, script, shm.__file__, flat, "x"],
                           capture_output=True, text=True, timeout=60)
        assert p.returncode == 0, p.stderr
        r = json.loads(p.stdout)
        assert "error" not in r, r
        assert r["removed"] == 2  # its own flat file and the file in its directory
        left = [n for n in r["left"] if n.startswith(flat)]
        assert left == [f"{flat}planted"], left  # and its directory went too
    finally:
        for n in os.listdir("/dev/shm"):
            if n.startswith(flat):
                path = os.path.join("/dev/shm", n)
                shutil.rmtree(path) if os.path.isdir(path) else os.unlink(path)
