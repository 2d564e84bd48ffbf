"""Starting and stopping the processes of a node: session directory, GCS, raylet."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field

from zray import config, ids, session_lookup
from zray.objstore import shm


def detect_num_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


# Linux's sockaddr_un.sun_path holds 108 bytes with the terminating NUL.
UNIX_PATH_MAX = 107
# The longest file name we bind in <session>/sockets/ ("raylet-<12 hex>", "cli-<pid>-<6 hex>").
SOCKET_NAME_MAX = 24


SessionDirError = session_lookup.SessionDirError

def check_socket_dir(sock_dir: str) -> None:
    """Raise SessionDirError if a socket in sock_dir could exceed the unix path limit."""
    longest = os.path.join(sock_dir, "raylet-" + "0" * (SOCKET_NAME_MAX - 7))
    n = len(os.fsencode(longest))
    if n > UNIX_PATH_MAX:
        raise SessionDirError(
            f"The session directory is too deep for unix sockets: a socket path like {longest} "
            f"is {n} bytes, over the {UNIX_PATH_MAX}-byte limit of unix socket paths "
            f"(sun_path). Set ZRAY_SESSION_ROOT to a shorter directory (the session root "
            f"is now {os.path.dirname(os.path.dirname(sock_dir))!r}).")


def new_session_dir(root: str | None = None) -> str:
    root = root or session_lookup.root()
    name = time.strftime("session_%Y-%m-%d_%H-%M-%S_") + f"{os.getpid()}_{secrets.token_hex(4)}"
    path = os.path.join(os.path.abspath(root), name)
    check_socket_dir(os.path.join(path, "sockets"))
    session_lookup.check_root(root)
    os.makedirs(root, exist_ok=True)
    if os.stat(root).st_uid == os.geteuid():
        # Shared like /tmp (each session dir is owner-only); a per-user fallback is private.
        shared = root == (os.environ.get("ZRAY_SESSION_ROOT") or config.SESSION_ROOT)
        os.chmod(root, 0o1777 if shared else 0o700)
    session_lookup.check_root(root)  # (it may have been made by someone else meanwhile)
    os.mkdir(path, 0o700)
    os.mkdir(os.path.join(path, "sockets"), 0o700)
    os.mkdir(os.path.join(path, "logs"), 0o700)
    return path


def write_secret(session_dir: str, secret: bytes) -> None:
    fd = os.open(os.path.join(session_dir, "secret"), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(secret)


def node_resources(num_cpus: int | None, num_gpus: int | None, resources: dict | None,
                   object_store_memory: int | None, node_ip: str, is_head: bool) -> dict:
    import psutil

    res = {"CPU": float(detect_num_cpus() if num_cpus is None else num_cpus)}
    if num_gpus:
        res["GPU"] = float(num_gpus)
    for k, v in (resources or {}).items():
        if k in ("CPU", "GPU"):
            raise ValueError("Use num_cpus/num_gpus instead of 'CPU'/'GPU' in resources")
        res[k] = float(v)
    mem = psutil.virtual_memory().total
    res.setdefault("memory", float(int(mem * 0.7)))
    if not object_store_memory:
        from zray.objstore.capacity import default_capacity

        object_store_memory = default_capacity()
    res["object_store_memory"] = float(object_store_memory)
    res[f"node:{node_ip}"] = 1.0
    if is_head:
        res["node:__internal_head__"] = 1.0
    return res


@dataclass
class NodeProcesses:
    """The processes this driver (or `zray start`) started for one node."""

    session_dir: str
    node_id: bytes
    node_ip: str
    raylet_ipc: str
    gcs_ipc: str | None
    procs: list = field(default_factory=list)
    shm_prefix: str = ""

    def alive(self) -> bool:
        return all(p.poll() is None for p in self.procs)

    def dead_message(self) -> str:
        for p in self.procs:
            if p.poll() is not None:
                return f"{' '.join(p.args[:3])} exited with code {p.returncode}"
        return ""

    def stop(self, timeout: float = 5.0) -> None:
        # Raylet first (it stops its workers), then the GCS.
        for p in reversed(self.procs):
            _terminate(p, timeout)
        if self.shm_prefix:
            shm.remove_all(self.shm_prefix)
        sock_dir = os.path.join(self.session_dir, "sockets")
        shutil.rmtree(sock_dir, ignore_errors=True)
        try:
            os.unlink(os.path.join(self.session_dir, "secret"))
        except OSError:
            pass


def _terminate(p: subprocess.Popen, timeout: float) -> None:
    if p.poll() is not None:
        return
    try:
        if p.stdin:
            p.stdin.close()  # embedded processes exit on EOF
        p.send_signal(signal.SIGTERM)
        p.wait(timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()
    except ProcessLookupError:
        pass


def shm_prefix_for(session_dir: str, node_id: bytes) -> str:
    return f"zray-{os.path.basename(session_dir.rstrip('/'))[-8:]}-{node_id.hex()[:8]}-"


# Ray's _system_config keys zray honours, and the settings (config.py) they set.
SYSTEM_CONFIG = {"memory_usage_threshold": ("ZRAY_MEMORY_USAGE_THRESHOLD", float),
                 "memory_monitor_refresh_ms": ("ZRAY_MEMORY_MONITOR_REFRESH_MS", int)}


def system_config_env(system_config: dict | None) -> dict:
    """The environment that carries init(_system_config=...) to the processes we start
    (keys zray has no use for are ignored, as before)."""
    out = {}
    for k, v in (system_config or {}).items():
        if k not in SYSTEM_CONFIG:
            continue
        var, kind = SYSTEM_CONFIG[k]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v != v:
            raise ValueError(f"_system_config[{k!r}] must be a number ({kind.__name__}), "
                             f"got {v!r}")
        out[var] = str(kind(v))
    return out


def start_head(*, num_cpus: int | None = None, num_gpus: int | None = None,
               resources: dict | None = None, object_store_memory: int | None = None,
               host: str = "127.0.0.1", port: int = 0, embedded: bool = True,
               session_dir: str | None = None,
               system_config: dict | None = None) -> NodeProcesses:
    """Start a GCS and a raylet on this machine (without waiting for them)."""
    settings = system_config_env(system_config)
    session_dir = session_dir or new_session_dir()
    write_secret(session_dir, secrets.token_bytes(32))
    node_id = ids.new_unique_id()
    node_ip = "127.0.0.1" if host in ("127.0.0.1", "localhost", "0.0.0.0") else host
    gcs_ipc = "ipc://" + os.path.join(session_dir, "sockets", "gcs")
    env = dict(os.environ)
    env.setdefault("PYTHONUNBUFFERED", "1")
    env.update(settings)
    gcs = spawn_gcs(session_dir, host, port, embedded, env)
    res = node_resources(num_cpus, num_gpus, resources, object_store_memory, node_ip, True)
    raylet = _spawn_raylet(session_dir, node_id, gcs_ipc, node_ip, res, object_store_memory,
                           True, embedded, env)
    return NodeProcesses(session_dir, node_id, node_ip,
                         "ipc://" + os.path.join(session_dir, "sockets", "raylet-" + node_id.hex()[:12]),
                         gcs_ipc, [gcs, raylet], shm_prefix_for(session_dir, node_id))


def spawn_gcs(session_dir: str, host: str, port: int, embedded: bool, env: dict) -> subprocess.Popen:
    """Start the GCS of session_dir (it restores its tables if the session has a
    gcs.sqlite with rows: a GCS of this session crashed).

    Every process we start runs in a session of its own: Ctrl-C at the driver's prompt (or
    a Jupyter interrupt) signals the driver's process group, never the cluster. An embedded
    one still dies with the driver: it holds the driver's pipe on stdin and exits at EOF.
    """
    extra = ["--embedded"] if embedded else []
    with open(os.path.join(session_dir, "logs", "gcs.log"), "ab") as gl:
        return subprocess.Popen(
            [sys.executable, "-m", "zray.gcs", "--session-dir", session_dir, "--host", host,
             "--port", str(port), *extra],
            stdin=subprocess.PIPE if embedded else subprocess.DEVNULL, stdout=gl,
            stderr=subprocess.STDOUT, close_fds=True, env=env, start_new_session=True)


def restart_head(*, session_dir: str, host: str, port: int, head_node_id: bytes,
                 raylet_res: dict | None, object_store_memory: int | None = None
                 ) -> NodeProcesses:
    """Start the GCS of a session whose GCS crashed, on its old address, detached (the
    `zray start --head` of that session). With ``raylet_res`` also a new head raylet
    (the old one is gone); else the old head raylet (``head_node_id``) registers again."""
    node_ip = "127.0.0.1" if host in ("127.0.0.1", "localhost", "0.0.0.0") else host
    gcs_ipc = "ipc://" + os.path.join(session_dir, "sockets", "gcs")
    env = dict(os.environ)
    env.setdefault("PYTHONUNBUFFERED", "1")
    os.makedirs(os.path.join(session_dir, "sockets"), 0o700, exist_ok=True)
    procs = [spawn_gcs(session_dir, host, port, False, env)]
    node_id = head_node_id
    if raylet_res is not None:
        node_id = ids.new_unique_id()
        raylet_res[f"node:{node_ip}"] = 1.0
        procs.append(_spawn_raylet(session_dir, node_id, gcs_ipc, node_ip, raylet_res,
                                   object_store_memory, True, False, env))
    return NodeProcesses(session_dir, node_id, node_ip,
                         "ipc://" + os.path.join(session_dir, "sockets", "raylet-" + node_id.hex()[:12]),
                         gcs_ipc, procs, shm_prefix_for(session_dir, node_id))


def _spawn_raylet(session_dir: str, node_id: bytes, gcs: str, node_ip: str, res: dict,
                  object_store_memory: int | None, head: bool, embedded: bool, env: dict,
                  port: int = 0, cmd_prefix: list[str] | None = None) -> subprocess.Popen:
    log_dir = os.path.join(session_dir, "logs")
    args = [*(cmd_prefix or ()), sys.executable, "-m", "zray.raylet", "--session-dir", session_dir,
            "--node-id", node_id.hex(), "--gcs", gcs, "--node-ip", node_ip,
            "--resources", json.dumps(res), "--port", str(port)]
    if object_store_memory:
        args += ["--object-store-memory", str(int(object_store_memory))]
    if head:
        args.append("--head")
    if embedded:
        args.append("--embedded")
    with open(os.path.join(log_dir, f"raylet-{node_id.hex()[:12]}.log"), "ab") as rl:
        return subprocess.Popen(args, stdin=subprocess.PIPE if embedded else subprocess.DEVNULL,
                                stdout=rl, stderr=subprocess.STDOUT, close_fds=True, env=env,
                                start_new_session=True)


def start_worker_node(*, session_dir: str, gcs_address: str, num_cpus: int | None = None,
                      num_gpus: int | None = None, resources: dict | None = None,
                      object_store_memory: int | None = None, node_ip: str = "127.0.0.1",
                      embedded: bool = True, port: int = 0,
                      cmd_prefix: list[str] | None = None) -> NodeProcesses:
    """Start a raylet that joins the cluster whose GCS listens at gcs_address (host:port).

    ``cmd_prefix`` runs it through a command that execs its arguments (for example
    ``["ip", "netns", "exec", "ns1"]`` to put the node in a network namespace).
    """
    node_id = ids.new_unique_id()
    res = node_resources(num_cpus, num_gpus, resources, object_store_memory, node_ip, False)
    env = dict(os.environ)
    raylet = _spawn_raylet(session_dir, node_id, "tcp://" + gcs_address, node_ip, res,
                           object_store_memory, False, embedded, env, port, cmd_prefix)
    return NodeProcesses(session_dir, node_id, node_ip,
                         "ipc://" + os.path.join(session_dir, "sockets", "raylet-" + node_id.hex()[:12]),
                         None, [raylet], shm_prefix_for(session_dir, node_id))
