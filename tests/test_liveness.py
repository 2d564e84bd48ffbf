"""No failure hangs get(): a dead owner of a borrowed object is detected."""

import os
import time

import pytest
from backend import shm_segments, wait_until

import zray


@pytest.fixture
def cluster():
    zray.init(num_cpus=3)
    yield
    zray.shutdown()


def test_get_of_an_object_whose_owner_died_raises_owner_died(cluster):
    @zray.remote
    def slow():
        time.sleep(100)

    @zray.remote
    def nested():
        # The ref is owned by this worker; the driver borrows it.
        return [slow.remote()], os.getpid()

    [inner], pid = zray.get(nested.remote())
    os.kill(pid, 9)
    with pytest.raises(zray.exceptions.OwnerDiedError) as info:
        zray.get(inner, timeout=60)  # raises, rather than waiting for this timeout
    assert isinstance(info.value, zray.exceptions.ObjectLostError)
    # The owner's address is readable: no packed list of raw bytes.
    text = str(info.value)
    assert "b'" not in text and "\\x" not in text and "[" not in text, text
    assert "://" in text, text

    @zray.remote
    def ok():
        return 1

    assert zray.get(ok.remote(), timeout=30) == 1


def _segments() -> int:
    prefix = "zray-" + os.path.basename(zray.get_runtime_context().session_dir)[-8:]
    return len(shm_segments(prefix))


def _wait_for(pred, timeout=10.0):
    return wait_until(pred, timeout)


def test_refs_nested_in_a_return_value_live_as_long_as_it(cluster):
    import gc

    import numpy as np

    @zray.remote
    def make():
        return [zray.put(np.ones(10**6))]

    outer = make.remote()
    [inner] = zray.get(outer)
    assert zray.get(inner).sum() == 10**6
    assert _segments() == 1
    del inner
    gc.collect()
    time.sleep(0.5)
    assert _segments() == 1, "freed while the value holding it is alive"
    del outer
    gc.collect()
    assert _wait_for(lambda: _segments() == 0), "never freed"
