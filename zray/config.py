"""Tunables, overridable by environment variables named ZRAY_<NAME>."""

from __future__ import annotations

import os


class ConfigError(ValueError):
    """A ZRAY_* environment variable that does not hold a value of its type."""


def _env(name: str, default: float) -> float:
    """ZRAY_<name> as the type of default, or default; ConfigError names a bad value."""
    return env_number("ZRAY_" + name, default)


def env_number(var: str, default: float) -> float:
    v = os.environ.get(var)
    if v is None or v.strip() == "":
        return default
    kind = type(default)
    try:
        out = kind(v.strip())
    except ValueError:
        out = None
    if out is None or out != out or out in (float("inf"), float("-inf")):
        what = "an integer" if kind is int else "a number (float)"
        raise ConfigError(f"{var}={v!r} is not valid: expected {what}, e.g. "
                          f"{var}={default!r}") from None
    return out


# Values up to this size travel inside messages; larger ones go to the store.
INLINE_MAX = int(_env("INLINE_MAX", 100 * 1024))
# A leased worker idle this long goes back to its raylet.
LEASE_IDLE_S = _env("LEASE_IDLE_S", 0.2)
# Lease requests one scheduling key may have outstanding at once.
MAX_PENDING_LEASES = int(_env("MAX_PENDING_LEASES", 10))
# Tasks in flight to one leased worker. Above 1, a task may be pushed to a busy
# worker to start the moment the one before it ends (pipelining); only done for a
# scheduling key whose recent tasks ran shorter than PIPELINE_MAX_TASK_S, and only
# for the part of the queue that pending lease requests cannot take. 1 = Ray's way.
MAX_TASKS_IN_FLIGHT = int(_env("MAX_TASKS_IN_FLIGHT", 2))
PIPELINE_MAX_TASK_S = _env("PIPELINE_MAX_TASK_S", 0.002)
# A worker whose running task has run this long (or blocks in get/wait) hands the
# tasks queued behind it back to their owners, which run them elsewhere.
RETURN_QUEUED_AFTER_S = _env("RETURN_QUEUED_AFTER_S", 0.01)
# Delay before telling an owner a borrow ended (covers in-flight hand-offs).
BORROW_RELEASE_DELAY_S = _env("BORROW_RELEASE_DELAY_S", 1.0)
# How long a raylet/GCS request may take before it is an error.
RPC_TIMEOUT_S = _env("RPC_TIMEOUT_S", 30.0)
# Heartbeat period and the silence after which a node is dead.
HEARTBEAT_S = _env("HEARTBEAT_S", 0.5)
NODE_DEATH_S = _env("NODE_DEATH_S", 5.0)
# A GCS that does not answer the raylet's pings for this long is down (a GCS process on
# the raylet's own machine is watched by pidfd: its exit is noticed at once). A raylet
# whose GCS stays down longer than the reconnect timeout stops itself and its workers
# (Ray's gcs_rpc_server_reconnect_timeout_s).
GCS_PING_TIMEOUT_S = _env("GCS_PING_TIMEOUT_S", 10.0)
GCS_RECONNECT_TIMEOUT_S = _env("GCS_RECONNECT_TIMEOUT_S", 60.0)
# While the raylet says the GCS is down, a GCS-bound call still asks, but waits only this
# long: news of the GCS's return may be late (a worker forked meanwhile), never its answer.
GCS_DOWN_PROBE_S = _env("GCS_DOWN_PROBE_S", 1.0)
# The GCS keeps a durable copy of its tables in <session>/gcs.sqlite (0: none; then a
# crashed GCS cannot be restored).
GCS_PERSIST = int(_env("GCS_PERSIST", 1))
# Warn about a lease request that no node can ever satisfy after this long.
INFEASIBLE_WARN_S = _env("INFEASIBLE_WARN_S", 1.0)
# Workers started when a raylet starts (capped by its CPUs).
PRESTART_WORKERS = int(_env("PRESTART_WORKERS", 4))
SESSION_ROOT = os.environ.get("ZRAY_SESSION_ROOT", "/tmp/zray-sessions")
# Liveness of the raylet and of owners we wait on: ping period and give-up time.
LIVENESS_PING_S = _env("LIVENESS_PING_S", 2.0)
LIVENESS_TIMEOUT_S = _env("LIVENESS_TIMEOUT_S", 10.0)
# The raylet's memory monitor (raylet/memory_monitor.py, Ray's names): above this fraction
# of the node's memory (its cgroup's limit if it has one) it kills the worker of the newest
# retriable task; checked every MEMORY_MONITOR_REFRESH_MS (0: never).
MEMORY_USAGE_THRESHOLD = _env("MEMORY_USAGE_THRESHOLD",
                              env_number("RAY_memory_usage_threshold", 0.95))
MEMORY_MONITOR_REFRESH_MS = int(_env("MEMORY_MONITOR_REFRESH_MS",
                                     env_number("RAY_memory_monitor_refresh_ms", 250)))
# Size-rotated logs of the GCS, raylets and workers (Ray's RAY_ROTATION_* defaults):
# a log file is rotated past MAX_BYTES, keeping BACKUP_COUNT older files.
ROTATION_MAX_BYTES = int(_env("ROTATION_MAX_BYTES", 512 * 1024 * 1024))
ROTATION_BACKUP_COUNT = int(_env("ROTATION_BACKUP_COUNT", 5))
