"""The raylet's GCS watch (zray/raylet/gcs_watch.py) as a plain state machine."""

from zray.raylet import gcs_watch as gw


def make():
    w = gw.GcsWatch("127.0.0.1:6379", ping_s=0.5, timeout_s=5.0, reconnect_s=60.0)
    w.handle(gw.Started(0.0))
    w.handle(gw.Registered(0.1, b"inc1"))
    return w


def kinds(acts):
    return [type(a) for a in acts]


def test_pings_while_up_and_stays_up_on_pongs():
    w = make()
    assert kinds(w.handle(gw.Tick(0.7))) == [gw.Ping]
    assert w.handle(gw.Tick(0.8)) == []  # not again before ping_s
    w.handle(gw.PongReceived(0.9, b"inc1"))
    assert kinds(w.handle(gw.Tick(1.3))) == [gw.Ping]
    assert w.state == gw.UP


def test_silence_beyond_timeout_is_down_naming_the_address():
    w = make()
    acts = w.handle(gw.Tick(5.2))
    assert kinds(acts) == [gw.Down]
    assert "127.0.0.1:6379" in acts[0].msg and "did not answer" in acts[0].msg
    assert w.state == gw.DOWN


def test_process_exit_is_down_at_once_and_only_once():
    w = make()
    assert kinds(w.handle(gw.ProcessExited(1.0))) == [gw.Down]
    assert w.handle(gw.ProcessExited(1.1)) == []


def test_down_retries_registration_then_up():
    w = make()
    w.handle(gw.ProcessExited(1.0))
    assert w.handle(gw.Tick(1.5)) == []
    assert kinds(w.handle(gw.Tick(2.1))) == [gw.Register]
    assert kinds(w.handle(gw.Registered(2.5, b"inc2"))) == [gw.Up]
    assert w.state == gw.UP and w.incarnation == b"inc2"


def test_down_beyond_reconnect_timeout_stops():
    w = make()
    w.handle(gw.ProcessExited(1.0))
    acts = w.handle(gw.Tick(61.5))
    assert kinds(acts) == [gw.Stop]
    assert "ZRAY_GCS_RECONNECT_TIMEOUT_S" in acts[0].msg


def test_never_registered_stops_after_reconnect_timeout():
    w = gw.GcsWatch("x:1", 0.5, 5.0, 10.0)
    w.handle(gw.Started(0.0))
    assert w.handle(gw.Tick(5.0)) == []  # no pings before the GCS answered once
    assert kinds(w.handle(gw.Tick(10.5))) == [gw.Stop]


def test_new_incarnation_in_a_pong_means_restart():
    w = make()
    acts = w.handle(gw.PongReceived(1.0, b"other"))
    assert kinds(acts) == [gw.Down, gw.Register]
    assert "restarted" in acts[0].msg
    assert kinds(w.handle(gw.Registered(1.2, b"other"))) == [gw.Up]


def test_pongs_while_down_are_ignored():
    w = make()
    w.handle(gw.ProcessExited(1.0))
    assert w.handle(gw.PongReceived(1.5, b"inc1")) == []
    assert w.state == gw.DOWN
