"""Which addresses belong to this machine, and which of ours reaches a peer."""

from __future__ import annotations

import ipaddress
import socket


def parse_address(address: str) -> tuple[str, int]:
    """'host:port' -> (host, port); raises ValueError naming the problem."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"invalid address {address!r}: expected HOST:PORT")
    return host.strip("[]"), int(port)


def resolve(host: str) -> str:
    if host == "localhost":
        return "127.0.0.1"
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return socket.gethostbyname(host)


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(resolve(host)).is_loopback
    except (OSError, ValueError):
        return False


def local_addresses() -> set[str]:
    import psutil

    out = set()
    for addrs in psutil.net_if_addrs().values():
        for a in addrs:
            if a.family in (socket.AF_INET, socket.AF_INET6):
                out.add(a.address.split("%")[0])
    return out


def is_local(host: str) -> bool:
    """Loopback, or an address of one of this machine's interfaces."""
    try:
        ip = resolve(host)
    except OSError:
        return False
    return ipaddress.ip_address(ip).is_loopback or ip in local_addresses()


def ip_toward(host: str) -> str:
    """The address of ours that the kernel would use to reach host (no packet is sent)."""
    ip = resolve(host)
    if ipaddress.ip_address(ip).is_loopback:
        return "127.0.0.1"
    fam = socket.AF_INET6 if ":" in ip else socket.AF_INET
    with socket.socket(fam, socket.SOCK_DGRAM) as s:
        s.connect((ip, 9))
        return s.getsockname()[0]
