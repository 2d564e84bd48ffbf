"""`zray up` / `zray down`: bring a cluster YAML's nodes up or down, locally or over ssh.

A node whose address belongs to this machine (loopback or an interface's
address) runs its commands here, in ``bash -c``; any other node over
``ssh -i KEY -o StrictHostKeyChecking=no ... USER@IP bash -c SCRIPT`` (Ray's
ssh options). The cluster secret reaches a joining node on the script's
standard input (``IFS= read -r ZRAY_CLUSTER_SECRET``), never on a command line
where ``ps`` shows it. Nodes sharing a host run one after another (only the
first runs ``zray stop``); hosts run in parallel.
"""

from __future__ import annotations

import shlex
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from zray_cli import netutil
from zray_cli import secret as secret_mod
from zray_cli.cluster_config import ClusterConfig, ConfigError, is_stop, worker_commands

from zray import config

SSH_OPTIONS = ["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
               "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes", "-o", "LogLevel=ERROR",
               "-o", "ConnectTimeout=10", "-o", "ServerAliveInterval=5",
               "-o", "ServerAliveCountMax=3"]
SSH_WAIT_S = config.env_number("ZRAY_SSH_WAIT_S", 60.0)
SETUP_TIMEOUT_S = config.env_number("ZRAY_SETUP_TIMEOUT_S", 1800.0)
START_TIMEOUT_S = config.env_number("ZRAY_UP_START_TIMEOUT_S", 180.0)


class NodeError(RuntimeError):
    pass


@dataclass
class Result:
    returncode: int
    output: str


class Runner:
    """Runs shell scripts on one node."""

    local = True

    def __init__(self, ip: str):
        self.ip = ip

    def argv(self, script: str) -> list[str]:
        # `zray` is this very installation, whatever PATH says.
        fn = f'zray() {{ {shlex.quote(sys.executable)} -m zray_cli "$@"; }}\n'
        return ["bash", "-c", fn + script]

    def run(self, script: str, stdin: bytes | None = None, timeout: float = 600) -> Result:
        try:
            p = subprocess.run(self.argv(script), input=stdin or b"", stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, timeout=timeout)
        except subprocess.TimeoutExpired as e:
            out = (e.output or b"").decode(errors="replace")
            return Result(124, out + f"\n(timed out after {timeout:g} s)")
        return Result(p.returncode, p.stdout.decode(errors="replace"))

    def wait_ready(self, timeout: float) -> None:
        pass

    @property
    def where(self) -> str:
        return "this machine"


class SshRunner(Runner):
    local = False

    def __init__(self, ip: str, user: str, key: str | None):
        super().__init__(ip)
        self.user = user
        self.key = key

    def argv(self, script: str) -> list[str]:
        a = ["ssh"]
        if self.key:
            a += ["-i", self.key]
        return a + SSH_OPTIONS + [f"{self.user}@{self.ip}", "bash -c " + shlex.quote(script)]

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            r = self.run("true", timeout=30)
            if r.returncode == 0:
                return
            if time.monotonic() > deadline:
                raise NodeError(f"ssh {self.user}@{self.ip} failed for {timeout:g} s: "
                                f"{r.output.strip()[-500:]}")
            time.sleep(1)

    @property
    def where(self) -> str:
        return f"ssh {self.user}@{self.ip}"


def script(cmds: list[str], head_ip: str, with_secret: bool = False) -> str:
    lines = ["set -e"]
    if with_secret:
        lines += ["IFS= read -r ZRAY_CLUSTER_SECRET", "export ZRAY_CLUSTER_SECRET"]
    q = shlex.quote(head_ip)
    lines.append(f"export RAY_HEAD_IP={q} ZRAY_HEAD_IP={q}")
    return "\n".join(lines + cmds) + "\n"


def tail(text: str, n: int = 20) -> str:
    return "\n".join(text.strip().splitlines()[-n:])


@dataclass
class Node:
    kind: str  # "head" or "worker"
    ip: str
    runner: Runner
    label: str
    run_stop: bool = True  # first node on its host
    setup: bool = True  # first node on its host runs the setup commands


def plan(cfg: ClusterConfig) -> tuple[Node, list[Node]]:
    """Runners for the head and each worker; ConfigError when this machine can't do it."""
    def runner(ip: str, where: str) -> Runner:
        if netutil.is_local(ip):
            return Runner(ip)
        if not cfg.ssh_user:
            raise ConfigError(f"auth.ssh_user: missing (needed to reach {where} {ip} over ssh)")
        return SshRunner(ip, cfg.ssh_user, cfg.ssh_private_key)

    head = Node("head", cfg.head_ip, runner(cfg.head_ip, "provider.head_ip"),
                f"head {cfg.head_ip}")
    hosts = {"local" if head.runner.local else head.ip}
    workers = []
    for i, ip in enumerate(cfg.worker_ips):
        r = runner(ip, f"provider.worker_ips[{i}]")
        key = "local" if r.local else ip
        first = key not in hosts
        hosts.add(key)
        label = f"worker {ip}" + (f" #{i + 1}" if cfg.worker_ips.count(ip) > 1 else "")
        workers.append(Node("worker", ip, r, label,
                            run_stop=first and not r.local, setup=first))
        if netutil.is_loopback(cfg.head_ip) and not r.local:
            raise ConfigError(f"provider.head_ip: {cfg.head_ip} is a loopback address, which "
                              f"the worker {ip} cannot reach; use an address of this machine "
                              "that the workers can reach")
    return head, workers


def _groups(workers: list[Node]) -> list[list[Node]]:
    out: dict[str, list[Node]] = {}
    for w in workers:
        out.setdefault("local" if w.runner.local else w.ip, []).append(w)
    return list(out.values())


class Ui:
    """Progress lines for each node (rich), plus a log line per state change."""

    def __init__(self, console, nodes: list[Node]):
        from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

        self.console = console
        self.progress = Progress(SpinnerColumn(), TextColumn("[bold]{task.description:<24}"),
                                 TextColumn("{task.fields[stage]}"), TimeElapsedColumn(),
                                 console=console, transient=False)
        self.tasks = {id(n): self.progress.add_task(n.label, total=None, stage="waiting")
                      for n in nodes}
        self.lock = threading.Lock()

    def stage(self, n: Node, text: str, done: bool = False) -> None:
        with self.lock:
            t = self.tasks[id(n)]
            self.progress.update(t, stage=text)
            if done:
                self.progress.update(t, total=1, completed=1)
            self.progress.console.print(f"  [dim]{n.label}:[/dim] {text}", highlight=False,
                                        soft_wrap=True)

    def __enter__(self):
        self.progress.__enter__()
        return self

    def __exit__(self, *exc):
        self.progress.__exit__(*exc)


def _setup(n: Node, cfg: ClusterConfig, ui: Ui) -> None:
    specific = cfg.head_setup_commands if n.kind == "head" else cfg.worker_setup_commands
    cmds = cfg.initialization_commands + cfg.setup_commands + specific if n.setup else []
    for i, c in enumerate(cmds, 1):
        ui.stage(n, f"setup {i}/{len(cmds)}: {c[:60]}")
        r = n.runner.run(script([c], cfg.head_ip), timeout=SETUP_TIMEOUT_S)
        if r.returncode != 0:
            raise NodeError(f"`{c}` failed with exit code {r.returncode}:\n{tail(r.output)}")


def _start(n: Node, cfg: ClusterConfig, cmds: list[str], secret: bytes | None, ui: Ui) -> str:
    if not n.run_stop:
        cmds = [c for c in cmds if not is_stop(c)]
    ui.stage(n, "starting zray")
    stdin = (secret_mod.encode(secret) + "\n").encode() if secret else None
    r = n.runner.run(script(cmds, cfg.head_ip, with_secret=secret is not None), stdin=stdin,
                     timeout=START_TIMEOUT_S)
    if r.returncode != 0:
        raise NodeError(f"starting zray failed (exit code {r.returncode}):\n{tail(r.output)}")
    for line in r.output.splitlines():
        if line.startswith("Warning:"):
            ui.stage(n, f"[yellow]{line}[/yellow]")
    return r.output


def local_head_session(cfg: ClusterConfig) -> str | None:
    from zray_cli import sessions

    try:
        ip = netutil.resolve(cfg.head_ip)
    except OSError:
        ip = cfg.head_ip
    return sessions.find(f"{ip}:{cfg.head_port}")


def head_secret(head: Node, cfg: ClusterConfig) -> bytes:
    if head.runner.local:
        s = local_head_session(cfg)
        if s is None:
            raise NodeError(f"the head started, but no session of this machine has the GCS "
                            f"address {cfg.head_address}")
        return secret_mod.read_session(s)
    r = head.runner.run(script([f"zray secret --address={shlex.quote(cfg.head_address)}"],
                               cfg.head_ip), timeout=60)
    lines = r.output.strip().splitlines()
    if r.returncode != 0 or not lines:
        raise NodeError(f"could not read the cluster secret on the head:\n{tail(r.output)}")
    try:
        return secret_mod.decode(lines[-1].encode(), "the output of `zray secret` on the head")
    except secret_mod.SecretError as e:
        raise NodeError(str(e)) from None


def up(cfg: ClusterConfig, console) -> bool:
    head, workers = plan(cfg)
    ok = True
    with Ui(console, [head, *workers]) as ui:
        try:
            if not head.runner.local:
                ui.stage(head, "waiting for ssh")
            head.runner.wait_ready(SSH_WAIT_S)
            _setup(head, cfg, ui)
            _start(head, cfg, cfg.head_start_commands, None, ui)
            secret = head_secret(head, cfg)
            ui.stage(head, f"[green]up[/green] (GCS at {cfg.head_address})", done=True)
        except NodeError as e:
            ui.stage(head, f"[red]failed[/red]: {e}", done=True)
            for w in workers:
                ui.stage(w, "not started (the head failed)", done=True)
            return False

        def bring_up(group: list[Node]) -> bool:
            good = True
            for w in group:
                try:
                    if not w.runner.local:
                        ui.stage(w, "waiting for ssh")
                    w.runner.wait_ready(SSH_WAIT_S)
                    _setup(w, cfg, ui)
                    _start(w, cfg, worker_commands(cfg, w.ip), secret, ui)
                    ui.stage(w, "[green]up[/green]", done=True)
                except NodeError as e:
                    ui.stage(w, f"[red]failed[/red]: {e}", done=True)
                    good = False
            return good

        groups = _groups(workers)
        if groups:
            with ThreadPoolExecutor(max_workers=min(16, len(groups))) as ex:
                ok = all(list(ex.map(bring_up, groups)))
    return ok


def down(cfg: ClusterConfig, console) -> bool:
    head, workers = plan(cfg)
    ok = True
    remote_hosts = {}
    for w in workers:
        if not w.runner.local:
            remote_hosts.setdefault(w.ip, w)
    nodes = list(remote_hosts.values())

    def stop_remote(n: Node) -> bool:
        r = n.runner.run(script([f"zray stop --port={cfg.head_port}"], cfg.head_ip), timeout=120)
        if r.returncode != 0:
            console.print(f"[red]{n.label}: zray stop failed ({r.returncode})[/red]\n"
                          f"{tail(r.output)}", highlight=False)
            return False
        console.print(f"{n.label}: {tail(r.output, 5) or 'stopped'}", highlight=False)
        return True

    if nodes:
        with ThreadPoolExecutor(max_workers=min(16, len(nodes))) as ex:
            ok = all(list(ex.map(stop_remote, nodes)))
    if head.runner.local or any(w.runner.local for w in workers):
        from zray_cli import stopper

        rep = stopper.stop_all(port=cfg.head_port)
        console.print(f"this machine: {summary(rep)}", highlight=False)
    if not head.runner.local:
        ok = stop_remote(head) and ok
    return ok


def summary(rep) -> str:
    if not rep.stopped:
        return "no zray processes were running"
    counts: dict[str, int] = {}
    for role, _pid, _s in rep.stopped:
        counts[role] = counts.get(role, 0) + 1
    parts = [f"{v} {k}{'s' if v > 1 else ''}" for k, v in sorted(counts.items())]
    return f"stopped {len(rep.stopped)} processes ({', '.join(parts)})"
