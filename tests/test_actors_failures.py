"""Actor failures on one node: crashes, restarts, retries, fate sharing, detached actors.

Runs against zray by default, against Ray with ZRAY_TEST_BACKEND=ray (backend.py);
the tests that start their own long-lived cluster run on zray only.
"""

from __future__ import annotations

import os
import signal
import sys
import time

import pytest
from backend import IS_RAY, REPO, exceptions, pid_alive, ray, run_driver, wait_until

pytestmark = pytest.mark.timeout(180)


@ray.remote
class Phoenix:
    def __init__(self):
        self.n = 0

    def inc(self):
        self.n += 1
        return self.n

    def pid(self):
        return os.getpid()

    def restarted(self):
        return ray.get_runtime_context().was_current_actor_reconstructed

    def die(self):
        os._exit(1)

    def sleep(self, t, started=None):
        if started:  # the test waits for this instead of guessing when the call runs
            open(started, "a").close()
        time.sleep(t)
        return t


def _kill_pid(pid):
    os.kill(pid, signal.SIGKILL)


def test_crash_without_restart(ray_start):
    a = Phoenix.remote()
    ray.get(a.inc.remote())
    with pytest.raises(exceptions.RayActorError):
        ray.get(a.die.remote(), timeout=30)
    with pytest.raises(exceptions.ActorDiedError):
        ray.get(a.inc.remote(), timeout=30)


def test_inflight_call_fails_when_process_killed(ray_start, tmp_path):
    a = Phoenix.remote()
    pid = ray.get(a.pid.remote())
    started = tmp_path / "started"
    ref = a.sleep.remote(30, str(started))
    assert wait_until(started.exists, 30)
    _kill_pid(pid)
    with pytest.raises(exceptions.ActorDiedError):
        ray.get(ref, timeout=30)


def test_restart_reruns_constructor(ray_start, tmp_path):
    a = Phoenix.options(max_restarts=1).remote()
    assert ray.get(a.inc.remote()) == 1
    assert ray.get(a.restarted.remote()) is False
    pid = ray.get(a.pid.remote())
    started = tmp_path / "started"
    ref = a.sleep.remote(30, str(started))
    assert wait_until(started.exists, 30)
    _kill_pid(pid)
    # In flight with max_task_retries=0: it fails, as "unavailable" (it may have run).
    with pytest.raises(exceptions.RayActorError):
        ray.get(ref, timeout=30)
    assert ray.get(a.inc.remote(), timeout=30) == 1  # fresh state: constructor re-run
    assert ray.get(a.restarted.remote()) is True
    new_pid = ray.get(a.pid.remote())
    assert new_pid != pid
    _kill_pid(new_pid)  # the restart budget is spent: now it dies
    with pytest.raises(exceptions.ActorDiedError):
        for _ in range(50):
            ray.get(a.inc.remote(), timeout=30)
            time.sleep(0.1)


def test_inflight_calls_retried(ray_start, tmp_path):
    a = Phoenix.options(max_restarts=-1, max_task_retries=-1).remote()
    pid = ray.get(a.pid.remote())
    started = tmp_path / "started"
    refs = [a.sleep.remote(1.0, str(started)), a.inc.remote(), a.inc.remote()]
    assert wait_until(started.exists, 30)  # in flight: the first runs, two wait behind it
    _kill_pid(pid)
    out = ray.get(refs, timeout=60)
    assert out[0] == 1.0 and sorted(out[1:]) == [1, 2]  # (zray keeps their order; Ray may not)
    pid2 = ray.get(a.pid.remote())
    _kill_pid(pid2)  # restarts without limit
    assert ray.get(a.inc.remote(), timeout=60) == 1


def test_calls_queued_during_restart_are_delivered(ray_start):
    a = Phoenix.options(max_restarts=2).remote()
    pid = ray.get(a.pid.remote())
    _kill_pid(pid)
    refs = [a.inc.remote() for _ in range(20)]
    # Either the calls were sent before the death was known (and fail: no retries)
    # or they wait for the restart; whatever succeeds keeps its order.
    ok = []
    for r in refs:
        try:
            ok.append(ray.get(r, timeout=30))
        except exceptions.RayActorError:
            pass
    assert ok == sorted(ok) and len(set(ok)) == len(ok)
    assert ray.get(a.restarted.remote(), timeout=30) is True


def test_kill_with_restart(ray_start):
    a = Phoenix.options(max_restarts=1).remote()
    ray.get(a.inc.remote())
    ray.kill(a, no_restart=False)
    assert wait_until(lambda: _restarted(a), 30)
    assert ray.get(a.inc.remote()) == 1
    ray.kill(a, no_restart=False)  # no restarts left: it dies
    with pytest.raises(exceptions.ActorDiedError):
        for _ in range(100):
            ray.get(a.inc.remote(), timeout=30)
            time.sleep(0.1)


def _restarted(a):
    try:
        return ray.get(a.restarted.remote(), timeout=30)
    except exceptions.RayActorError:
        return False


def test_child_actor_dies_with_parent_actor(ray_start):
    @ray.remote
    class Parent:
        def __init__(self):
            self.child = Phoenix.remote()

        def child_(self):
            return [self.child]

        def child_pid(self):
            return ray.get(self.child.pid.remote())

    p = Parent.remote()
    child_pid = ray.get(p.child_pid.remote())
    [child] = ray.get(p.child_.remote())
    assert ray.get(child.inc.remote()) == 1
    ray.kill(p)
    with pytest.raises(exceptions.RayActorError):
        for _ in range(100):
            ray.get(child.inc.remote(), timeout=30)
            time.sleep(0.1)
    assert wait_until(lambda: not pid_alive(child_pid), 20)


def test_actor_dies_with_owner_task_worker(ray_start):
    @ray.remote
    def make():
        a = Phoenix.remote()
        ray.get(a.inc.remote())
        return a, os.getpid()

    a, owner_pid = ray.get(make.remote())
    assert ray.get(a.inc.remote()) == 2
    _kill_pid(owner_pid)
    with pytest.raises(exceptions.RayActorError):
        for _ in range(100):
            ray.get(a.inc.remote(), timeout=30)
            time.sleep(0.1)


_DRIVER_NON_DETACHED = """
import os, sys
import zray as ray
ray.init()
@ray.remote
class A:
    def pid(self):
        return os.getpid()
a = A.options(name="owned-by-driver").remote()
print("PID", ray.get(a.pid.remote()), flush=True)
"""


def test_actors_die_with_their_driver(tmp_path):
    proc = run_driver(_DRIVER_NON_DETACHED, tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr
    pid = int(proc.stdout.split("PID")[1].split()[0])
    assert wait_until(lambda: not pid_alive(pid), 20)


@pytest.mark.skipif(IS_RAY, reason="starts a zray head that outlives its drivers")
def test_detached_actor_outlives_driver(tmp_path):
    from zray import node

    head = node.start_head(num_cpus=2, embedded=False)
    try:
        addr = _wait_gcs_address(head.session_dir)
        env = {"ZRAY_SESSION_ROOT": os.path.dirname(head.session_dir)}
        first = f"""
import os, zray
zray.init(address={addr!r}, namespace="keep")
@zray.remote
class Store:
    def __init__(self):
        self.v = {{}}
    def put(self, k, v):
        self.v[k] = v
    def get(self, k):
        return self.v.get(k)
    def pid(self):
        return os.getpid()
s = Store.options(name="store", lifetime="detached").remote()
t = Store.options(name="temp").remote()
zray.get(s.put.remote("x", 42))
print("PIDS", zray.get(s.pid.remote()), zray.get(t.pid.remote()), flush=True)
"""
        p1 = _run(first, tmp_path, env, "first.py")
        assert p1.returncode == 0, p1.stdout + p1.stderr
        spid, tpid = (int(x) for x in p1.stdout.split("PIDS")[1].split()[:2])
        assert wait_until(lambda: not pid_alive(tpid), 20), "the non-detached actor survived"
        assert pid_alive(spid)
        second = f"""
import zray
zray.init(address={addr!r}, namespace="keep")
s = zray.get_actor("store")
print("GOT", zray.get(s.get.remote("x")), flush=True)
try:
    zray.get_actor("temp")
    print("TEMP FOUND")
except ValueError:
    print("TEMP GONE")
zray.kill(s)
"""
        p2 = _run(second, tmp_path, env, "second.py")
        assert p2.returncode == 0, p2.stdout + p2.stderr
        assert "GOT 42" in p2.stdout and "TEMP GONE" in p2.stdout
        assert wait_until(lambda: not pid_alive(spid), 20)
    finally:
        head.stop()


def _wait_gcs_address(session_dir: str) -> str:
    path = os.path.join(session_dir, "gcs_address")
    assert wait_until(lambda: os.path.exists(path) and open(path).read().strip(), 30)
    return open(path).read().strip()


def _run(source: str, directory, env: dict, name: str):
    import subprocess

    path = directory / name
    path.write_text(source)
    e = dict(os.environ)
    e["PYTHONPATH"] = os.pathsep.join([str(REPO), e.get("PYTHONPATH", "")])
    e.pop("ZRAY_ADDRESS", None)
    e.update(env)
    return subprocess.run([sys.executable, str(path)], cwd=str(directory), env=e,
                          capture_output=True, text=True, timeout=120)


_LEAK_DRIVER = """
import asyncio, os, sys
import psutil
import zray as ray
ray.init(num_cpus=2)

@ray.remote
class Sync:
    def pid(self):
        return os.getpid()

@ray.remote
class Async:
    async def pid(self):
        await asyncio.sleep(0)
        return os.getpid()

@ray.remote(max_concurrency=3)
class Threaded:
    def pid(self):
        return os.getpid()

actors = [Sync.remote(), Async.remote(), Threaded.remote(), Sync.options(num_cpus=1).remote()]
pids = ray.get([a.pid.remote() for a in actors])
busy = actors[0].pid.remote()  # a call in flight at shutdown
print("PIDS", *pids, flush=True)
if sys.argv[1] == "shutdown":
    ray.shutdown()
    print("DOWN", flush=True)
"""


@pytest.mark.parametrize("how", ["shutdown", "exit"])
def test_actor_processes_end_with_the_driver(tmp_path, how):
    proc = run_driver(_LEAK_DRIVER, tmp_path, args=[how], timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    pids = [int(p) for p in proc.stdout.split("PIDS")[1].split()[:4]]
    assert wait_until(lambda: not any(pid_alive(p) for p in pids), 20), \
        [p for p in pids if pid_alive(p)]
