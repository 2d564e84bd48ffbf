"""`zray start`: a detached head (GCS + raylet) or a node joining a cluster.

The processes run in their own sessions (setsid), with stdin from /dev/null
and output to the session's log files, so they outlive the command. The
command returns once the new raylet is registered with the GCS.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

from zray_cli import sessions
from zray_cli.gcs_client import GcsClient, GcsUnreachable

from zray import config, node

REGISTER_TIMEOUT_S = config.env_number("ZRAY_START_TIMEOUT_S", 30.0)


class StartError(RuntimeError):
    pass


@dataclass
class Started:
    procs: node.NodeProcesses
    gcs_address: str
    secret: bytes
    session_reused: bool = False


def log_tail(path: str, lines: int = 15) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 8192))
            data = f.read().decode(errors="replace")
    except OSError:
        return ""
    return "\n".join(data.splitlines()[-lines:])


def _logs(np: node.NodeProcesses) -> list[str]:
    d = os.path.join(np.session_dir, "logs")
    out = [os.path.join(d, f"raylet-{np.node_id.hex()[:12]}.log")]
    if np.gcs_ipc:
        out.insert(0, os.path.join(d, "gcs.log"))
    return out


def abort(np: node.NodeProcesses, own_session: bool) -> None:
    """Stop the processes of np; clean its whole session only if it made that session."""
    from zray_cli import stopper

    from zray.objstore import shm

    for p in reversed(np.procs):
        node._terminate(p, 3)
    shm.remove_all(np.shm_prefix)
    if own_session:
        stopper.cleanup_session(np.session_dir)
        sessions.clear_latest_if({np.session_dir})
    elif not (np.gcs_ipc and len(np.procs) == 1):  # not a restored GCS: the raylet is ours
        for path in (np.raylet_ipc[len("ipc://"):],
                     os.path.join(np.session_dir, "pids", f"raylet-{np.node_id.hex()[:12]}.json")):
            try:
                os.unlink(path)
            except OSError:
                pass


def failure(np: node.NodeProcesses, why: str, own_session: bool = True) -> StartError:
    """Stop what was started and describe the failure with the logs' last lines."""
    abort(np, own_session)
    parts = [why]
    for path in _logs(np):
        tail = log_tail(path)
        if tail:
            parts.append(f"--- last lines of {path} ---\n{tail}")
    return StartError("\n".join(parts))


def _write_pids(np: node.NodeProcesses) -> None:
    roles = ["gcs", "raylet"] if np.gcs_ipc else ["raylet"]
    for role, p in zip(roles, np.procs):
        sessions.write_pid_file(np.session_dir, role, np.node_id, p.pid)


def wait_registered(np: node.NodeProcesses, client_factory, timeout: float,
                    own_session: bool = True) -> None:
    """Poll the GCS until np's raylet is listed alive; StartError on death or timeout."""
    deadline = time.monotonic() + timeout
    want = np.node_id.hex()
    client = None
    try:
        while True:
            if not np.alive():
                raise failure(np, f"zray failed to start: {np.dead_message()}.", own_session)
            if time.monotonic() > deadline:
                raise failure(np, f"the raylet did not register with the GCS within {timeout:g} s.",
                              own_session)
            if client is None:
                client = client_factory()
            if client is not None:
                try:
                    nodes = client.nodes(timeout=min(2.0, max(0.1, deadline - time.monotonic())))
                    if any(n["NodeID"] == want and n["Alive"] for n in nodes):
                        return
                except GcsUnreachable:
                    pass
            time.sleep(0.1)
    except KeyboardInterrupt:
        abort(np, own_session)
        raise
    finally:
        if client is not None:
            client.close()


def _running(rec: dict) -> bool:
    import psutil

    try:
        p = psutil.Process(int(rec["pid"]))
        return abs(p.create_time() - float(rec.get("create_time", 0))) <= 1.0 and \
            p.status() != psutil.STATUS_ZOMBIE
    except (psutil.Error, KeyError, ValueError):
        return False


def find_crashed_head(host: str, port: int) -> tuple[str, dict] | None:
    """The newest session of ours whose GCS listened at host:port and crashed: it has a
    gcs.sqlite (a GCS removes it when it stops cleanly, `zray stop` too) and a gcs pid
    file whose process is gone. Returns (session dir, that pid record)."""
    from zray.gcs import store

    want = f"{host}:{port}"
    for s in reversed(sessions.all_sessions()):
        try:
            if os.stat(s).st_uid != os.getuid() or sessions.read_gcs_address(s) != want or \
                    not os.path.getsize(store.path_for(s)) or \
                    not os.access(os.path.join(s, "secret"), os.R_OK):
                continue
        except OSError:
            continue
        gcs = [r for r in sessions.read_pid_files(s) if r.get("role") == "gcs"]
        if gcs and not _running(gcs[0]):
            return s, gcs[0]
    return None


def restore_head(session_dir: str, gcs_rec: dict, *, host: str, port: int, num_cpus,
                 num_gpus, resources, object_store_memory,
                 timeout: float = REGISTER_TIMEOUT_S) -> Started:
    """Start the crashed GCS of session_dir again on its address; it restores its tables,
    the raylets still alive register again. The head raylet is started anew if it died."""
    head_id = bytes.fromhex(gcs_rec["node_id"])
    raylets = [r for r in sessions.read_pid_files(session_dir) if r.get("role") == "raylet"
               and r.get("node_id") == gcs_rec["node_id"]]
    res = None
    if not (raylets and _running(raylets[0])):
        node_ip = "127.0.0.1" if host in ("127.0.0.1", "localhost") else host
        res = node.node_resources(num_cpus, num_gpus, resources, object_store_memory,
                                  node_ip, True)
    _check_port_free(host, port)
    np = node.restart_head(session_dir=session_dir, host=host, port=port, head_node_id=head_id,
                           raylet_res=res, object_store_memory=object_store_memory)
    _write_pids(np)
    secret = _read_secret(session_dir)

    def client():
        if os.path.exists(os.path.join(session_dir, "sockets", "gcs")):
            return GcsClient(secret, session_dir=session_dir)
        return None

    wait_registered(np, client, timeout, own_session=False)
    sessions.set_latest(session_dir)
    return Started(np, f"{host}:{port}", secret, session_reused=True)


def start_head(*, host: str, port: int, num_cpus, num_gpus, resources, object_store_memory,
               timeout: float = REGISTER_TIMEOUT_S) -> Started:
    if port:
        crashed = find_crashed_head(host, port)
        if crashed is not None:
            return restore_head(crashed[0], crashed[1], host=host, port=port, num_cpus=num_cpus,
                                num_gpus=num_gpus, resources=resources,
                                object_store_memory=object_store_memory, timeout=timeout)
        _check_port_free(host, port)
    session_dir = node.new_session_dir()
    np = node.start_head(num_cpus=num_cpus, num_gpus=num_gpus, resources=resources,
                         object_store_memory=object_store_memory, host=host, port=port,
                         embedded=False, session_dir=session_dir)
    _write_pids(np)
    secret = _read_secret(session_dir)

    def client():
        if sessions.read_gcs_address(session_dir) and os.path.exists(
                os.path.join(session_dir, "sockets", "gcs")):
            return GcsClient(secret, session_dir=session_dir)
        return None

    wait_registered(np, client, timeout)
    gcs_address = sessions.read_gcs_address(session_dir) or f"{host}:{port}"
    sessions.set_latest(session_dir)
    return Started(np, gcs_address, secret)


def _check_port_free(host: str, port: int) -> None:
    import socket

    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(fam, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as ZeroMQ binds
        try:
            s.bind((host, port))
        except OSError as e:
            raise StartError(f"cannot listen on {host}:{port}: {e.strerror} (another zray or "
                             "Ray head, or another server?). Pick another port with --port.")


def _read_secret(session_dir: str) -> bytes:
    with open(os.path.join(session_dir, "secret"), "rb") as f:
        return f.read()


def start_worker(*, address: str, secret: bytes | None, node_ip: str, port: int, num_cpus,
                 num_gpus, resources, object_store_memory,
                 timeout: float = REGISTER_TIMEOUT_S) -> Started:
    """Join the cluster whose GCS is at address. Without a secret, the local session of that
    cluster (same machine) provides it and hosts the node; otherwise a new session is made."""
    local = sessions.find(address)
    reused = False
    if local is not None and (secret is None or secret == _read_secret(local)):
        session_dir, secret, reused = local, _read_secret(local), True
    elif secret is None:
        raise StartError(
            f"no cluster secret for {address}: this machine has no session of that cluster. "
            "Pass --secret-file PATH (a copy of the head's <session>/secret, or the output of "
            "`zray secret` on the head) or set ZRAY_CLUSTER_SECRET to its hex digits.")
    else:
        session_dir = None
    with GcsClient(secret, gcs_tcp=address) as c:
        try:
            c.ping(timeout=10)
        except GcsUnreachable:
            raise StartError(
                f"no zray GCS answered at {address} within 10 s: wrong address, a firewall, "
                "or a wrong cluster secret (a GCS drops messages it cannot authenticate).")
    if session_dir is None:
        session_dir = node.new_session_dir()
        node.write_secret(session_dir, secret)
        sessions.write_gcs_address(session_dir, address)
    np = node.start_worker_node(session_dir=session_dir, gcs_address=address, num_cpus=num_cpus,
                                num_gpus=num_gpus, resources=resources,
                                object_store_memory=object_store_memory, node_ip=node_ip,
                                embedded=False, port=port)
    _write_pids(np)
    wait_registered(np, lambda: GcsClient(secret, gcs_tcp=address,
                                          session_dir=session_dir if reused else None), timeout,
                    own_session=not reused)
    if not reused:
        sessions.set_latest(session_dir)
    return Started(np, address, secret, reused)
