"""Clusters of several nodes on one machine, for tests: Ray's ``ray.cluster_utils`` shape.

::

    from zray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    node = cluster.add_node(num_cpus=2, resources={"gpu_box": 1})
    cluster.wait_for_nodes()
    zray.init(address=cluster.address)
    ...
    cluster.remove_node(node, allow_graceful=False)  # SIGKILL its raylet and workers
    cluster.shutdown()

Every node is a real raylet process with its own workers, object store (shm
prefix), ipc socket and tcp port on its own address (127.0.0.1 unless
``node_ip_address`` says otherwise). All nodes share one session directory; the
first node is the head (GCS + raylet). The processes are started "embedded":
they exit when this process does, even if it is killed.

``shutdown()`` leaves no process, shared-memory segment or socket file behind,
also after ``remove_node(..., allow_graceful=False)``: a SIGKILLed raylet cannot
clean up after itself, so the Cluster does it.
"""

from __future__ import annotations

import atexit
import logging
import os
import shutil
import signal
import socket
import subprocess
import time
from typing import Any

from zray import node as _node
from zray.objstore import shm

log = logging.getLogger("zray.cluster_utils")

_IGNORED = {"_system_config", "include_dashboard", "dashboard_port", "dashboard_host",
            "redis_port", "min_worker_port", "max_worker_port", "enable_object_reconstruction",
            "object_store_full_delay_ms", "_temp_dir", "labels", "env_vars", "memory"}


class ClusterNode:
    """A node of a Cluster: its processes and Ray's attribute names."""

    def __init__(self, procs: _node.NodeProcesses, is_head: bool, netns: str | None):
        self.procs = procs
        self.is_head = is_head
        self.netns = netns
        self.node_id = procs.node_id.hex()
        self.unique_id = self.node_id
        self.node_ip_address = procs.node_ip
        self.raylet_socket_name = procs.raylet_ipc[len("ipc://"):]
        self.session_dir = procs.session_dir
        self.removed = False

    @property
    def raylet(self) -> subprocess.Popen:
        return self.procs.procs[-1]

    def all_processes_alive(self) -> bool:
        return self.procs.alive()

    def kill_gcs_server(self) -> None:
        """SIGKILL the head's GCS (Ray's name). Its tables stay in <session>/gcs.sqlite;
        raylets notice at once and fail GCS-bound calls with RpcError."""
        if not self.is_head:
            raise ValueError("only the head node runs the GCS")
        _kill(self.procs.procs[0])

    def start_gcs_server(self) -> None:
        """Start the head's GCS again on its old address (Ray's name): it restores its
        tables from gcs.sqlite and the raylets register again."""
        if not self.is_head:
            raise ValueError("only the head node runs the GCS")
        if self.procs.procs[0].poll() is None:
            raise RuntimeError("the GCS is running")
        with open(os.path.join(self.session_dir, "gcs_address")) as f:
            host, _, port = f.read().strip().rpartition(":")
        env = dict(os.environ)
        env.setdefault("PYTHONUNBUFFERED", "1")
        self.procs.procs[0] = _node.spawn_gcs(self.session_dir, host.strip("[]"), int(port),
                                              True, env)

    def __repr__(self) -> str:
        return f"ClusterNode({self.node_id[:12]}, {'head' if self.is_head else 'worker'})"


class Cluster:
    def __init__(self, initialize_head: bool = False, connect: bool = False,
                 head_node_args: dict | None = None, shutdown_at_exit: bool = True):
        self.head_node: ClusterNode | None = None
        self.worker_nodes: list[ClusterNode] = []
        self.session_dir = ""  # set by the head node
        self._gcs_address: str | None = None
        self._pids: dict[int, float] = {}  # every process we know of -> create time
        self._down = False
        if initialize_head:
            self.add_node(**(head_node_args or {}))
            if connect:
                self.connect()
        elif connect:
            raise RuntimeError("connect=True needs initialize_head=True")
        if shutdown_at_exit:
            atexit.register(self.shutdown)

    # ----------------------------------------------------------- queries
    @property
    def address(self) -> str | None:
        """host:port of the cluster's GCS (what zray.init(address=...) takes); None before
        the head node is added (as Ray's)."""
        if self._gcs_address is None:
            if not self.session_dir:
                return None
            path = os.path.join(self.session_dir, "gcs_address")
            deadline = time.monotonic() + 30
            while True:
                try:
                    with open(path) as f:
                        v = f.read().strip()
                    if v:
                        self._gcs_address = v
                        break
                except OSError:
                    pass
                if time.monotonic() > deadline:
                    raise TimeoutError(f"the GCS did not start; see {self.session_dir}/logs")
                self._check_alive(self.head_node)
                time.sleep(0.02)
        return self._gcs_address

    @property
    def gcs_address(self) -> str | None:
        return self.address

    def list_all_nodes(self) -> list[ClusterNode]:
        nodes = [self.head_node] if self.head_node is not None and not self.head_node.removed else []
        return nodes + list(self.worker_nodes)

    def nodes(self) -> list[dict]:
        """The GCS's node table (as zray.nodes() returns it)."""
        from zray.api import _session_nodes

        if not self.session_dir:
            return []
        return _session_nodes(self.session_dir)

    def connect(self, namespace: str | None = None, **kwargs: Any) -> dict:
        import zray

        if self.address is None:
            raise RuntimeError("the cluster has no head node yet: add_node() first")
        return zray.init(address=self.address, namespace=namespace, **kwargs)

    # ------------------------------------------------------------ changes
    def add_node(self, wait: bool = True, *, num_cpus: int | None = None,
                 num_gpus: int | None = None, resources: dict | None = None,
                 object_store_memory: int | None = None, node_ip_address: str | None = None,
                 port: int = 0, _netns: str | None = None, **kwargs: Any) -> ClusterNode:
        """Start a node (the head if there is none yet) and wait until it has joined.

        ``_netns`` runs a worker node's raylet in that network namespace (root only;
        give it a ``node_ip_address`` that exists there).
        """
        unknown = set(kwargs) - _IGNORED
        if unknown:
            raise TypeError(f"add_node() got unexpected keyword argument(s): {sorted(unknown)}")
        if self._down:
            raise RuntimeError("the cluster was shut down")
        if num_cpus is None:
            num_cpus = 1  # a test cluster must not claim every core once per node
        ip = node_ip_address or "127.0.0.1"
        if self.head_node is None:
            if _netns:
                raise ValueError("run the whole driver in the head's namespace instead")
            procs = _node.start_head(num_cpus=num_cpus, num_gpus=num_gpus, resources=resources,
                                     object_store_memory=object_store_memory, host=ip,
                                     port=port, embedded=True)
            handle = ClusterNode(procs, True, None)
            self.head_node = handle
            self.session_dir = procs.session_dir
        else:
            prefix = ["ip", "netns", "exec", _netns] if _netns else None
            procs = _node.start_worker_node(
                session_dir=self.session_dir, gcs_address=self.address or "", num_cpus=num_cpus,
                num_gpus=num_gpus, resources=resources, object_store_memory=object_store_memory,
                node_ip=ip, embedded=True, port=port, cmd_prefix=prefix)
            handle = ClusterNode(procs, False, _netns)
            self.worker_nodes.append(handle)
        for p in procs.procs:
            self._remember(p.pid)
        if wait:
            self._wait_joined(handle, 60)
        return handle

    def remove_node(self, node: ClusterNode, allow_graceful: bool = True) -> None:
        """Stop a node's raylet (and so its workers). allow_graceful=False: SIGKILL."""
        if node.removed:
            return
        node.removed = True
        if node in self.worker_nodes:
            self.worker_nodes.remove(node)
        kids = self._descendants(node.raylet.pid)
        if allow_graceful:
            _node._terminate(node.raylet, 10)
        else:
            _kill(node.raylet)
        self._reap(kids, 5 if allow_graceful else 3)
        self._clean_node(node)

    def wait_for_nodes(self, timeout: float = 30) -> None:
        """Wait until the GCS sees exactly this cluster's nodes alive (joins and deaths)."""
        deadline = time.monotonic() + timeout
        while True:
            want = {n.node_id for n in self.list_all_nodes()}
            alive = {n["NodeID"] for n in self.nodes() if n.get("Alive")}
            if alive == want:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out after {timeout} s waiting for the nodes: "
                                   f"{len(alive)} alive, {len(want)} expected")
            time.sleep(0.1)

    def shutdown(self) -> None:
        """Stop every node; remove every segment, socket file and process they left."""
        if self._down:
            return
        self._down = True
        self._disconnect_driver()
        nodes = [n for n in self.worker_nodes if not n.removed]
        kids: dict[int, float] = {}
        for n in nodes + ([self.head_node] if self.head_node else []):
            for p in n.procs.procs:
                kids.update(self._descendants(p.pid))
        # Raylets first, all at once (each stops its workers), then the GCS.
        for n in nodes:
            _signal_stop(n.raylet)
        for n in nodes:
            _wait_or_kill(n.raylet, 10)
            n.removed = True
            self._clean_node(n)
        self.worker_nodes = []
        if self.head_node is not None:
            self.head_node.procs.stop(10)  # raylet, GCS; removes the sockets dir and secret
            self.head_node.removed = True
        self._reap(kids, 5)
        if self.session_dir:
            sess = os.path.basename(self.session_dir.rstrip("/"))
            shm.remove_all(f"zray-{sess[-8:]}-")
            shutil.rmtree(os.path.join(self.session_dir, "sockets"), ignore_errors=True)
            shutil.rmtree(os.path.join(self.session_dir, "spill"), ignore_errors=True)

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.shutdown()

    # ----------------------------------------------------------- helpers
    def _disconnect_driver(self) -> None:
        from zray import api, worker_state

        cw = worker_state.current()
        if cw is not None and cw.mode == "driver" and cw.session_dir == self.session_dir:
            api.shutdown()

    def _wait_joined(self, node: ClusterNode, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            self._check_alive(node)
            for n in self.nodes():
                if n.get("NodeID") == node.node_id and n.get("Alive"):
                    return
            if time.monotonic() > deadline:
                raise TimeoutError(f"node {node.node_id[:12]} did not join within {timeout} s; "
                                   f"see {self.session_dir}/logs")
            time.sleep(0.05)

    def _check_alive(self, node: ClusterNode | None) -> None:
        if node is not None and not node.procs.alive():
            raise RuntimeError(f"a process of node {node.node_id[:12]} died at start: "
                               f"{node.procs.dead_message()}; see {self.session_dir}/logs")

    def _remember(self, pid: int) -> None:
        try:
            import psutil

            self._pids[pid] = psutil.Process(pid).create_time()
        except Exception:
            pass

    def _descendants(self, pid: int) -> dict[int, float]:
        try:
            import psutil

            return {c.pid: c.create_time() for c in psutil.Process(pid).children(recursive=True)}
        except Exception:
            return {}

    def _reap(self, procs: dict[int, float], timeout: float) -> None:
        """Wait for processes (workers of a stopped raylet: they die with it); kill stragglers."""
        import psutil

        deadline = time.monotonic() + timeout
        left = dict(procs)
        while left:
            for pid, ct in list(left.items()):
                try:
                    p = psutil.Process(pid)
                    if p.create_time() != ct or p.status() == psutil.STATUS_ZOMBIE:
                        del left[pid]
                except psutil.NoSuchProcess:
                    del left[pid]
            if not left or time.monotonic() > deadline:
                break
            time.sleep(0.02)
        for pid in left:  # still there: the processes we started, identified by create time
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def _clean_node(self, node: ClusterNode) -> None:
        """What a node's raylet would have removed had it exited cleanly."""
        shm.remove_all(node.procs.shm_prefix)
        for path in (node.raylet_socket_name,):
            try:
                os.unlink(path)
            except OSError:
                pass
        shutil.rmtree(os.path.join(self.session_dir, "spill", node.node_id[:12]),
                      ignore_errors=True)
        _remove_stale_sockets(os.path.join(self.session_dir, "sockets"))


def _signal_stop(p: subprocess.Popen) -> None:
    if p.poll() is not None:
        return
    try:
        if p.stdin:
            p.stdin.close()
        p.send_signal(signal.SIGTERM)
    except (ProcessLookupError, OSError):
        pass


def _wait_or_kill(p: subprocess.Popen, timeout: float) -> None:
    try:
        p.wait(timeout)
    except subprocess.TimeoutExpired:
        _kill(p)


def _kill(p: subprocess.Popen) -> None:
    if p.poll() is None:
        try:
            p.kill()
        except ProcessLookupError:
            pass
    p.wait()
    if p.stdin:
        try:
            p.stdin.close()
        except OSError:
            pass


def _remove_stale_sockets(sock_dir: str) -> None:
    """Unlink worker socket files nobody listens on any more (their process was killed)."""
    try:
        names = os.listdir(sock_dir)
    except OSError:
        return
    for name in names:
        if not name.startswith("w-"):
            continue
        path = os.path.join(sock_dir, name)
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.settimeout(0.5)
            s.connect(path)
        except ConnectionRefusedError:
            try:
                os.unlink(path)
            except OSError:
                pass
        except OSError:
            pass
        finally:
            s.close()
