"""Fuzzing the inbound side (hypothesis): the decoder, and a tcp listener fed raw bytes.

- Any frames at all: ``decode`` returns a map with an int type or raises ProtocolError;
  no other exception escapes.
- Frames from a member (a CURVE client holding the secret), valid or broken: the
  Inbound never raises, hands over exactly the well-formed ones, and keeps serving.
- Raw bytes on a tcp connection (random, or a ZMTP greeting then random frames, or a
  real member's recorded bytes with a change): nothing reaches the handler without the
  CURVE handshake, and the listener keeps serving.
"""

from __future__ import annotations

import socket
import time

import msgpack
import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from wire_attack import GREETING, READY, handshake, replay

from zray import curve, protocol

KEY = b"f" * 32

scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**63, 2**64 - 1), st.floats(allow_nan=False),
                    st.binary(max_size=24), st.text(max_size=12))
values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=6), inner, max_size=4)),
    max_leaves=12)
headers = st.one_of(
    st.dictionaries(st.sampled_from(["t", "rid", "ra", "bulk", "tid", "x"]), values,
                    max_size=5).map(lambda d: msgpack.packb(d, use_bin_type=True)),
    values.map(lambda v: msgpack.packb(v, use_bin_type=True)),
    st.binary(max_size=64))
frame_lists = st.tuples(headers, st.lists(st.binary(max_size=48), max_size=5)).map(
    lambda hp: [hp[0], *hp[1]])


def _well_formed(frames: list) -> bool:
    try:
        h = msgpack.unpackb(frames[0], raw=False)
    except Exception:
        return False
    if not isinstance(h, dict) or not isinstance(h.get("t"), int):
        return False
    b = h.get("bulk", 0)
    return isinstance(b, int) and 0 <= b <= len(frames) - 1


@settings(max_examples=300, deadline=None)
@given(st.one_of(frame_lists, st.lists(st.binary(max_size=40), max_size=5)))
def test_decode_accepts_only_well_formed_messages(frames):
    try:
        h, payload = protocol.decode(frames)
    except protocol.ProtocolError:
        assert not frames or not _well_formed(frames)
        return
    assert _well_formed(frames)
    assert isinstance(h, dict) and isinstance(h["t"], int)
    assert [bytes(p) for p in payload] == frames[1:]


@pytest.fixture(scope="module")
def listener():
    ib = protocol.Inbound(None, "127.0.0.1", KEY)
    poller = zmq.Poller()
    ib.register(poller)
    got: list = []
    member = protocol.Conn(ib.tcp_addr, KEY)

    def pump(seconds: float, until=None) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and not (until and until()):
            ib.drain(dict(poller.poll(20)), lambda h, p: got.append((h, p)))

    yield ib, member, got, pump
    member.close()
    ib.close()


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(st.lists(frame_lists, min_size=1, max_size=4))
def test_a_member_sending_anything_never_breaks_the_listener(listener, messages):
    ib, member, got, pump = listener
    got.clear()
    for frames in messages:
        with member.lock:
            protocol.send_frames(member.sock, frames)
    protocol_ok = [f for f in messages if _well_formed(f)]
    nonce = time.monotonic_ns()
    member.send({"t": protocol.PING, "n": nonce})  # a marker after them
    pump(10, lambda: any(h.get("n") == nonce and h.get("t") == protocol.PING
                         for h, _ in got))
    assert got and got[-1][0] == {"t": protocol.PING, "n": nonce}
    assert [h for h, _ in got[:-1]] == [protocol.decode(f)[0] for f in protocol_ok]


def _raw_send(port: int, data: bytes, zmtp: bool) -> None:
    try:
        s = socket.create_connection(("127.0.0.1", port), timeout=2)
    except OSError:
        return
    try:
        if zmtp:
            handshake(s, GREETING, [READY])
        s.sendall(data)
        time.sleep(0.01)
    except OSError:
        pass
    finally:
        s.close()


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.one_of(st.binary(max_size=2048),
                      frame_lists.map(lambda fs: b"".join(
                          bytes([1 if i < len(fs) - 1 else 0, min(len(f), 255)]) + f[:255]
                          for i, f in enumerate(fs)))),
       zmtp=st.booleans())
def test_raw_bytes_without_the_handshake_reach_nothing(listener, data, zmtp):
    ib, member, got, pump = listener
    got.clear()
    port = int(ib.tcp_addr.rsplit(":", 1)[1])
    _raw_send(port, data, zmtp)
    pump(0.05)
    assert got == []


def test_recorded_member_bytes_with_a_change_reach_nothing(listener):
    """A member's real CURVE stream, recorded through a proxy, then replayed with one
    byte changed at every position class (handshake, message boxes): nothing gets in."""
    ib, member, got, pump = listener
    port = int(ib.tcp_addr.rsplit(":", 1)[1])
    # A proxy: record what a fresh member sends, pass it on.
    lsock = socket.create_server(("127.0.0.1", 0))
    pport = lsock.getsockname()[1]
    c = protocol.Conn(f"tcp://127.0.0.1:{pport}", KEY)
    c.send({"t": protocol.PING, "n": 1}, [b"x" * 100])
    a, _ = lsock.accept()
    b = socket.create_connection(("127.0.0.1", port))
    rec = bytearray()
    a.settimeout(0.05)
    b.settimeout(0.05)
    got.clear()
    deadline = time.monotonic() + 10
    while not got and time.monotonic() < deadline:
        for src, dst, keep in ((a, b, True), (b, a, False)):
            try:
                chunk = src.recv(65536)
            except TimeoutError:
                continue
            if keep:
                rec += chunk
            dst.sendall(chunk)
        pump(0.02)
    assert [h for h, _ in got] == [{"t": protocol.PING, "n": 1}]  # the proxy path works
    c.close()
    a.close()
    b.close()
    lsock.close()
    got.clear()
    replay(port, bytes(rec), hold=0.3)  # as recorded
    for pos in range(0, len(rec), max(1, len(rec) // 16)):
        bad = bytearray(rec)
        bad[pos] ^= 0x01
        replay(port, bytes(bad), hold=0.1)
    pump(0.5)
    assert got == []
    # And a member still gets in.
    member.send({"t": protocol.PING, "n": 2})
    pump(10, lambda: got)
    assert [h for h, _ in got] == [{"t": protocol.PING, "n": 2}]


def test_curve_keys_differ_per_secret():
    assert curve.keypair(KEY) != curve.keypair(b"g" * 32)
