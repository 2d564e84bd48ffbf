"""Attack tools for the wire security tests: a raw ZMTP 3 peer and a loopback sniffer."""

from __future__ import annotations

import socket
import struct
import threading
import time

# ZMTP 3.0 greeting (signature, version 3.0, mechanism NULL, as-server 0, filler) and
# a READY command announcing a DEALER: what any ZeroMQ peer without keys sends.
GREETING = (b"\xff" + b"\0" * 8 + b"\x7f" + b"\x03\x00" + b"NULL".ljust(20, b"\0")
            + b"\0" + b"\0" * 31)
_READY_BODY = b"\x05READY" + b"\x0bSocket-Type" + struct.pack(">I", 6) + b"DEALER"
READY = b"\x04" + bytes([len(_READY_BODY)]) + _READY_BODY


def more_frame(n: int) -> bytes:
    """A ZMTP long frame header with MORE set: n bytes follow, and then more frames."""
    return b"\x03" + struct.pack(">Q", n)


def _read_for(s: socket.socket, seconds: float, want: int = 1 << 20) -> bytes:
    """What the peer sends within ``seconds`` (stops early once ``want`` bytes came)."""
    got = b""
    deadline = time.monotonic() + seconds
    while len(got) < want and time.monotonic() < deadline:
        s.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            b = s.recv(65536)
        except TimeoutError:
            break
        if not b:
            raise ConnectionError("closed by the peer")
        got += b
    return got


def split_zmtp(data: bytes) -> tuple[bytes, list[bytes], bytes]:
    """A recorded client stream as (greeting, handshake commands, the messages after)."""
    greeting, rest, commands = data[:64], data[64:], []
    while len(rest) >= 2 and rest[0] & 0x04:  # a command frame
        if rest[0] & 0x02:
            n, head = struct.unpack(">Q", rest[1:9])[0], 9
        else:
            n, head = rest[1], 2
        commands.append(rest[:head + n])
        rest = rest[head + n:]
    return greeting, commands, rest


def handshake(s: socket.socket, greeting: bytes, commands: list[bytes]) -> None:
    """Play the client's side of the handshake in step with the server, as a real peer
    does (libzmq drops a peer whose messages come before the server's last command)."""
    s.sendall(greeting)
    _read_for(s, 2.0, 64)
    for cmd in commands:
        s.sendall(cmd)
        _read_for(s, 0.3)


def flood_more_frames(host: str, port: int, total: int, frame: int = 1 << 20,
                      seconds: float = 10.0) -> tuple[int, int]:
    """Send ``total`` bytes as frames of one endless message (MORE set on every frame),
    reconnecting whenever the peer hangs up, for at most ``seconds``.

    Returns (bytes the kernel accepted, connections made).
    """
    chunk = more_frame(frame) + b"\0" * frame
    sent = conns = 0
    deadline = time.monotonic() + seconds
    while sent < total and time.monotonic() < deadline:
        try:
            s = socket.create_connection((host, port), timeout=2)
        except OSError:
            time.sleep(0.05)
            continue
        conns += 1
        try:
            handshake(s, GREETING, [READY])
            s.settimeout(2)
            while sent < total and time.monotonic() < deadline:
                s.sendall(chunk)
                sent += len(chunk)
        except OSError:
            time.sleep(0.01)
        finally:
            s.close()
    return sent, conns


class LoopbackSniffer:
    """Records the TCP payload bytes sent to some ports on 127.0.0.1, as seen on `lo`.

    Root only (AF_PACKET). Each client-to-server stream is kept apart, keyed by
    (client port, server port), so that it can be replayed from its first byte.
    """

    def __init__(self, ports: set[int]):
        self.ports = ports
        self.segments: dict[tuple[int, int], dict[int, bytes]] = {}
        self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.ntohs(0x0003))
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        self.sock.bind(("lo", 0))
        self.sock.settimeout(0.2)
        self._stop = False
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self) -> None:
        while not self._stop:
            try:
                data, addr = self.sock.recvfrom(1 << 18)
            except TimeoutError:
                continue
            except OSError:
                return
            if addr[2] != socket.PACKET_HOST:  # loopback shows each packet twice
                continue
            self._packet(data[14:])

    def _packet(self, ip: bytes) -> None:
        if len(ip) < 20 or ip[0] >> 4 != 4 or ip[9] != 6:
            return
        ihl = (ip[0] & 0xF) * 4
        total = struct.unpack(">H", ip[2:4])[0]
        tcp = ip[ihl:total]
        if len(tcp) < 20:
            return
        sport, dport, seq = struct.unpack(">HHI", tcp[:8])
        if dport not in self.ports:
            return
        payload = tcp[(tcp[12] >> 4) * 4:]
        if payload:
            self.segments.setdefault((sport, dport), {})[seq] = payload

    def stop(self) -> None:
        self._stop = True
        self._t.join(5)
        self.sock.close()

    def streams(self) -> dict[tuple[int, int], bytes]:
        """Each stream's bytes in sequence order (retransmissions counted once)."""
        out = {}
        for key, segs in self.segments.items():
            buf = bytearray()
            first = min(segs)
            for seq in sorted(segs):
                off = (seq - first) & 0xFFFFFFFF
                p = segs[seq]
                if off + len(p) > len(buf):
                    buf += p[len(buf) - off:] if off <= len(buf) else b""
            out[key] = bytes(buf)
        return out


def replay(port: int, data: bytes, hold: float = 1.0) -> None:
    """Replay a recorded client stream on a new connection to 127.0.0.1:port: its
    handshake in step with the server, then every message it carried."""
    greeting, commands, messages = split_zmtp(data)
    try:
        s = socket.create_connection(("127.0.0.1", port), timeout=2)
    except OSError:
        return
    try:
        handshake(s, greeting, commands)
        s.sendall(messages)
        _read_for(s, hold)
    except OSError:
        pass
    finally:
        s.close()
