"""A SIGKILLed raylet cannot clean up: its zygote removes the node's segments and sockets."""

import os
import signal

import numpy as np
import psutil
import pytest
from backend import shm_segments, wait_until

import zray


@pytest.fixture
def driver():
    zray.init(num_cpus=2)
    yield
    zray.shutdown()


def _wait_for(pred, timeout=10.0):
    return wait_until(pred, timeout)


def test_sigkilled_raylet_leaves_no_segment_or_worker_socket(driver):
    @zray.remote
    def make():
        return np.ones(10**6)

    ref = make.remote()
    zray.get(ref)
    kept = zray.put(np.ones(10**6))  # noqa: F841  (a live object: its segment must go too)
    session = zray.get_runtime_context().session_dir
    prefix = "zray-" + os.path.basename(session)[-8:]

    def segments():
        # The node's directory too: it must go with its segments.
        return [n for n in os.listdir("/dev/shm") if n.startswith(prefix)] + list(
            shm_segments(prefix))

    def worker_and_raylet_sockets():
        names = os.listdir(os.path.join(session, "sockets"))
        me = "w-" + zray.get_runtime_context().get_worker_id()[:12]
        return [n for n in names if n != "gcs" and n != me]

    assert len(shm_segments(prefix)) == 2
    assert worker_and_raylet_sockets()
    raylet = [p for p in psutil.Process().children()
              if "zray.raylet" in " ".join(p.cmdline())]
    assert len(raylet) == 1
    workers = [p.pid for p in raylet[0].children(recursive=True)]
    raylet[0].send_signal(signal.SIGKILL)
    assert _wait_for(lambda: not segments()), segments()
    assert _wait_for(lambda: not worker_and_raylet_sockets()), worker_and_raylet_sockets()
    assert _wait_for(lambda: not any(psutil.pid_exists(p) and
                                     psutil.Process(p).status() != psutil.STATUS_ZOMBIE
                                     for p in workers))
