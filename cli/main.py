"""The `zray` command: start, stop, status, up, down, secret, microbenchmark."""

from __future__ import annotations

import json
import signal
import sys
import time

import typer
from rich.console import Console

try:
    import zray.config  # noqa: F401  (a bad ZRAY_* setting is reported here, not as a traceback)
except ValueError as _e:
    if not str(_e).startswith("ZRAY_"):
        raise
    sys.stderr.write(f"Error: {_e}\n")
    sys.exit(2)

from zray_cli import netutil, sessions  # noqa: E402
from zray_cli import secret as secret_mod

app = typer.Typer(name="zray", no_args_is_help=True, add_completion=False,
                  help="zray: a Ray-compatible runtime for Python tasks and actors, on ZeroMQ.")


def _console(stderr: bool = False) -> Console:
    # Not a terminal (a pipe, a test): wide, so that tables are not wrapped.
    out = sys.stderr if stderr else sys.stdout
    return Console(file=out, width=None if out.isatty() else 160, highlight=False)


def _warn(msg: str) -> None:
    _console(stderr=True).print(f"[bold yellow]Warning:[/bold yellow] {msg}", soft_wrap=True)


def _fail(msg: str, code: int = 1) -> typer.Exit:
    _console(stderr=True).print(f"[bold red]Error:[/bold red] {msg}", soft_wrap=True)
    return typer.Exit(code)


def _version(value: bool) -> None:
    if value:
        import zray

        typer.echo(f"zray {zray.__version__}")
        raise typer.Exit()


@app.callback()
def _main(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="Show the version and exit.")) -> None:
    pass


# ------------------------------------------------------------------ start
_RAY_IGNORED = ["--autoscaling-config", "--dashboard-host", "--dashboard-port",
                "--include-dashboard", "--object-manager-port", "--metrics-export-port",
                "--min-worker-port", "--max-worker-port", "--ray-client-server-port",
                "--redis-password", "--log-style", "--log-color", "--plasma-directory",
                "--system-config", "--temp-dir", "--dashboard-agent-listen-port"]


def _parse_resources(text: str | None) -> dict:
    if not text:
        return {}
    try:
        v = json.loads(text)
    except ValueError as e:
        raise typer.BadParameter(f"not valid JSON: {e}", param_hint="--resources")
    if not isinstance(v, dict) or not all(isinstance(k, str) and isinstance(x, (int, float))
                                          and not isinstance(x, bool) and x >= 0
                                          for k, x in v.items()):
        raise typer.BadParameter('expected a JSON object of names to non-negative numbers, '
                                 'e.g. \'{"GPU_TYPE_A": 1}\'', param_hint="--resources")
    if "CPU" in v or "GPU" in v:
        raise typer.BadParameter("use --num-cpus / --num-gpus for CPU and GPU",
                                 param_hint="--resources")
    return v


def _connect_help(c: Console, gcs: str, session_dir: str, loopback: bool) -> None:
    c.print("\n[bold]Next steps[/bold]")
    c.print("  To connect a driver on this machine:")
    c.print("    [cyan]import zray[/cyan]")
    c.print(f'    [cyan]zray.init(address="{gcs}")[/cyan]   '
            '(or address="auto", or the ZRAY_ADDRESS variable)')
    c.print("  To add another node on this machine:")
    c.print(f"    [cyan]zray start --address={gcs}[/cyan]")
    if loopback:
        c.print("  Other machines cannot join: this head listens on loopback only. Start it with "
                "--host=<an IP of this machine> to accept them.")
    else:
        c.print("  To add a node on another machine, give it the cluster secret (never on a "
                "command line):")
        c.print("    [cyan]zray secret | ssh OTHER 'umask 077 && cat > ~/.zray-secret'[/cyan]")
        c.print(f"    [cyan]ssh OTHER zray start --address={gcs} "
                "--secret-file=~/.zray-secret[/cyan]")
        c.print("    (or set ZRAY_CLUSTER_SECRET to the hex digits `zray secret` prints)")
    c.print("  To see the cluster: [cyan]zray status[/cyan]    To stop it: [cyan]zray stop[/cyan]")
    c.print(f"  Logs: {session_dir}/logs")


def _check_extra(args: list[str]) -> None:
    """Ray flags zray has no use for are accepted with a warning; anything else is an error."""
    i = 0
    while i < len(args):
        a = args[i]
        name = a.split("=", 1)[0]
        if name not in _RAY_IGNORED:
            raise _fail(f"no such option: {a}")
        if "=" not in a and i + 1 < len(args) and not args[i + 1].startswith("--") \
                and name != "--include-dashboard":
            i += 1
        _warn(f"{name} is a Ray option zray does not use; ignored.")
        i += 1


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def start(
    ctx: typer.Context,
    head: bool = typer.Option(False, "--head", help="Start a new cluster: GCS and raylet."),
    address: str | None = typer.Option(None, "--address",
                                          help="Join the cluster whose GCS is at HOST:PORT."),
    port: int = typer.Option(6379, "--port", help="The GCS's port (--head)."),
    host: str | None = typer.Option(
        None, "--host", help="Address the head listens on (default 127.0.0.1). Anything but "
                             "loopback lets other machines in, guarded by the cluster secret."),
    node_ip_address: str | None = typer.Option(
        None, "--node-ip-address", help="This node's IP address (default: the one that routes "
                                        "to the head)."),
    num_cpus: int | None = typer.Option(
        None, "--num-cpus", min=0, help="CPUs this node offers to tasks (default: all cores)."),
    num_gpus: int | None = typer.Option(
        None, "--num-gpus", min=0, help="GPUs this node offers (default: those detected)."),
    resources: str | None = typer.Option(None, "--resources",
                                            help='Custom resources, JSON: \'{"name": 1}\''),
    object_store_memory: int | None = typer.Option(None, "--object-store-memory", min=1,
                                                      help="Object store capacity, bytes."),
    secret_file: str | None = typer.Option(
        None, "--secret-file", help="File holding the cluster secret (hex or raw), '-' for "
                                    "stdin. Default: $ZRAY_CLUSTER_SECRET, or the local session "
                                    "of the cluster at --address."),
    node_manager_port: int = typer.Option(0, "--node-manager-port",
                                          help="The raylet's TCP port (default: any free one)."),
    block: bool = typer.Option(False, "--block",
                               help="Stay in the foreground; stop the node on Ctrl-C/SIGTERM."),
) -> None:
    """Start zray on this machine: a new cluster (--head) or a node joining one (--address)."""
    _check_extra(ctx.args)
    c = _console()
    for flag, value in (("--port", port), ("--node-manager-port", node_manager_port)):
        if not 0 <= value <= 65535:
            raise _fail(f"{flag} {value} is not a TCP port: expected 0 to 65535 "
                        "(0 picks a free one).")
    if head == bool(address):
        raise _fail("pass --head to start a new cluster, or --address=HOST:PORT to join one.")
    res = _parse_resources(resources)
    from zray_cli import starter

    try:
        if head:
            if secret_file:
                raise _fail("--secret-file is for joining nodes: a head makes a new secret.")
            h = host or node_ip_address or "127.0.0.1"
            if node_ip_address and host and netutil.resolve(host) != netutil.resolve(node_ip_address):
                raise _fail("--host and --node-ip-address differ: a head listens on its node IP.")
            try:
                h = netutil.resolve(h)
            except OSError as e:
                raise _fail(f"--host {h}: {e}")
            if h in ("0.0.0.0", "::"):
                raise _fail("--host must be one address of this machine (it is also the address "
                            "other nodes and drivers connect to), not a wildcard.")
            if not netutil.is_local(h):
                raise _fail(f"--host {h} is not an address of this machine.")
            loopback = netutil.is_loopback(h)
            if not loopback:
                _warn(f"the cluster listens on {h}, beyond loopback: anyone who can reach this "
                      "address can connect, and only the cluster secret keeps them out "
                      "(messages are authenticated, not encrypted).")
            with c.status("Starting the GCS and the raylet..."):
                st = starter.start_head(host=h, port=port, num_cpus=num_cpus, num_gpus=num_gpus,
                                        resources=res, object_store_memory=object_store_memory)
            if st.session_reused:
                c.print("[green]Restored the crashed GCS of this session from its gcs.sqlite"
                        "[/green] (detached actors, named actors, KV and nodes).")
            else:
                c.print("[green]zray runtime started.[/green]")
            c.print(f"  Head node: {st.procs.node_id.hex()} at {st.procs.node_ip}")
            c.print(f"  GCS address: [bold]{st.gcs_address}[/bold]")
            c.print(f"  Session: {st.procs.session_dir}", soft_wrap=True)
            _connect_help(c, st.gcs_address, st.procs.session_dir, loopback)
        else:
            if host:
                raise _fail("--host is for --head; a joining node takes --node-ip-address.")
            try:
                gh, gp = netutil.parse_address(address)
                gcs = f"{netutil.resolve(gh)}:{gp}"
            except (ValueError, OSError) as e:
                raise _fail(f"--address: {e}")
            secret = None
            if secret_file:
                try:
                    secret, warning = secret_mod.read_file(secret_file)
                except secret_mod.SecretError as e:
                    raise _fail(str(e))
                if warning:
                    _warn(warning)
            try:
                env_secret = secret_mod.from_env()
            except secret_mod.SecretError as e:
                raise _fail(str(e))
            secret = secret or env_secret
            node_ip = node_ip_address or netutil.ip_toward(gh)
            if not netutil.is_local(node_ip):
                raise _fail(f"--node-ip-address {node_ip} is not an address of this machine.")
            with c.status(f"Joining the cluster at {gcs}..."):
                st = starter.start_worker(address=gcs, secret=secret, node_ip=node_ip,
                                          port=node_manager_port, num_cpus=num_cpus,
                                          num_gpus=num_gpus, resources=res,
                                          object_store_memory=object_store_memory)
            c.print("[green]zray runtime started.[/green]")
            c.print(f"  Node: {st.procs.node_id.hex()} at {st.procs.node_ip}, joined the cluster "
                    f"at [bold]{gcs}[/bold]")
            c.print(f"  Session: {st.procs.session_dir}", soft_wrap=True)
            c.print("  To stop it: [cyan]zray stop[/cyan]")
    except (starter.StartError, starter.node.SessionDirError) as e:
        raise _fail(str(e))
    if block:
        _block(st)


def _block(st) -> None:
    from zray_cli import starter

    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    signal.signal(signal.SIGINT, lambda *_: stop.append(1))
    while not stop and st.procs.alive():
        time.sleep(0.5)
    died = not st.procs.alive()
    msg = st.procs.dead_message()
    starter.abort(st.procs, own_session=not st.session_reused)
    if died:
        raise _fail(f"a zray process died: {msg}")


# ------------------------------------------------------------------- stop
@app.command()
def stop(
    force: bool = typer.Option(False, "--force", "-f", help="SIGKILL at once."),
    grace_period: float = typer.Option(10.0, "--grace-period", "-g", min=0,
                                       help="Seconds between SIGTERM and SIGKILL."),
    port: int | None = typer.Option(
        None, "--port", help="Only the cluster whose GCS listens on this port (its head and "
                             "the nodes of it on this machine); default: every cluster."),
) -> None:
    """Stop every zray process of this user on this machine (sessions under the session root)."""
    from zray_cli import launcher, stopper

    rep = stopper.stop_all(force=force, grace_period=grace_period, port=port)
    c = _console()
    if not rep.stopped:
        c.print("No zray processes found.")
    else:
        by_session: dict[str, list] = {}
        for role, pid, s in rep.stopped:
            by_session.setdefault(s, []).append((role, pid))
        for s, procs in by_session.items():
            named = [f"{r} {p}" for r, p in procs if r != "worker"]
            nw = sum(1 for r, _ in procs if r == "worker")
            if nw:
                named.append(f"{nw} worker{'s' if nw > 1 else ''}")
            c.print(f"{s}: {', '.join(named)}")
        c.print(f"[green]{launcher.summary(rep).capitalize()}.[/green]"
                + (f" {len(rep.killed)} needed SIGKILL." if rep.killed else "")
                + (f" Removed {rep.segments} shared-memory segments." if rep.segments else ""))
    if rep.failed:
        raise _fail(f"could not stop: {', '.join(map(str, rep.failed))}")


# ----------------------------------------------------------------- status
def _fmt(v: float, unit: str = "") -> str:
    if unit == "B" and v:
        gib = v / (1 << 30)
        return f"{gib:.2f}GiB" if gib >= 0.1 else f"{v / (1 << 20):.1f}MiB"
    return f"{v:g}"


def _used_total(n: dict, key: str, unit: str = "") -> str:
    total = n.get("Resources", {}).get(key)
    if total is None:
        return "-"
    avail = n.get("AvailableResources", {}).get(key, total)
    return f"{_fmt(total - avail, unit)}/{_fmt(total, unit)}"


def _client_for(address: str | None, secret_file: str | None):
    from zray_cli.gcs_client import GcsClient

    session = sessions.find(address or "auto")
    if session is not None:
        gcs = sessions.read_gcs_address(session)
        return GcsClient(secret_mod.read_session(session), gcs_tcp=gcs, session_dir=session), gcs
    if not address:
        raise _fail("no running zray cluster found on this machine (start one with "
                    "`zray start --head`, or pass --address).")
    secret = None
    try:
        if secret_file:
            secret, _ = secret_mod.read_file(secret_file)
        secret = secret or secret_mod.from_env(pop=False)
    except secret_mod.SecretError as e:
        raise _fail(str(e))
    if secret is None:
        raise _fail(f"no session of this machine belongs to the cluster at {address}; pass "
                    "--secret-file or set ZRAY_CLUSTER_SECRET to query it.")
    return GcsClient(secret, gcs_tcp=address), address


def print_status(c: Console, nodes: list[dict], gcs: str) -> None:
    from rich.table import Table

    alive = [n for n in nodes if n.get("Alive")]
    t = Table(title=f"zray cluster at {gcs}: {len(alive)} node{'s' if len(alive) != 1 else ''} "
                    f"alive, {len(nodes) - len(alive)} dead", title_justify="left")
    for col in ("Node ID", "Address", "State", "CPU", "GPU", "Memory", "Object store",
                "Other resources"):
        t.add_column(col, no_wrap=col in ("Node ID", "Address"))
    std = {"CPU", "GPU", "memory", "object_store_memory"}
    for n in sorted(nodes, key=lambda n: (not n.get("IsHead"), not n.get("Alive"),
                                          n.get("NodeManagerAddress", ""))):
        other = ", ".join(f"{k} {_used_total(n, k)}" for k in sorted(n.get("Resources", {}))
                          if k not in std and not k.startswith("node:"))
        state = ("[green]ALIVE[/green]" if n.get("Alive") else
                 f"[red]DEAD[/red] {n.get('DeathReason', '')}".strip())
        t.add_row(n["NodeID"] + (" (head)" if n.get("IsHead") else ""),
                  n.get("NodeManagerAddress", ""), state, _used_total(n, "CPU"),
                  _used_total(n, "GPU"), _used_total(n, "memory", "B"),
                  _used_total(n, "object_store_memory", "B"), other or "-")
    c.print(t)
    totals: dict[str, list[float]] = {}
    for n in alive:
        for k, v in n.get("Resources", {}).items():
            if k.startswith("node:"):
                continue
            a = n.get("AvailableResources", {}).get(k, v)
            acc = totals.setdefault(k, [0.0, 0.0])
            acc[0] += v - a
            acc[1] += v
    c.print("[bold]Resources (used/total)[/bold]")
    for k in sorted(totals):
        used, total = totals[k]
        unit = "B" if k in ("memory", "object_store_memory") else ""
        c.print(f"  {_fmt(used, unit)}/{_fmt(total, unit)} {k}")


@app.command()
def status(
    address: str | None = typer.Option(None, "--address",
                                          help="GCS HOST:PORT (default: the local cluster)."),
    secret_file: str | None = typer.Option(None, "--secret-file",
                                              help="Cluster secret, for a cluster that has no "
                                                   "session on this machine."),
) -> None:
    """Print the cluster's nodes and their resources (used/total)."""
    from zray_cli.gcs_client import GcsUnreachable

    client, gcs = _client_for(address, secret_file)
    try:
        with client:
            nodes = client.nodes(timeout=5)
    except GcsUnreachable as e:
        raise _fail(f"{e}. Is the cluster running?")
    print_status(_console(), nodes, gcs)


# ----------------------------------------------------------------- secret
@app.command()
def secret(address: str | None = typer.Option(None, "--address",
                                                 help="GCS HOST:PORT (default: the newest "
                                                      "local cluster).")) -> None:
    """Print the cluster secret (hex), to hand to a node joining from another machine."""
    session = sessions.find(address or "auto")
    if session is None:
        raise _fail("no running zray cluster of this user on this machine"
                    + (f" has the address {address}" if address else "") + ".")
    typer.echo(secret_mod.encode(secret_mod.read_session(session)))


# -------------------------------------------------------------- up / down
def _load_config(path: str):
    from zray_cli import cluster_config, launcher

    try:
        cfg = cluster_config.load(path)
        head, workers = launcher.plan(cfg)
    except cluster_config.ConfigError as e:
        raise _fail(f"{path}: {e}")
    for w in cfg.warnings:
        _warn(f"{path}: {w}")
    return cfg, head, workers


@app.command()
def up(cluster_config_file: str = typer.Argument(..., metavar="CLUSTER.yaml"),
       yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation.")) -> None:
    """Start a cluster from a Ray cluster YAML (provider type: local)."""
    from zray_cli import launcher

    cfg, head, workers = _load_config(cluster_config_file)
    c = _console()
    c.print(f"Cluster [bold]{cfg.cluster_name}[/bold]: head {cfg.head_address} "
            f"({head.runner.where}), {len(workers)} worker node{'s' if len(workers) != 1 else ''}"
            + "".join(f"\n  {w.label} ({w.runner.where})" for w in workers))
    if not yes and not typer.confirm("Start it?", default=False):
        raise typer.Exit(1)
    ok = launcher.up(cfg, c)
    if head.runner.local and ok:
        from zray_cli.gcs_client import GcsClient

        s = launcher.local_head_session(cfg)
        if s:
            try:
                with GcsClient(secret_mod.read_session(s), session_dir=s,
                               gcs_tcp=cfg.head_address) as client:
                    print_status(c, client.nodes(timeout=5), cfg.head_address)
            except Exception as e:  # the cluster is up; the table is a courtesy
                c.print(f"(could not read the cluster's status: {e})")
    elif ok:
        r = head.runner.run(launcher.script(["zray status"], cfg.head_ip), timeout=60)
        c.print(r.output.rstrip(), markup=False, highlight=False, soft_wrap=True)
    if not ok:
        raise _fail(f"cluster {cfg.cluster_name}: some nodes failed to start (see above).")
    c.print(f'[green]Cluster {cfg.cluster_name} is up.[/green] Connect with '
            f'zray.init(address="{cfg.head_address}"); stop it with '
            f"`zray down {cluster_config_file}`.")


@app.command()
def down(cluster_config_file: str = typer.Argument(..., metavar="CLUSTER.yaml"),
         yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation.")) -> None:
    """Stop zray on every node of a cluster YAML (`zray stop` on each host)."""
    from zray_cli import launcher

    cfg, head, workers = _load_config(cluster_config_file)
    c = _console()
    if not yes and not typer.confirm(f"Stop zray on every node of cluster {cfg.cluster_name} "
                                     f"({1 + len(workers)} nodes)?", default=False):
        raise typer.Exit(1)
    if not launcher.down(cfg, c):
        raise _fail(f"cluster {cfg.cluster_name}: some nodes could not be stopped.")
    c.print(f"[green]Cluster {cfg.cluster_name} is down.[/green]")


# --------------------------------------------------------- microbenchmark
@app.command()
def microbenchmark(
    filter: str | None = typer.Option(None, "--filter",
                                         help="Only cases whose name contains this."),
    duration: float | None = typer.Option(None, "--duration",
                                             help="Timed seconds per case (over 4 trials)."),
    ray_timing: bool = typer.Option(False, "--ray-timing",
                                    help="Ray's exact schedule (10 s idle, 1 s warmup, 4x2 s)."),
    address: str | None = typer.Option(None, "--address",
                                          help="Run against this cluster (default: start one)."),
    list_cases: bool = typer.Option(False, "--list", help="List the case names."),
) -> None:
    """Ray's `ray microbenchmark` cases (same names and workloads), run on zray."""
    import zray
    from zray import microbenchmark as mb

    if list_cases:
        typer.echo("\n".join(mb.select_cases(filter)))
        return
    kw: dict = {}
    if ray_timing:
        kw.update(duration=mb.RAY_DURATION, warmup=mb.RAY_WARMUP, settle=mb.RAY_SETTLE)
    elif duration is not None:
        kw["duration"] = duration
    if address:
        kw["init_kwargs"] = {"address": address}
    results = mb.main(zray, filter, **kw)
    if len(results) != len(mb.select_cases(filter)):
        raise typer.Exit(1)


def main() -> None:  # pragma: no cover
    app(prog_name="zray")


if __name__ == "__main__":  # pragma: no cover
    main()
