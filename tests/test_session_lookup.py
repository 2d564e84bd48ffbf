"""address="auto" connects only to sessions of the calling user.

The session root is shared like /tmp (mode 1777), so another local user can plant a
session directory there, make its secret readable, and point ``session_latest`` at it.
The attacker here is a real second user (``nobody`` via setpriv) who plants such a
session whose GCS address is a TCP listener of the test: a driver that trusted the
session would connect to it (and a real attacker's GCS would then hand it their raylet).
"""

from __future__ import annotations

import os
import select
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap

import pytest

from zray import session_lookup

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv"),
                                reason="needs root and setpriv to act as a second user")

CLI = [sys.executable, "-m", "zray_cli"]
NOBODY = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]


def _env(root: str) -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in ("ZRAY_ADDRESS", "RAY_ADDRESS", "ZRAY_CLUSTER_SECRET")}
    env["ZRAY_SESSION_ROOT"] = root
    return env


@pytest.fixture
def shared_root():
    root = tempfile.mkdtemp(prefix="zsl-", dir="/tmp")
    os.chmod(root, 0o1777)  # as the default root is: shared by every user, sticky
    try:
        yield root
    finally:
        subprocess.run([*CLI, "stop", "--force"], env=_env(root), timeout=60,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def bait():
    """A TCP listener standing in for the attacker's GCS; .touched() says if anyone came."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(8)

    class Bait:
        port = s.getsockname()[1]

        @staticmethod
        def touched(wait: float = 0.5) -> bool:
            return bool(select.select([s], [], [], wait)[0])

    yield Bait
    s.close()


def plant_session(root: str, port: int, name: str = "session_2099-01-01_00-00-00_1_deadbeef",
                  link: bool = True) -> str:
    """As nobody: a session directory with a world-readable secret, and the latest link."""
    path = os.path.join(root, name)
    script = textwrap.dedent(f"""
        set -e
        mkdir -m 0755 {path} {path}/sockets {path}/logs
        head -c 32 /dev/urandom > {path}/secret
        chmod 0644 {path}/secret
        printf 127.0.0.1:{port} > {path}/gcs_address
    """)
    if link:
        script += f"ln -sfn {path} {root}/session_latest\n"
    subprocess.run([*NOBODY, "sh", "-c", script], check=True, timeout=30)
    assert os.stat(path).st_uid != 0
    return path


def init_auto(root: str) -> subprocess.CompletedProcess:
    code = textwrap.dedent("""
        import zray
        try:
            info = zray.init(address="auto")
        except ConnectionError as e:
            print("CONNECTION_ERROR", e)
        else:
            print("SESSION", info["session_dir"])
            @zray.remote
            def f():
                return 41 + 1
            print("RESULT", zray.get(f.remote(), timeout=60))
            zray.shutdown()
    """)
    return subprocess.run([sys.executable, "-c", code], env=_env(root), text=True,
                          capture_output=True, timeout=120)


def test_auto_never_takes_another_users_session(shared_root, bait):
    planted = plant_session(shared_root, bait.port)
    p = init_auto(shared_root)
    assert "CONNECTION_ERROR" in p.stdout, p.stdout + p.stderr
    assert "Could not find any running zray instance of user root" in p.stdout
    assert "not owned by this user" in p.stdout and shared_root in p.stdout
    assert not bait.touched(), "the driver contacted another user's GCS"
    os.environ["ZRAY_SESSION_ROOT"] = shared_root
    try:
        lk = session_lookup.find("auto")
    finally:
        del os.environ["ZRAY_SESSION_ROOT"]
    assert lk.session is None and planted in lk.foreign


def test_auto_finds_our_session_past_another_users_latest_link(shared_root, bait):
    plant_session(shared_root, bait.port)
    # Our own cluster: `zray start` takes the latest link over (we may: we are root).
    subprocess.run([*CLI, "start", "--head", "--port", "0"], env=_env(shared_root),
                   check=True, timeout=120, capture_output=True)
    link = os.path.join(shared_root, "session_latest")
    assert os.lstat(link).st_uid == 0
    ours = os.path.realpath(link)
    # The other user plants the link again (as they could before we started).
    os.unlink(link)
    subprocess.run([*NOBODY, "ln", "-sfn", os.path.join(shared_root, "session_2099-01-01_00-00-"
                                                        "00_1_deadbeef"), link],
                   check=True, timeout=30)
    assert os.lstat(link).st_uid != 0
    p = init_auto(shared_root)
    assert f"SESSION {ours}" in p.stdout, p.stdout + p.stderr
    assert "RESULT 42" in p.stdout
    assert not bait.touched()


def test_a_session_of_ours_that_others_can_enter_is_refused(shared_root, bait):
    # A session of our uid whose directory or secret is open to others is not trusted
    # (somebody may have swapped its secret); nor is one reached through a symlink.
    d = os.path.join(shared_root, "session_2099-01-01_00-00-00_2_0000beef")
    os.mkdir(d, 0o700)
    with open(os.path.join(d, "gcs_address"), "w") as f:
        f.write(f"127.0.0.1:{bait.port}")
    fd = os.open(os.path.join(d, "secret"), os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, os.urandom(32))
    os.close(fd)
    os.environ["ZRAY_SESSION_ROOT"] = shared_root
    try:
        assert session_lookup.find("auto").session == d  # sound: found
        os.chmod(os.path.join(d, "secret"), 0o644)
        assert session_lookup.find("auto").session is None
        os.chmod(os.path.join(d, "secret"), 0o600)
        os.chmod(d, 0o755)
        assert session_lookup.find("auto").session is None
        os.chmod(d, 0o700)
        os.rename(os.path.join(d, "secret"), os.path.join(d, "secret.real"))
        os.symlink(os.path.join(d, "secret.real"), os.path.join(d, "secret"))
        assert session_lookup.find("auto").session is None
        with pytest.raises(PermissionError, match="not a zray session of this user"):
            session_lookup.read_secret(d)
    finally:
        del os.environ["ZRAY_SESSION_ROOT"]
    p = init_auto(shared_root)
    assert "CONNECTION_ERROR" in p.stdout and "Passed over" not in p.stdout, p.stdout + p.stderr
    assert not bait.touched()


def test_zray_stop_leaves_another_users_session_alone(shared_root, bait):
    planted = plant_session(shared_root, bait.port)
    subprocess.run([*NOBODY, "sh", "-c", f"mkdir -m 0755 {planted}/pids && "
                    f"echo '{{\"pid\": 1, \"create_time\": 0, \"role\": \"gcs\"}}' "
                    f"> {planted}/pids/gcs-000000000000.json"], check=True, timeout=30)
    p = subprocess.run([*CLI, "stop"], env=_env(shared_root), text=True, capture_output=True,
                       timeout=120)
    assert p.returncode == 0, p.stdout + p.stderr
    for name in ("secret", "gcs_address", "pids/gcs-000000000000.json", "sockets"):
        assert os.path.lexists(os.path.join(planted, name)), name


START_AND_AUTO = textwrap.dedent("""
    import subprocess, sys, zray
    info = zray.init(num_cpus=1)
    print("SESSION", info["session_dir"], flush=True)
    code = ("import zray; i = zray.init(address='auto'); print(i['session_dir']); "
            "zray.shutdown()")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    print("AUTO", p.stdout.strip(), p.stderr.strip()[-300:], flush=True)
    zray.shutdown()
""")


def test_a_session_root_owned_by_another_user_is_not_used(tmp_path):
    # The owner of a directory can rename what is in it (even with the sticky bit), so it
    # could swap our session for its own: our sessions go to <root>-<uid> instead.
    base = tempfile.mkdtemp(prefix="zsr-", dir="/tmp")
    root = os.path.join(base, "shared")
    os.chmod(base, 0o777)
    try:
        subprocess.run([*NOBODY, "mkdir", "-m", "1777", root], check=True, timeout=30)
        os.chmod(base, 0o755)  # nobody may not make the fallback root first (next test)
        p = subprocess.run([sys.executable, "-c", START_AND_AUTO], env=_env(root), text=True,
                           capture_output=True, timeout=180)
        assert p.returncode == 0, p.stdout + p.stderr
        session = p.stdout.split("SESSION ", 1)[1].split()[0]
        assert os.path.dirname(session) == f"{root}-0"
        assert os.stat(f"{root}-0").st_mode & 0o777 == 0o700
        assert f"AUTO {session}" in p.stdout, p.stdout  # and address="auto" finds it there
        assert not os.listdir(root)
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_a_fallback_root_made_by_another_user_is_refused(tmp_path):
    base = tempfile.mkdtemp(prefix="zsr-", dir="/tmp")
    os.chmod(base, 0o777)
    root = os.path.join(base, "shared")
    try:
        subprocess.run([*NOBODY, "sh", "-c", f"mkdir -m 1777 {root} {root}-0"], check=True,
                       timeout=30)
        p = subprocess.run([sys.executable, "-c", "import zray; zray.init(num_cpus=1)"],
                           env=_env(root), text=True, capture_output=True, timeout=120)
        assert p.returncode != 0
        last = p.stderr.strip().splitlines()[-1]
        assert "SessionDirError" in last and f"{root}-0 belongs to another user" in last, last
        assert "nobody" in last
        assert not os.listdir(f"{root}-0") and not os.listdir(root)
    finally:
        shutil.rmtree(base, ignore_errors=True)
