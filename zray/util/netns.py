"""Two network namespaces joined by a veth pair: "two machines" for tests and benchmarks.

Root only (``ip`` from iproute2, ``tc`` for shaping). Everything created here is
named ``zr<tag>...`` and removed by ``close()`` (or the ``with`` block's end);
the addresses used (10.200.<n>.1 and .2 by default) exist only inside the two
namespaces, so no packet leaves them::

    with NetnsPair(rate="1gbit") as net:
        subprocess.run(net.exec_a(["python", "driver.py"]))   # in namespace A
        # a node in namespace B: Cluster.add_node(node_ip_address=net.ip_b, _netns=net.ns_b)
"""

from __future__ import annotations

import os
import shutil
import subprocess


def available() -> str | None:
    """None if namespaces can be made here, else why not."""
    if os.geteuid() != 0:
        return "needs root"
    if shutil.which("ip") is None:
        return "needs the ip command (iproute2)"
    return None


class NetnsPair:
    def __init__(self, tag: str | None = None, subnet: int | None = None,
                 rate: str | None = None):
        self.tag = tag or f"{os.getpid() % 100000}{os.urandom(1).hex()}"
        n = subnet if subnet is not None else 1 + int.from_bytes(os.urandom(1), "big") % 250
        self.ns_a, self.ns_b = f"zr{self.tag}a", f"zr{self.tag}b"
        self.veth_a, self.veth_b = f"zr{self.tag}va", f"zr{self.tag}vb"
        self.ip_a, self.ip_b = f"10.200.{n}.1", f"10.200.{n}.2"
        self.rate = rate
        self._made: list[str] = []
        try:
            self._setup()
        except BaseException:
            self.close()
            raise

    def _ip(self, *args: str) -> None:
        subprocess.run(["ip", *args], check=True, capture_output=True, timeout=20)

    def _setup(self) -> None:
        for ns in (self.ns_a, self.ns_b):
            self._ip("netns", "add", ns)
            self._made.append(ns)
            self._ip("-n", ns, "link", "set", "lo", "up")
        # Create the pair inside A (never in the root namespace), then move one end.
        self._ip("-n", self.ns_a, "link", "add", self.veth_a, "type", "veth",
                 "peer", "name", self.veth_b)
        self._ip("-n", self.ns_a, "link", "set", self.veth_b, "netns", self.ns_b)
        for ns, dev, ip in ((self.ns_a, self.veth_a, self.ip_a),
                            (self.ns_b, self.veth_b, self.ip_b)):
            self._ip("-n", ns, "addr", "add", f"{ip}/24", "dev", dev)
            self._ip("-n", ns, "link", "set", dev, "up")
            if self.rate:
                self.shape(ns, dev)

    def shape(self, ns: str, dev: str) -> None:
        """Egress shaping of one end to ``rate`` (a token bucket, like a real link's speed)."""
        subprocess.run(["ip", "netns", "exec", ns, "tc", "qdisc", "add", "dev", dev, "root",
                        "tbf", "rate", self.rate or "", "burst", "256kb", "latency", "50ms"],
                       check=True, capture_output=True, timeout=20)

    def exec_a(self, argv: list[str]) -> list[str]:
        return ["ip", "netns", "exec", self.ns_a, *argv]

    def exec_b(self, argv: list[str]) -> list[str]:
        return ["ip", "netns", "exec", self.ns_b, *argv]

    def close(self) -> None:
        # Deleting a namespace deletes the veth end in it, and so the pair.
        for ns in reversed(self._made):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=20)
        self._made = []

    def __enter__(self) -> NetnsPair:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
