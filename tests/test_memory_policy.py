"""Unit tests of the memory monitor's policy and readers (raylet/memory_monitor.py), and of
the scheduler's part (which lease is retriable, the OOM reason of a worker's death)."""

from __future__ import annotations

import os

from zray.raylet import memory_monitor as mm
from zray.raylet import scheduler as sch

GB = 1 << 30


def run(wid: bytes, lease: int, retriable: bool = True) -> mm.Running:
    return mm.Running(wid, lease, retriable, pid=100 + lease, rss=lease * GB // 10)


def test_below_the_threshold_nothing_is_killed():
    p = mm.MemoryPolicy(0.9)
    assert p.handle(mm.Sample(0.0, mm.Usage(89, 100), [run(b"a", 1)])) == []
    assert p.handle(mm.Sample(0.0, mm.Usage(0, 0), [run(b"a", 1)])) == []  # no reading: nothing


def test_above_it_the_newest_retriable_task_goes_first():
    p = mm.MemoryPolicy(0.9, "10.0.0.1", bytes.fromhex("ab" * 28))
    running = [run(b"old", 1), run(b"new-not-retriable", 3, False), run(b"new", 2)]
    [kill] = p.handle(mm.Sample(0.0, mm.Usage(95 * GB // 10, 10 * GB), running))
    assert isinstance(kill, mm.Kill) and kill.wid == b"new"
    m = kill.message
    assert "memory usage threshold of 0.9" in m and "9.50GB / 10.00GB (0.9500)" in m
    assert "IP: 10.0.0.1" in m and "abababab" in m and "pid=102" in m
    assert "most recently scheduled retriable task" in m


def test_one_kill_at_a_time_then_the_next():
    p = mm.MemoryPolicy(0.5)
    high = mm.Usage(8, 10)
    running = [run(b"a", 1), run(b"b", 2)]
    assert [k.wid for k in p.handle(mm.Sample(0.0, high, running))] == [b"b"]
    assert p.handle(mm.Sample(0.3, high, running)) == []  # b has not exited yet
    p.handle(mm.WorkerExited(b"b"))
    running = running[:1]
    assert [k.wid for k in p.handle(mm.Sample(0.6, high, running))] == [b"a"]


def test_a_kill_that_does_not_end_its_worker_is_given_up_after_a_while():
    p = mm.MemoryPolicy(0.5)
    high = mm.Usage(8, 10)
    running = [run(b"a", 1), run(b"b", 2)]
    assert [k.wid for k in p.handle(mm.Sample(0.0, high, running))] == [b"b"]
    assert p.handle(mm.Sample(mm.KILL_TIMEOUT_S - 1, high, running)) == []
    assert [k.wid for k in p.handle(mm.Sample(mm.KILL_TIMEOUT_S + 1, high, running))] == [b"b"]
    # A killed worker whose lease is gone is not waited for.
    assert [k.wid for k in p.handle(mm.Sample(100.0, high, [run(b"a", 1)]))] == [b"a"]


def test_without_retriable_work_the_newest_task_goes():
    p = mm.MemoryPolicy(0.5)
    [kill] = p.handle(mm.Sample(0.0, mm.Usage(8, 10), [run(b"x", 4, False), run(b"y", 5, False)]))
    assert kill.wid == b"y" and "none that can be retried" in kill.message


def test_nothing_to_kill_warns_now_and_then():
    p = mm.MemoryPolicy(0.5)
    w = p.handle(mm.Sample(0.0, mm.Usage(8, 10), []))
    assert len(w) == 1 and isinstance(w[0], mm.Warn) and "threshold of 0.5" in w[0].message
    assert p.handle(mm.Sample(1.0, mm.Usage(8, 10), [])) == []
    assert len(p.handle(mm.Sample(mm.WARN_EVERY_S + 1, mm.Usage(8, 10), []))) == 1


# ------------------------------------------------------------------ readers
def _tree(root, cgroup_lines: str, mountinfo: str, files: dict[str, str]) -> str:
    os.makedirs(os.path.join(root, "proc/self"))
    with open(os.path.join(root, "proc/self/cgroup"), "w") as f:
        f.write(cgroup_lines)
    with open(os.path.join(root, "proc/self/mountinfo"), "w") as f:
        f.write(mountinfo)
    for path, text in files.items():
        full = os.path.join(root, path)
        os.makedirs(os.path.dirname(full), exist_ok=True)
        with open(full, "w") as f:
            f.write(text)
    return str(root)


V2_MOUNT = "30 23 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw\n"
V1_MOUNT = ("31 23 0:27 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n"
            "32 23 0:28 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n")


def test_cgroup_v2_limit_and_usage_less_inactive_file(tmp_path):
    root = _tree(tmp_path, "0::/job/raylet\n", V2_MOUNT, {
        "sys/fs/cgroup/job/raylet/memory.max": "max\n",
        "sys/fs/cgroup/job/raylet/memory.current": "700\n",
        "sys/fs/cgroup/job/memory.max": str(1 << 20) + "\n",
        "sys/fs/cgroup/job/memory.current": str(900 << 10) + "\n",
        "sys/fs/cgroup/job/memory.stat": f"anon 1\ninactive_file {100 << 10}\nactive_file 7\n",
    })
    u = mm.read_usage(root)
    assert (u.used, u.total) == (800 << 10, 1 << 20)  # the limited ancestor
    assert u.source.startswith("cgroup v2 ") and u.source.endswith("sys/fs/cgroup/job")


def test_cgroup_v1_limit(tmp_path):
    root = _tree(tmp_path, "5:cpu:/\n4:memory:/docker/abc\n0::/\n", V1_MOUNT, {
        "sys/fs/cgroup/memory/docker/abc/memory.limit_in_bytes": str(2 << 20),
        "sys/fs/cgroup/memory/docker/abc/memory.usage_in_bytes": str(1 << 20),
        "sys/fs/cgroup/memory/docker/abc/memory.stat": "cache 5\ntotal_inactive_file 4096\n",
        "sys/fs/cgroup/memory/docker/memory.limit_in_bytes": "9223372036854771712",
        "sys/fs/cgroup/memory/docker/memory.usage_in_bytes": str(3 << 20),
    })
    u = mm.read_usage(root)
    assert (u.used, u.total) == ((1 << 20) - 4096, 2 << 20) and u.source.startswith("cgroup v1")


def test_no_limit_anywhere_reads_the_host(tmp_path):
    root = _tree(tmp_path, "0::/a\n", V2_MOUNT, {"sys/fs/cgroup/a/memory.max": "max\n",
                                                 "sys/fs/cgroup/a/memory.current": "5\n"})
    u = mm.read_usage(root)
    assert u.source == "host" and 0 < u.used < u.total
    assert mm.read_usage(str(tmp_path / "nothing-here")).source == "host"


# ------------------------------------------------------------- the scheduler
def test_leases_carry_retriable_and_an_oom_death_says_so():
    s = sch.NodeScheduler({"CPU": 2})
    s.handle(sch.WorkerRegistered(b"w1"))
    s.handle(sch.WorkerRegistered(b"w2"))
    r = sch.LeaseRequest(1, "ipc://a", {"CPU": 1}, None, 0.0)
    r.retriable = False
    [g1] = s.handle(sch.LeaseRequested(r))
    [g2] = s.handle(sch.LeaseRequested(sch.LeaseRequest(2, "ipc://b", {"CPU": 1}, None, 0.0)))
    assert s.leases[g1.lease_id].retriable is False and s.leases[g2.lease_id].retriable
    assert g2.lease_id > g1.lease_id  # newer lease, higher id: the policy's order
    [died] = [a for a in s.handle(sch.WorkerExited(g2.wid, oom="low on memory"))
              if isinstance(a, sch.NotifyWorkerDied)]
    assert died.oom and died.reason == "low on memory" and died.ra == "ipc://b"
    [died] = [a for a in s.handle(sch.WorkerExited(g1.wid)) if isinstance(a, sch.NotifyWorkerDied)]
    assert not died.oom and died.reason == "the worker process died"


def test_system_config_sets_the_monitor_and_refuses_a_bad_value():
    import pytest

    from zray import node

    env = node.system_config_env({"memory_usage_threshold": 0.8, "memory_monitor_refresh_ms": 0,
                                  "object_spilling_config": "{}"})
    assert env == {"ZRAY_MEMORY_USAGE_THRESHOLD": "0.8", "ZRAY_MEMORY_MONITOR_REFRESH_MS": "0"}
    with pytest.raises(ValueError, match="memory_usage_threshold.*number"):
        node.system_config_env({"memory_usage_threshold": "high"})
