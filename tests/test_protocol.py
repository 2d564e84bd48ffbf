"""The wire protocol: framing, authentication, and malformed input on real sockets."""

import time

import msgpack
import pytest
import zmq

from zray import curve, protocol

KEY = b"k" * 32


def test_roundtrip():
    h = {"t": protocol.PING, "x": b"\x00\x01", "s": "é"}
    frames = protocol.encode(dict(h), [b"payload"])
    assert frames == [frames[0], b"payload"]
    hh, p = protocol.decode(frames)
    assert hh == h and p == [b"payload"]
    frames = protocol.encode({"t": protocol.CHUNK}, [b"meta", b"raw"], bulk=1)
    hh, p = protocol.decode(frames)
    assert hh == {"t": protocol.CHUNK, "bulk": 1} and p == [b"meta", b"raw"]


def test_the_curve_keypair_comes_from_the_secret():
    pub, sec = curve.keypair(KEY)
    assert curve.keypair(KEY) == (pub, sec)
    assert zmq.curve_public(sec) == pub
    assert curve.keypair(b"w" * 32)[0] != pub


@pytest.mark.parametrize("frames", [
    [b"only one"],
    [b"\xc1\xc1", b""],  # undecodable msgpack
    [msgpack.packb([1, 2]), b""],  # not a map
    [msgpack.packb({"t": "str"}), b""],  # type not an int
    [msgpack.packb({"t": 1, "bulk": 2}), b""],  # more bulk frames than frames
    [msgpack.packb({"t": 1, "bulk": -1})],
    [],
])
def test_malformed_messages(frames):
    with pytest.raises(protocol.ProtocolError):
        protocol.decode(frames)


def test_inbound_drops_garbage_and_keeps_serving(tmp_path, caplog):
    inbound = protocol.Inbound(str(tmp_path / "sock"), "127.0.0.1", KEY)
    poller = zmq.Poller()
    inbound.register(poller)
    got = []
    ctx = protocol.context()
    raw = ctx.socket(zmq.DEALER)  # no CURVE keys: refused during the handshake
    raw.setsockopt(zmq.LINGER, 0)
    raw.connect(inbound.tcp_addr)
    member = ctx.socket(zmq.DEALER)  # holds the secret, sends garbage: dropped, logged
    member.setsockopt(zmq.LINGER, 0)
    curve.make_client(member, KEY)
    member.connect(inbound.tcp_addr)
    good = protocol.Conn(inbound.tcp_addr, KEY)
    try:
        raw.send_multipart([b"garbage"])
        raw.send_multipart(protocol.encode({"t": protocol.PING}, [b"x"]))
        member.send_multipart([b"garbage"])
        member.send_multipart([msgpack.packb([1, 2])])  # not a map
        good.send({"t": protocol.PING, "n": 1})
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not (
                got and "refused a tcp peer" in caplog.text
                and caplog.text.count("dropped a malformed message") >= 2):
            ready = dict(poller.poll(100))
            inbound.drain(ready, lambda h, p: got.append(h))
        assert got == [{"t": protocol.PING, "n": 1}]
        assert caplog.text.count("dropped a malformed message") == 2
        assert "refused a tcp peer" in caplog.text
    finally:
        good.close()
        member.close()
        raw.close()
        inbound.close()


def test_strategy_wire_is_one_for_tasks_and_actors():
    from zray import actor_submitter, core_worker
    from zray.util.scheduling_strategies import NodeAffinitySchedulingStrategy as Aff

    assert protocol.strategy_wire(None) is None
    assert protocol.strategy_wire("DEFAULT") is None
    assert protocol.strategy_wire("SPREAD") == {"kind": "SPREAD"}
    assert protocol.strategy_wire(Aff("ab" * 16, soft=False)) == {
        "kind": "NodeAffinitySchedulingStrategy", "node": "ab" * 16, "soft": False}
    assert protocol.strategy_wire(Aff("ab" * 16, soft=True, _spill_on_unavailable=True)) == {
        "kind": "NodeAffinitySchedulingStrategy", "node": "ab" * 16, "soft": True,
        "spill": True}
    # No private copy left to drift apart from this one.
    for mod in (actor_submitter, core_worker):
        assert not hasattr(mod, "_strategy_wire"), mod.__name__


def test_every_message_type_is_documented():
    """docs/PROTOCOL.md lists every message type of protocol.py, under its number."""
    import re
    from pathlib import Path

    doc = (Path(__file__).resolve().parent.parent / "docs" / "PROTOCOL.md").read_text()
    rows = {}
    for nums, names in re.findall(r"^\| ([\d/]+) \| ([A-Z_ /]+?) (?:\(.*?\) )?\|", doc, re.M):
        for n, name in zip(nums.split("/"), names.split("/")):
            rows[name.strip()] = int(n)
    assert rows, "no message table found"
    missing = {name: num for num, name in protocol.NAMES.items() if rows.get(name) != num}
    assert not missing, f"not in docs/PROTOCOL.md (or under another number): {missing}"


def test_many_tcp_listeners_one_after_another():
    """Each tcp listener's refused-peer monitor gets its own endpoint (a closed socket's
    may linger): a process that opens and closes many (a CLI, a test) never fails."""
    for _ in range(300):
        ib = protocol.Inbound(None, "127.0.0.1", KEY)
        ib.close()
