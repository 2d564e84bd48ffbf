"""Ray's cluster YAML for `zray up` / `zray down`, local provider: parse, validate, translate.

Every error names the field (``provider.head_ip: missing``). Ray's commands
are translated: ``ray start``/``ray stop``/... become ``zray ...``; a head's
``zray start --head`` without ``--host`` listens on ``head_ip`` (Ray's head
binds every interface; zray binds one, on purpose), and a node's
``zray start --address`` without ``--node-ip-address`` gets the node's IP.
"""

from __future__ import annotations

import ipaddress
import os
import re
import shlex
from dataclasses import dataclass, field

import yaml

DEFAULT_PORT = 6379

# Ray keys that are accepted and ignored (autoscaling, docker, syncing).
IGNORED = {"min_workers", "max_workers", "upscaling_speed", "idle_timeout_minutes",
           "available_node_types", "head_node_type", "head_node", "worker_nodes",
           "cluster_synced_files", "file_mounts_sync_continuously", "rsync_exclude",
           "rsync_filter", "no_restart", "docker", "file_mounts", "target_utilization_fraction",
           "autoscaling_mode", "initial_workers"}
COMMAND_LISTS = ("initialization_commands", "setup_commands", "head_setup_commands",
                 "worker_setup_commands", "head_start_ray_commands", "worker_start_ray_commands")
KNOWN = {"cluster_name", "provider", "auth", "head_port", *COMMAND_LISTS}
PROVIDER_KEYS = {"type", "head_ip", "worker_ips", "head_port", "external_head_ip",
                 "use_internal_ips"}
AUTH_KEYS = {"ssh_user", "ssh_private_key"}


class ConfigError(ValueError):
    pass


@dataclass
class ClusterConfig:
    path: str
    cluster_name: str
    head_ip: str
    worker_ips: list[str]
    head_port: int
    ssh_user: str | None
    ssh_private_key: str | None
    initialization_commands: list[str] = field(default_factory=list)
    setup_commands: list[str] = field(default_factory=list)
    head_setup_commands: list[str] = field(default_factory=list)
    worker_setup_commands: list[str] = field(default_factory=list)
    head_start_commands: list[str] = field(default_factory=list)
    worker_start_commands: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def head_address(self) -> str:
        return f"{self.head_ip}:{self.head_port}"


_RAY_CMD = re.compile(r"(?<![\w./-])ray(?=\s+(?:start|stop|status|up|down|microbenchmark)\b)")


def translate(cmd: str) -> str:
    """`ray start ...` -> `zray start ...` (and stop/status/up/down); other text untouched."""
    return _RAY_CMD.sub("zray", cmd)


def _ip(v, where: str) -> str:
    if not isinstance(v, str) or not v.strip():
        raise ConfigError(f"{where}: expected an IP address or host name, got {v!r}")
    v = v.strip()
    try:
        ipaddress.ip_address(v)
    except ValueError:
        if not re.fullmatch(r"[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?", v):
            raise ConfigError(f"{where}: {v!r} is not an IP address or host name") from None
    return v


def _port(v, where: str) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or not 0 < v < 65536:
        raise ConfigError(f"{where}: expected a port number (1-65535), got {v!r}")
    return v


def _commands(raw: dict, key: str) -> list[str]:
    v = raw.get(key)
    if v is None:
        return []
    if isinstance(v, str):
        v = [v]
    if not isinstance(v, list):
        raise ConfigError(f"{key}: expected a list of shell commands, got {type(v).__name__}")
    for i, c in enumerate(v):
        if not isinstance(c, str):
            raise ConfigError(f"{key}[{i}]: expected a string, got {c!r}")
    return [translate(c) for c in v]


def _port_in(cmds: list[str]) -> int | None:
    for c in cmds:
        if "zray start" not in c or "--head" not in c:
            continue
        m = re.search(r"--port(?:=|\s+)(\S+)", c)
        if m:
            try:
                return _port(int(m.group(1)), "head_start_ray_commands: --port")
            except ValueError:
                raise ConfigError(f"head_start_ray_commands: --port {m.group(1)!r} is not a "
                                  "port number") from None
    return None


def _add_flag(cmds: list[str], needle: str, absent: tuple[str, ...], flag: str) -> list[str]:
    """Append flag to each `zray start` command containing needle and none of absent."""
    out = []
    for c in cmds:
        if "zray start" in c and needle in c and not any(a in c for a in absent):
            c = re.sub(r"(zray start\b[^;&|\n]*)", lambda m: m.group(1).rstrip() + " " + flag,
                       c, count=1)
        out.append(c)
    return out


def load(path: str) -> ClusterConfig:
    try:
        with open(path) as f:
            raw = yaml.safe_load(f)
    except OSError as e:
        raise ConfigError(f"{path}: {e.strerror}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    return parse(raw, path)


def parse(raw, path: str = "<config>") -> ClusterConfig:
    if not isinstance(raw, dict):
        raise ConfigError("(top level): expected a mapping of fields, e.g. cluster_name: ...")
    warnings = []
    for k in raw:
        if k not in KNOWN and k not in IGNORED:
            raise ConfigError(f"{k}: unknown field")
        if k in IGNORED and raw[k] not in (None, {}, [], ""):
            warnings.append(f"{k}: not used by zray (ignored)")
    name = raw.get("cluster_name")
    if name is None:
        raise ConfigError("cluster_name: missing")
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
        raise ConfigError(f"cluster_name: {name!r} is not a valid name (letters, digits, _ . -)")

    prov = raw.get("provider")
    if prov is None:
        raise ConfigError("provider: missing")
    if not isinstance(prov, dict):
        raise ConfigError("provider: expected a mapping with type, head_ip, worker_ips")
    for k in prov:
        if k not in PROVIDER_KEYS:
            raise ConfigError(f"provider.{k}: unknown field")
    if "type" not in prov:
        raise ConfigError("provider.type: missing")
    if prov["type"] != "local":
        raise ConfigError(f"provider.type: {prov['type']!r} is not supported (only 'local')")
    if prov.get("head_ip") is None:
        raise ConfigError("provider.head_ip: missing")
    head_ip = _ip(prov["head_ip"], "provider.head_ip")
    wips = prov.get("worker_ips") or []
    if not isinstance(wips, list):
        raise ConfigError(f"provider.worker_ips: expected a list of addresses, got {wips!r}")
    worker_ips = [_ip(w, f"provider.worker_ips[{i}]") for i, w in enumerate(wips)]

    port = None
    for where, v in (("head_port", raw.get("head_port")),
                     ("provider.head_port", prov.get("head_port"))):
        if v is not None:
            p = _port(v, where)
            if port is not None and p != port:
                raise ConfigError(f"{where}: {p} differs from head_port {port}")
            port = p

    auth = raw.get("auth") or {}
    if not isinstance(auth, dict):
        raise ConfigError("auth: expected a mapping with ssh_user, ssh_private_key")
    for k in auth:
        if k not in AUTH_KEYS:
            raise ConfigError(f"auth.{k}: unknown field")
    user = auth.get("ssh_user")
    if user is not None and (not isinstance(user, str) or not user.strip()
                             or not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]*", user)):
        raise ConfigError(f"auth.ssh_user: {user!r} is not a user name")
    key = auth.get("ssh_private_key")
    if key is not None:
        if not isinstance(key, str):
            raise ConfigError(f"auth.ssh_private_key: expected a file path, got {key!r}")
        key = os.path.expanduser(key)
        if not os.path.isabs(key):
            key = os.path.join(os.path.dirname(os.path.abspath(path)), key)
        if not os.path.isfile(key):
            raise ConfigError(f"auth.ssh_private_key: {key}: no such file")

    cmds = {k: _commands(raw, k) for k in COMMAND_LISTS}
    in_cmd = _port_in(cmds["head_start_ray_commands"])
    if in_cmd is not None and port is not None and in_cmd != port:
        raise ConfigError(f"head_start_ray_commands: --port={in_cmd} differs from head_port {port}")
    port = port or in_cmd or DEFAULT_PORT

    head_start = _scope_stops(cmds["head_start_ray_commands"] or [
        "zray stop", f"zray start --head --port={port}"], port)
    if not any("zray start" in c and "--head" in c for c in head_start):
        raise ConfigError("head_start_ray_commands: no `ray start --head` (or `zray start "
                          "--head`) command")
    head_start = _add_flag(head_start, "--head", ("--host", "--node-ip-address"),
                           f"--host={shlex.quote(head_ip)}")
    if not any("--port" in c for c in head_start if "zray start" in c):
        head_start = _add_flag(head_start, "--head", ("--port",), f"--port={port}")
    worker_start = _scope_stops(cmds["worker_start_ray_commands"] or [
        "zray stop", f"zray start --address=$ZRAY_HEAD_IP:{port}"], port)
    if worker_ips and not any("zray start" in c for c in worker_start):
        raise ConfigError("worker_start_ray_commands: no `ray start --address=...` command")
    return ClusterConfig(
        path=os.path.abspath(path), cluster_name=name, head_ip=head_ip, worker_ips=worker_ips,
        head_port=port, ssh_user=user, ssh_private_key=key,
        initialization_commands=cmds["initialization_commands"],
        setup_commands=cmds["setup_commands"], head_setup_commands=cmds["head_setup_commands"],
        worker_setup_commands=cmds["worker_setup_commands"], head_start_commands=head_start,
        worker_start_commands=worker_start, warnings=warnings)


def worker_commands(cfg: ClusterConfig, ip: str) -> list[str]:
    """The start commands of the worker at ip, with its --node-ip-address filled in."""
    try:
        ipaddress.ip_address(ip)
    except ValueError:
        return list(cfg.worker_start_commands)  # a host name: the node finds its own IP
    return _add_flag(cfg.worker_start_commands, "--address", ("--node-ip-address",),
                     f"--node-ip-address={shlex.quote(ip)}")


def _scope_stops(cmds: list[str], port: int) -> list[str]:
    """`zray stop` -> `zray stop --port=N`: bringing a cluster up or down never stops this
    user's other clusters on the same machine (Ray's `ray stop` would)."""
    return [f"{c.rstrip()} --port={port}" if is_stop(c) and "--port" not in c else c
            for c in cmds]


def is_stop(cmd: str) -> bool:
    return bool(re.fullmatch(r"\s*zray stop\b.*", cmd))
