"""Ctrl-C at the driver interrupts the driver's wait, never its local cluster.

At a Python prompt (or on a Jupyter interrupt) SIGINT goes to the whole foreground process
group. The driver here runs in a process group of its own (start_new_session), and the test
signals that whole group, as a terminal does. The embedded GCS and raylet (and their
zygote and workers) must go on: the next call works. And they still die with the driver:
killed with SIGKILL, it takes every one of them down.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

from backend import pid_alive, wait_until

DRIVER = textwrap.dedent("""
    import json, os, sys, time
    import psutil
    import zray

    info = zray.init(num_cpus=2)

    @zray.remote
    def nap(s):
        time.sleep(s)
        return s

    @zray.remote
    def add(a, b):
        return a + b

    assert zray.get(add.remote(1, 2), timeout=60) == 3  # workers up
    ref = nap.remote(120)
    me = psutil.Process()
    print("WAITING", json.dumps({"session": info["session_dir"],
                                 "heads": [p.pid for p in me.children()],
                                 "tree": [p.pid for p in me.children(recursive=True)]}),
          flush=True)
    try:
        zray.get(ref, timeout=100)
        print("NOT_INTERRUPTED", flush=True)
    except KeyboardInterrupt:
        print("INTERRUPTED", flush=True)
    # The cluster is still there: new tasks run, and puts and gets work.
    print("AFTER", zray.get(add.remote(20, 22), timeout=60),
          zray.get(zray.put("x" * 10), timeout=60) == "x" * 10, flush=True)
    ref2 = nap.remote(120)
    print("TREE", json.dumps([p.pid for p in me.children(recursive=True)]), flush=True)
    zray.get(ref2)  # until the test kills us
""")


def _readline(p: subprocess.Popen, prefix: str, timeout: float = 90) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = p.stdout.readline()
        if not line:
            break
        if line.startswith(prefix):
            return line[len(prefix):].strip()
    raise AssertionError(f"the driver never printed {prefix!r} (exit {p.poll()}): "
                         f"{p.stderr.read() if p.poll() is not None else ''}")



def _living(pids) -> list[int]:
    return [p for p in pids if pid_alive(p)]

def test_ctrl_c_interrupts_the_wait_not_the_cluster_and_sigkill_still_takes_it_down(tmp_path):
    import json

    script = tmp_path / "driver.py"
    script.write_text(DRIVER)
    env = {k: v for k, v in os.environ.items() if k not in ("ZRAY_ADDRESS", "RAY_ADDRESS")}
    p = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, env=env, cwd=str(tmp_path),
                         start_new_session=True)
    try:
        first = json.loads(_readline(p, "WAITING"))
        tree = first["tree"]
        assert len(tree) >= 3, tree  # GCS, raylet, zygote/workers
        time.sleep(1.0)  # the driver is blocked in get
        os.killpg(p.pid, signal.SIGINT)  # as Ctrl-C does: the whole foreground group
        assert _readline(p, "INTERRUPTED", timeout=30) == ""
        assert _readline(p, "AFTER", timeout=90) == "42 True"
        # The GCS and raylet we saw before Ctrl-C are the ones still serving.
        assert len(first["heads"]) == 2 and [p for p in first["heads"] if pid_alive(p)] == first["heads"]
        tree = sorted(set(tree) | set(json.loads(_readline(p, "TREE"))))
        assert _living(tree)
        # A stray SIGINT sent straight to the GCS or raylet is ignored too.
        for pid in first["heads"]:
            os.kill(pid, signal.SIGINT)
        time.sleep(1.0)
        assert [p for p in first["heads"] if pid_alive(p)] == first["heads"]
        p.kill()  # SIGKILL: no cleanup in the driver
        p.wait(30)
        left = wait_until(lambda: not _living(tree), timeout=60)
        assert left, f"processes outlived the driver: {_living(tree)}"
        sock_dir = os.path.join(first["session"], "sockets")
        assert wait_until(lambda: not os.path.isdir(sock_dir) or not os.listdir(sock_dir),
                          timeout=30), os.listdir(sock_dir)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait(30)
