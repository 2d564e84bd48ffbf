"""Bad settings and arguments give one clear error naming the problem, never a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile

import pytest

from zray import exceptions as exc
from zray import node

CLI = [sys.executable, "-m", "zray_cli"]


def _env(**extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("ZRAY_ADDRESS", "RAY_ADDRESS")}
    env.update(extra)
    return env


@pytest.fixture
def root():
    with tempfile.TemporaryDirectory(prefix="zse-", dir="/tmp") as d:
        yield d


@pytest.mark.parametrize("var,value,expected", [
    ("ZRAY_NODE_DEATH_S", "5s", "a number (float)"),
    ("ZRAY_INLINE_MAX", "1.5", "an integer"),
    ("ZRAY_HEARTBEAT_S", "nan", "a number (float)"),
])
def test_a_bad_zray_setting_names_the_variable_and_its_type(root, var, value, expected):
    p = subprocess.run([sys.executable, "-c", "import zray; zray.init(num_cpus=1)"],
                       env=_env(**{var: value, "ZRAY_SESSION_ROOT": root}), text=True,
                       capture_output=True, timeout=120)
    assert p.returncode != 0
    last = p.stderr.strip().splitlines()[-1]
    assert "ConfigError" in last and var in last and expected in last, p.stderr
    assert repr(value) in last
    # The command line prints the error alone.
    p = subprocess.run([*CLI, "start", "--head", "--port", "0"],
                       env=_env(**{var: value, "ZRAY_SESSION_ROOT": root}), text=True,
                       capture_output=True, timeout=120)
    assert p.returncode == 2
    assert "Traceback" not in p.stderr and var in p.stderr and expected in p.stderr, p.stderr
    assert not os.listdir(root)


@pytest.mark.parametrize("args", [["--port", "99999"], ["--port=-5"],
                                  ["--port", "0", "--node-manager-port", "70000"]])
def test_start_with_a_port_out_of_range_says_so(root, args):
    p = subprocess.run([*CLI, "start", "--head", *args], env=_env(ZRAY_SESSION_ROOT=root),
                       text=True, capture_output=True, timeout=120)
    assert p.returncode == 1
    assert "Traceback" not in p.stderr and "OverflowError" not in p.stderr, p.stderr
    flag, value = (args[-2], args[-1]) if "=" not in args[-1] else args[-1].split("=")
    assert f"{flag} {value} is not a TCP port" in p.stderr and "0 to 65535" in p.stderr
    assert not os.listdir(root)


def test_a_session_root_too_long_for_unix_sockets_is_refused_at_start(root):
    long_root = os.path.join(root, "d" * 80)
    p = subprocess.run([sys.executable, "-c", "import zray; zray.init(num_cpus=1)"],
                       env=_env(ZRAY_SESSION_ROOT=long_root), text=True, capture_output=True,
                       timeout=120)
    assert p.returncode != 0
    last = p.stderr.strip().splitlines()[-1]
    assert "SessionDirError" in last and "107-byte limit" in last and long_root in last, last
    p = subprocess.run([*CLI, "start", "--head", "--port", "0"],
                       env=_env(ZRAY_SESSION_ROOT=long_root), text=True, capture_output=True,
                       timeout=120)
    assert p.returncode == 1
    assert "Traceback" not in p.stderr and "107-byte limit" in p.stderr, p.stderr
    assert not os.path.exists(long_root)  # refused before anything was made


def test_a_session_root_at_the_limit_still_works(root):
    # The longest root that fits: its sockets stay within the limit.
    name = f"session_2026-01-01_00-00-00_{os.getpid()}_abcdef01"
    room = node.UNIX_PATH_MAX - len(f"/{name}/sockets/") - node.SOCKET_NAME_MAX
    r = os.path.join(root, "e" * (room - len(root) - 4))  # 3 bytes of room for a longer pid
    code = ("import zray\n"
            "zray.init(num_cpus=1)\n"
            "@zray.remote\n"
            "def f():\n"
            "    return 7\n"
            "assert zray.get(f.remote(), timeout=60) == 7\n"
            "zray.shutdown()\n")
    p = subprocess.run([sys.executable, "-c", code], env=_env(ZRAY_SESSION_ROOT=r), text=True,
                       capture_output=True, timeout=180)
    assert p.returncode == 0, p.stderr


def test_owner_died_error_prints_a_packed_owner_address_readably():
    packed = [bytes.fromhex("ab" * 28), "ipc:///tmp/s/sockets/w-0123", "tcp://10.0.0.2:41000"]
    e = exc.OwnerDiedError("00ff" * 7, packed)
    text = str(e)
    assert "tcp://10.0.0.2:41000" in text and "abababab" in text, text
    assert "b'" not in text and "\\x" not in text, text
    # Still a plain picklable exception with the readable text.
    import pickle

    assert str(pickle.loads(pickle.dumps(e))) == text
    assert exc.describe_address(None) == "None"
