"""The `zray` command line on real processes: start, status, stop, up, down.

Every test keeps its sessions under a private, short session root
(ZRAY_SESSION_ROOT=/tmp/zrc-XXXX), so `zray stop` here never touches another
cluster of this machine, and checks afterwards that nothing of it is left: no
process, no socket file, no /dev/shm segment.

The ssh test plays a remote host with a network namespace joined to this one by
a veth pair (10.201.N.1 here, 10.201.N.2 there, on no other interface), with
Debian's sshd running inside it; it needs root, `ip` and /usr/sbin/sshd.
"""

from __future__ import annotations

import ast
import contextlib
import glob
import os
import random
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time

import psutil
import pytest
from zray_cli import cluster_config, launcher
from zray_cli import secret as secret_mod

CLI = [sys.executable, "-m", "zray_cli"]


# ------------------------------------------------------------------ helpers
def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def make_env(root: str, **extra) -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in ("ZRAY_ADDRESS", "RAY_ADDRESS", "ZRAY_CLUSTER_SECRET")}
    env["ZRAY_SESSION_ROOT"] = root
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def zray(root: str, *args: str, timeout: float = 60, check: bool = True, env_extra=None,
         input: str | None = None) -> subprocess.CompletedProcess:
    p = subprocess.run([*CLI, *args], env=make_env(root, **(env_extra or {})), text=True,
                       capture_output=True, timeout=timeout,
                       input=input)
    if check and p.returncode != 0:
        raise AssertionError(f"zray {' '.join(args)} failed ({p.returncode}):\n"
                             f"{p.stdout}\n{p.stderr}")
    return p


def procs_under(*roots: str) -> list[psutil.Process]:
    out = []
    for p in psutil.process_iter(["cmdline"]):
        cmd = " ".join(p.info["cmdline"] or [])
        if "zray" in cmd and any(r in cmd for r in roots):
            try:
                if p.status() != psutil.STATUS_ZOMBIE:
                    out.append(p)
            except psutil.Error:
                pass
    return out


def leftovers(*roots: str) -> list[str]:
    """Processes, socket files and /dev/shm segments of the sessions under roots."""
    left = [f"process {p.pid}: {' '.join(p.cmdline())[:100]}" for p in procs_under(*roots)]
    for root in roots:
        for s in glob.glob(os.path.join(root, "session_*")):
            if os.path.islink(s):
                continue
            left += [f"socket {f}" for f in glob.glob(os.path.join(s, "sockets", "*"))]
            token = os.path.basename(s)[-8:]
            left += [f"segment {f}" for f in glob.glob(f"/dev/shm/zray-{token}-*")]
    return left


def wait_gone(*roots: str, timeout: float = 10) -> list[str]:
    deadline = time.monotonic() + timeout
    while True:
        left = leftovers(*roots)
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.1)


@pytest.fixture
def session_root():
    root = tempfile.mkdtemp(prefix="zrc-", dir="/tmp")  # short: ipc paths are limited
    try:
        yield root
    finally:
        subprocess.run([*CLI, "stop", "--force"], env=make_env(root), timeout=60,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        shutil.rmtree(root, ignore_errors=True)


DRIVER = textwrap.dedent("""
    import sys, zray
    addr = sys.argv[1] if len(sys.argv) > 1 else None
    info = zray.init(address=addr) if addr else zray.init()

    @zray.remote
    def square(x):
        return x * x

    @zray.remote(resources={RESOURCE: 1})
    def where():
        return zray.get_runtime_context().get_node_id()

    print("SQUARES", sum(zray.get([square.remote(i) for i in range(20)], timeout=60)))
    print("NODES", sorted(n["NodeID"] for n in zray.nodes() if n["Alive"]))
    print("REMOTE_NODE", zray.get(where.remote(), timeout=60))
    print("GCS", info["gcs_address"])
    zray.shutdown()
""")


def run_driver(root: str, tmp_path, resource: str, *args: str, env_extra=None,
               timeout: float = 90) -> dict:
    path = tmp_path / "driver.py"
    path.write_text(DRIVER.replace("RESOURCE", repr(resource)))
    p = subprocess.run([sys.executable, str(path), *args], env=make_env(root, **(env_extra or {})),
                       text=True, capture_output=True, timeout=timeout, cwd=str(tmp_path))
    assert p.returncode == 0, f"driver failed:\n{p.stdout}\n{p.stderr}"
    out = {}
    for line in p.stdout.splitlines():
        key, _, val = line.partition(" ")
        out[key] = val
    return out


def node_ids(text: str) -> list[str]:
    return re.findall(r"\b[0-9a-f]{32}\b", text)


# ------------------------------------------------------- fast, no processes
def test_version_and_help():
    p = subprocess.run([*CLI, "--version"], text=True, capture_output=True, timeout=30)
    assert p.returncode == 0 and p.stdout.startswith("zray ")
    exe = shutil.which("zray", path=os.path.dirname(sys.executable) + os.pathsep +
                       os.environ.get("PATH", ""))
    if exe:
        p = subprocess.run([exe, "--help"], text=True, capture_output=True, timeout=30)
        for cmd in ("start", "stop", "status", "up", "down", "microbenchmark"):
            assert cmd in p.stdout


def test_secret_encoding(tmp_path):
    s = os.urandom(32)
    assert secret_mod.decode(s, "x") == s
    assert secret_mod.decode((s.hex() + "\n").encode(), "x") == s
    with pytest.raises(secret_mod.SecretError):
        secret_mod.decode(b"too short", "x")
    f = tmp_path / "sec"
    f.write_text(s.hex())
    os.chmod(f, 0o644)
    got, warning = secret_mod.read_file(str(f))
    assert got == s and "chmod 600" in warning
    os.chmod(f, 0o600)
    assert secret_mod.read_file(str(f)) == (s, None)


@pytest.mark.parametrize("doc, error", [
    ("provider: {type: local, head_ip: 1.2.3.4}", "cluster_name: missing"),
    ("cluster_name: c", "provider: missing"),
    ("cluster_name: c\nprovider: {type: local}", "provider.head_ip: missing"),
    ("cluster_name: c\nprovider: {head_ip: 1.2.3.4}", "provider.type: missing"),
    ("cluster_name: c\nprovider: {type: aws, head_ip: 1.2.3.4}", "provider.type: 'aws'"),
    ("cluster_name: c\nprovider: {type: local, head_ip: 1.2.3.4, worker_ips: [5.6.7.8, 3]}",
     "provider.worker_ips[1]"),
    ("cluster_name: c\nprovider: {type: local, head_ip: 1.2.3.4, head_port: 99999}",
     "provider.head_port"),
    ("cluster_name: c\nprovider: {type: local, head_ip: 1.2.3.4}\nauth: {ssh_key: k}",
     "auth.ssh_key: unknown field"),
    ("cluster_name: c\nprovider: {type: local, head_ip: 1.2.3.4}\nauth: {ssh_private_key: /no/such}",
     "auth.ssh_private_key: /no/such: no such file"),
    ("cluster_name: c\nprovider: {type: local, head_ip: 1.2.3.4}\nsetup_commands: [ls, {a: 1}]",
     "setup_commands[1]"),
    ("cluster_name: c\nprovider: {type: local, head_ip: 1.2.3.4}\nbogus: 1", "bogus: unknown field"),
    ("cluster_name: c\nprovider: {type: local, head_ip: 1.2.3.4}\nhead_port: 7000\n"
     "head_start_ray_commands: ['ray start --head --port=7001']", "head_start_ray_commands"),
    ("[1, 2]", "(top level)"),
])
def test_cluster_yaml_errors_name_the_field(doc, error):
    import yaml

    with pytest.raises(cluster_config.ConfigError) as ei:
        cluster_config.parse(yaml.safe_load(doc))
    assert error in str(ei.value)


def test_cluster_yaml_translation():
    import yaml

    cfg = cluster_config.parse(yaml.safe_load(textwrap.dedent("""
        cluster_name: demo
        max_workers: 2
        provider: {type: local, head_ip: 10.0.0.1, worker_ips: [10.0.0.2]}
        auth: {ssh_user: ubuntu}
        setup_commands: ["pip install -U ray"]
        head_start_ray_commands:
          - ray stop
          - ray start --head --port=6380 --autoscaling-config=~/ray_bootstrap_config.yaml
        worker_start_ray_commands:
          - ray stop
          - ray start --address=$RAY_HEAD_IP:6380
    """)))
    assert cfg.head_port == 6380 and cfg.head_address == "10.0.0.1:6380"
    assert cfg.setup_commands == ["pip install -U ray"]  # not a `ray` command: untouched
    assert cfg.head_start_commands[0] == "zray stop --port=6380"  # never other clusters
    assert cfg.head_start_commands[1].startswith("zray start --head --port=6380")
    assert "--host=10.0.0.1" in cfg.head_start_commands[1]
    w = cluster_config.worker_commands(cfg, "10.0.0.2")
    assert w == ["zray stop --port=6380",
                 "zray start --address=$RAY_HEAD_IP:6380 --node-ip-address=10.0.0.2"]
    default = cluster_config.parse({"cluster_name": "d", "provider": {
        "type": "local", "head_ip": "127.0.0.1", "worker_ips": ["127.0.0.1"]}})
    assert default.head_port == 6379
    assert any("--head" in c and "--port=6379" in c for c in default.head_start_commands)


def test_up_reports_config_errors_naming_the_field(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("cluster_name: x\nprovider:\n  type: local\n")
    p = subprocess.run([*CLI, "up", str(bad), "--yes"], text=True, capture_output=True,
                       timeout=30, env=make_env("/tmp/zrc-unused-root"))
    assert p.returncode != 0
    assert "provider.head_ip: missing" in p.stdout + p.stderr


# ------------------------------------------------------- real processes
def test_start_errors(session_root):
    p = zray(session_root, "start", check=False)
    assert p.returncode != 0 and "--head" in p.stderr
    p = zray(session_root, "start", "--head", "--resources", "[1]", check=False)
    assert p.returncode != 0 and "--resources" in p.stdout + p.stderr
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        p = zray(session_root, "start", "--head", f"--port={port}", check=False)
        assert p.returncode != 0 and f"127.0.0.1:{port}" in p.stderr
    # Nothing runs at that address, and this machine has no session of it: no secret.
    p = zray(session_root, "start", f"--address=127.0.0.1:{port}", check=False)
    assert p.returncode != 0 and "secret" in p.stderr
    p = zray(session_root, "status", check=False)
    assert p.returncode != 0 and "no running zray cluster" in p.stderr
    p = zray(session_root, "stop")
    assert "No zray processes" in p.stdout
    assert not leftovers(session_root)


@pytest.mark.slow
def test_start_head_and_worker_drivers_status_stop(session_root, tmp_path):
    port = free_port()
    addr = f"127.0.0.1:{port}"
    p = zray(session_root, "start", "--head", f"--port={port}", "--num-cpus=2")
    assert f'zray.init(address="{addr}")' in p.stdout
    assert f"zray start --address={addr}" in p.stdout
    head_id = node_ids(p.stdout)[0]
    p = zray(session_root, "start", f"--address={addr}", "--num-cpus=1",
             '--resources={"side": 1}')
    worker_id = node_ids(p.stdout)[0]
    # The CLI has exited; its processes live on, detached.
    assert len(procs_under(session_root)) >= 3

    p = zray(session_root, "status")
    assert head_id in p.stdout and worker_id in p.stdout, p.stdout
    assert "2 nodes alive" in p.stdout
    assert "side 0/1" in p.stdout and "0/3 CPU" in p.stdout
    p2 = zray(session_root, "status", f"--address={addr}")
    assert worker_id in p2.stdout

    # Drivers: address="auto", an explicit address, and ZRAY_ADDRESS.
    want = sorted([head_id, worker_id])
    for args, extra in ((["auto"], None), ([addr], None), ([], {"ZRAY_ADDRESS": addr})):
        out = run_driver(session_root, tmp_path, "side", *args, env_extra=extra)
        assert out["SQUARES"] == str(sum(i * i for i in range(20)))
        assert out["NODES"] == str(want)
        assert out["REMOTE_NODE"] == worker_id  # the custom resource lives on the worker
        assert out["GCS"] == addr

    session = os.path.realpath(os.path.join(session_root, "session_latest"))
    assert os.path.exists(os.path.join(session, "pids", f"gcs-{head_id[:12]}.json"))
    p = zray(session_root, "stop")
    assert "gcs" in p.stdout and "raylet" in p.stdout and "Stopped" in p.stdout
    assert "SIGKILL" not in p.stdout  # SIGTERM was enough: every process shut down cleanly
    assert wait_gone(session_root, timeout=5) == []
    # Stopped sessions keep their logs, lose their secret, and are not found any more.
    assert os.path.isdir(os.path.join(session, "logs"))
    assert not os.path.exists(os.path.join(session, "secret"))
    assert not os.path.lexists(os.path.join(session_root, "session_latest"))
    p = zray(session_root, "status", check=False)
    assert p.returncode != 0
    p = zray(session_root, "stop")
    assert "No zray processes" in p.stdout


def test_stop_cleans_up_after_sigkill(session_root):
    """A raylet killed with SIGKILL leaves workers, sockets and segments: stop takes them."""
    port = free_port()
    zray(session_root, "start", "--head", f"--port={port}", "--num-cpus=1")
    session = os.path.realpath(os.path.join(session_root, "session_latest"))
    token = os.path.basename(session)[-8:]
    stray = f"/dev/shm/zray-{token}-deadbeef-0000"
    with open(stray, "wb") as f:
        f.write(b"x")
    raylets = [p for p in procs_under(session_root)
               if "zray.raylet" in " ".join(p.cmdline()) and p.ppid() not in
               {q.pid for q in procs_under(session_root)}]
    assert raylets
    for r in raylets:
        r.send_signal(signal.SIGKILL)
    p = zray(session_root, "stop", "--grace-period=2")
    assert "gcs" in p.stdout
    assert wait_gone(session_root, timeout=5) == []
    assert not os.path.exists(stray)


def test_stop_port_stops_only_that_cluster(session_root):
    """`zray stop --port N` (and so `zray up`/`down`) leaves this user's other clusters alone."""
    a, b = free_port(), free_port()
    zray(session_root, "start", "--head", f"--port={a}", "--num-cpus=1")
    zray(session_root, "start", "--head", f"--port={b}", "--num-cpus=1")

    def gcs_ports() -> set[int]:
        found = set()
        for p in procs_under(session_root):
            cmd = p.cmdline()
            if "zray.gcs" in cmd and "--port" in cmd:
                found.add(int(cmd[cmd.index("--port") + 1]))
        return found

    assert gcs_ports() == {a, b}
    p = zray(session_root, "stop", f"--port={a}", "--grace-period=5")
    assert "gcs" in p.stdout
    deadline = time.monotonic() + 10
    while gcs_ports() != {b} and time.monotonic() < deadline:
        time.sleep(0.1)
    assert gcs_ports() == {b}
    st = zray(session_root, "status", f"--address=127.0.0.1:{b}")
    assert "1" in st.stdout  # the other cluster still answers
    zray(session_root, "stop", "--grace-period=5")
    assert wait_gone(session_root, timeout=10) == []


@pytest.mark.slow
def test_up_down_local_provider(session_root, tmp_path):
    port = free_port()
    marker = tmp_path / "setup-ran"
    cfg = tmp_path / "local.yaml"
    cfg.write_text(textwrap.dedent(f"""
        cluster_name: zrc-local
        provider:
          type: local
          head_ip: 127.0.0.1
          worker_ips: [127.0.0.1]
        head_port: {port}
        setup_commands:
          - echo ran >> {marker}
        head_start_ray_commands:
          - ray stop
          - ray start --head --port={port} --num-cpus=1
        worker_start_ray_commands:
          - ray stop
          - ray start --address=$RAY_HEAD_IP:{port} --num-cpus=1 --resources='{{"w":1}}'
    """))
    p = zray(session_root, "up", str(cfg), "--yes", timeout=120)
    out = p.stdout
    assert "head 127.0.0.1" in out and "worker 127.0.0.1" in out, out
    assert "2 nodes alive" in out and "is up" in out, out
    assert marker.read_text() == "ran\n"  # once for this machine, not once per node
    p = zray(session_root, "status")
    ids = node_ids(p.stdout)
    assert len(ids) == 2
    res = run_driver(session_root, tmp_path, "w", f"127.0.0.1:{port}")
    assert res["REMOTE_NODE"] in ids
    p = zray(session_root, "down", str(cfg), "--yes", timeout=120)
    assert "is down" in p.stdout
    assert wait_gone(session_root, timeout=5) == []


# ---------------------------------------------------- over ssh, in a netns
def _sh(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(list(args), capture_output=True, text=True, timeout=30, check=check)


@contextlib.contextmanager
def remote_host(tmp_path):
    """A network namespace with sshd: yields (host_ip, remote_ip, key, remote_root)."""
    if os.geteuid() != 0:
        pytest.skip("needs root (ip netns)")
    if not shutil.which("ip") or not os.path.exists("/usr/sbin/sshd") or not shutil.which("ssh"):
        pytest.skip("needs iproute2, openssh-server and openssh-client")
    tag = secrets.token_hex(3)
    ns, va, vb = f"zrc{tag}", f"zra{tag}", f"zrb{tag}"
    used = _sh("ip", "-o", "addr").stdout
    free = [n for n in range(100, 250) if f"10.201.{n}." not in used]
    n = random.choice(free)
    host_ip, remote_ip = f"10.201.{n}.1", f"10.201.{n}.2"
    sshd = None
    remote_root = tempfile.mkdtemp(prefix="zrr-", dir="/tmp")
    try:
        if _sh("ip", "netns", "add", ns, check=False).returncode != 0:
            pytest.skip("cannot create a network namespace here")
        _sh("ip", "link", "add", va, "type", "veth", "peer", "name", vb)
        _sh("ip", "link", "set", vb, "netns", ns)
        _sh("ip", "addr", "add", f"{host_ip}/24", "dev", va)
        _sh("ip", "link", "set", va, "up")
        _sh("ip", "netns", "exec", ns, "ip", "addr", "add", f"{remote_ip}/24", "dev", vb)
        _sh("ip", "netns", "exec", ns, "ip", "link", "set", vb, "up")
        _sh("ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up")
        d = tmp_path / "ssh"
        d.mkdir()
        _sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / "host_key"))
        _sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / "id_ed25519"))
        shutil.copy(d / "id_ed25519.pub", d / "authorized_keys")
        path = os.path.dirname(sys.executable) + ":/usr/local/sbin:/usr/local/bin:/usr/sbin:" \
            "/usr/bin:/sbin:/bin"
        (d / "sshd_config").write_text(textwrap.dedent(f"""
            ListenAddress {remote_ip}
            Port 22
            HostKey {d}/host_key
            PidFile {d}/sshd.pid
            AuthorizedKeysFile {d}/authorized_keys
            PermitRootLogin prohibit-password
            PasswordAuthentication no
            KbdInteractiveAuthentication no
            UsePAM no
            StrictModes no
            SetEnv PATH={path} ZRAY_SESSION_ROOT={remote_root}
        """))
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
        with open(d / "sshd.log", "wb") as log:
            sshd = subprocess.Popen(["ip", "netns", "exec", ns, "/usr/sbin/sshd", "-D", "-e",
                                     "-f", str(d / "sshd_config")],
                                    stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 15
        while True:
            with socket.socket() as s:
                s.settimeout(0.5)
                if s.connect_ex((remote_ip, 22)) == 0:
                    break
            if sshd.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"sshd did not come up: {(d / 'sshd.log').read_text()}")
            time.sleep(0.1)
        yield host_ip, remote_ip, str(d / "id_ed25519"), remote_root
    finally:
        subprocess.run([*CLI, "stop", "--force"], env=make_env(remote_root), timeout=60,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if sshd is not None:
            sshd.terminate()
            try:
                sshd.wait(5)
            except subprocess.TimeoutExpired:
                sshd.kill()
                sshd.wait(5)
        _sh("ip", "link", "del", va, check=False)
        _sh("ip", "netns", "del", ns, check=False)
        shutil.rmtree(remote_root, ignore_errors=True)


@pytest.mark.slow
@pytest.mark.netns
def test_up_down_with_a_worker_over_ssh(session_root, tmp_path):
    with remote_host(tmp_path) as (host_ip, remote_ip, key, remote_root):
        port = free_port(host_ip)
        cfg = tmp_path / "ssh.yaml"
        cfg.write_text(textwrap.dedent(f"""
            cluster_name: zrc-ssh
            provider:
              type: local
              head_ip: {host_ip}
              worker_ips: [{remote_ip}]
              head_port: {port}
            auth:
              ssh_user: root
              ssh_private_key: {key}
            setup_commands:
              - test -n "$ZRAY_HEAD_IP"
            worker_start_ray_commands:
              - ray stop
              - ray start --address=$RAY_HEAD_IP:{port} --num-cpus=1 --resources='{{"remote":1}}'
        """))
        p = zray(session_root, "up", str(cfg), "--yes", timeout=120)
        assert f"worker {remote_ip}" in p.stdout and "2 nodes alive" in p.stdout, p.stdout
        assert "beyond loopback" in p.stdout + p.stderr  # the head's warning, shown by up
        # The remote node: its own session root (sshd's SetEnv), its own secret copy,
        # and the secret in no process's command line or environment.
        remote = procs_under(remote_root)
        assert remote, "no zray process runs in the namespace"
        secret = secret_mod.read_session(os.path.join(session_root, "session_latest"))
        for proc in remote + procs_under(session_root):
            assert secret.hex() not in " ".join(proc.cmdline())
            with open(f"/proc/{proc.pid}/environ", "rb") as f:
                assert b"ZRAY_CLUSTER_SECRET" not in f.read()
        rsession = os.path.realpath(os.path.join(remote_root, "session_latest"))
        assert secret_mod.read_session(rsession) == secret
        assert os.stat(os.path.join(rsession, "secret")).st_mode & 0o777 == 0o600

        p = zray(session_root, "status")
        assert remote_ip in p.stdout and host_ip in p.stdout
        res = run_driver(session_root, tmp_path, "remote", f"{host_ip}:{port}")
        nodes = ast.literal_eval(res["NODES"])
        assert len(nodes) == 2 and res["REMOTE_NODE"] in nodes
        # On the remote host, `zray status` and a driver with address="auto" find the
        # node's own session (its secret copy, the head's GCS address).
        ssh = launcher.SshRunner(remote_ip, "root", key)
        r = ssh.run("zray status", timeout=60)
        assert r.returncode == 0 and "2 nodes alive" in r.output, r.output
        drv = tmp_path / "driver.py"  # /tmp is shared with the namespace
        r = ssh.run(f"cd /tmp && python {drv} auto", timeout=90)
        assert r.returncode == 0, r.output
        assert f"NODES {res['NODES']}" in r.output and f"GCS {host_ip}:{port}" in r.output
        p = zray(session_root, "down", str(cfg), "--yes", timeout=120)
        assert "is down" in p.stdout
        assert wait_gone(session_root, remote_root, timeout=10) == []
