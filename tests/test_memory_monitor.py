"""The raylet's memory monitor on real processes, inside a memory cgroup of a small limit.

The driver (and so its GCS, raylet, zygote and workers) runs in a child memory cgroup made
for the test (cgroup v2 if its memory controller can be enabled here, else v1) with a
900 MiB limit, so a task that allocates without end never touches the machine's memory.
The threshold is lowered to 0.75 and the refresh to 50 ms, so the monitor acts well
before the kernel's OOM killer would (the test checks the kernel killed nothing).
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import textwrap
import time

import pytest

from zray.raylet import memory_monitor as mm

LIMIT = 900 << 20

DRIVER = textwrap.dedent("""
    import os, sys, time
    import zray
    from zray import exceptions as exc

    d = sys.argv[1]
    # Ray's knobs, through Ray's _system_config (the same as ZRAY_MEMORY_* in the env).
    zray.init(num_cpus=2, _system_config={"memory_usage_threshold": 0.75,
                                          "memory_monitor_refresh_ms": 50})

    def attempts(name):
        p = os.path.join(d, name)
        return len(open(p).read()) if os.path.exists(p) else 0

    @zray.remote(max_retries=2)
    def hog(path, first_only=False):
        with open(path, "a") as f:
            f.write("x")
        if first_only and len(open(path).read()) > 1:
            return "recovered"
        chunks = []
        for _ in range(500):  # 4 MiB every 20 ms, up to 2 GiB: far beyond the limit
            chunks.append(b"x" * (4 << 20))
            time.sleep(0.02)
        return "never"

    try:
        print("RESULT", zray.get(hog.remote(os.path.join(d, "a")), timeout=300), flush=True)
    except exc.OutOfMemoryError as e:
        print("OOM", attempts("a"), str(e).replace(chr(10), " "), flush=True)
    print("ONCE", zray.get(hog.options(max_retries=1).remote(os.path.join(d, "b"), True),
                           timeout=300), attempts("b"), flush=True)
    try:
        zray.get(hog.options(max_retries=0).remote(os.path.join(d, "c")), timeout=300)
    except exc.OutOfMemoryError:
        print("NORETRY", attempts("c"), flush=True)

    @zray.remote
    class Hog:
        def eat(self):
            chunks = []
            for _ in range(500):
                chunks.append(b"x" * (4 << 20))
                time.sleep(0.02)

        def ping(self):
            return "pong"

    try:
        zray.get(Hog.remote().eat.remote(), timeout=300)
    except exc.ActorDiedError as e:
        print("ACTOR", "running low on memory" in str(e), flush=True)
    b = Hog.options(max_restarts=1).remote()
    try:
        zray.get(b.eat.remote(), timeout=300)
    except exc.RayError as e:
        print("RESTARTING", type(e).__name__, flush=True)
    print("RESTARTED", zray.get(b.ping.remote(), timeout=60), flush=True)

    @zray.remote
    def small():
        return 5

    print("AFTER", zray.get(small.remote(), timeout=60), flush=True)
    zray.shutdown()
""")


def _own_cgroup(kind: str) -> str | None:
    mounts = mm._cgroup_mounts("/", "self")
    if kind not in mounts:
        return None
    base, mroot = mounts[kind]
    with open("/proc/self/cgroup") as f:
        for line in f.read().splitlines():
            hid, _, rest = line.partition(":")
            ctl, _, path = rest.partition(":")
            if (kind == "cgroup2" and hid == "0" and ctl == "") or \
                    (kind == "memory" and "memory" in ctl.split(",")):
                rel = os.path.relpath(path, mroot).lstrip("./") if mroot != "/" else path.lstrip("/")
                return os.path.join(base, rel)
    return None


def make_memory_cgroup(limit: int) -> tuple[str | None, str, str]:
    """(directory, limit file, why not) of a new child memory cgroup of ours."""
    name = "zray-oom-" + secrets.token_hex(4)
    why = []
    parent = _own_cgroup("cgroup2")
    if parent is not None:
        d = os.path.join(parent, name)
        try:
            os.mkdir(d)
            if not os.path.exists(os.path.join(d, "memory.max")):
                with open(os.path.join(parent, "cgroup.subtree_control"), "w") as f:
                    f.write("+memory")
            with open(os.path.join(d, "memory.max"), "w") as f:
                f.write(str(limit))
            return d, "memory.max", ""
        except OSError as e:
            why.append(f"cgroup v2 at {parent}: {e}")
            _rmdir(d)
    parent = _own_cgroup("memory")
    if parent is not None:
        d = os.path.join(parent, name)
        try:
            os.mkdir(d)
            with open(os.path.join(d, "memory.limit_in_bytes"), "w") as f:
                f.write(str(limit))
            return d, "memory.limit_in_bytes", ""
        except OSError as e:
            why.append(f"cgroup v1 memory at {parent}: {e}")
            _rmdir(d)
    return None, "", "; ".join(why) or "no memory cgroup hierarchy is mounted"


def _rmdir(d: str) -> None:
    try:
        os.rmdir(d)
    except OSError:
        pass


@pytest.fixture
def cgroup():
    d, limit_file, why = make_memory_cgroup(LIMIT)
    if d is None:
        pytest.skip(f"cannot make a memory cgroup here: {why}")
    yield d
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            os.rmdir(d)  # only possible once no process is left in it
            return
        except OSError:
            time.sleep(0.2)
    raise AssertionError(f"processes left in {d}: {open(os.path.join(d, 'cgroup.procs')).read()}")


def _kernel_oom_kills(d: str) -> int:
    for name, key in (("memory.events", "oom_kill"), ("memory.oom_control", "oom_kill")):
        try:
            with open(os.path.join(d, name)) as f:
                for line in f:
                    k, _, v = line.partition(" ")
                    if k == key:
                        return int(v)
        except OSError:
            continue
    return 0


@pytest.mark.slow
def test_tasks_and_actors_beyond_the_threshold_are_killed_and_retried_or_fail_with_oom(cgroup, tmp_path):
    script = tmp_path / "driver.py"
    script.write_text(DRIVER)
    env = {k: v for k, v in os.environ.items() if k not in ("ZRAY_ADDRESS", "RAY_ADDRESS")}
    # Into the cgroup first, then exec the driver: everything it starts is charged there.
    enter = f'echo $$ > {cgroup}/cgroup.procs && exec "$@"'
    p = subprocess.run(["sh", "-c", enter, "sh", sys.executable, str(script), str(tmp_path)],
                       env=env, text=True, capture_output=True, timeout=600, cwd=str(tmp_path))
    out = p.stdout
    assert p.returncode == 0, out + p.stderr
    lines = {line.split(" ", 1)[0]: line.split(" ", 1)[1] for line in out.splitlines()
             if " " in line}
    # Killed three times (one run and max_retries=2), then Ray's error with the numbers.
    assert lines["OOM"].startswith("3 "), out
    msg = lines["OOM"]
    assert "memory usage threshold of 0.75" in msg and "GB / 0.88GB" in msg, msg
    assert f"cgroup v{'2' if cgroup.startswith(_own_cgroup('cgroup2') or '?') else '1'}" in msg
    # Its last run had no retry left: no longer counted as retriable.
    assert "most recently scheduled task (none that can be retried" in msg
    assert lines["ONCE"] == "recovered 2"  # killed once, then ran to the end
    assert lines["NORETRY"] == "1"  # max_retries=0: not retried
    # An actor's worker too: ActorDiedError with the monitor's message, or a restart.
    assert lines["ACTOR"] == "True"
    assert lines["RESTARTING"] in ("ActorUnavailableError", "ActorDiedError")
    assert lines["RESTARTED"] == "pong"
    assert lines["AFTER"] == "5"  # the node is fine afterwards
    assert _kernel_oom_kills(cgroup) == 0  # the monitor acted, not the kernel
