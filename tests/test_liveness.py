"""No failure hangs get(): a dead owner of a borrowed object is detected."""

import os
import time

import pytest

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
    t0 = time.monotonic()
    with pytest.raises(zray.exceptions.OwnerDiedError) as info:
        zray.get(inner, timeout=60)
    assert time.monotonic() - t0 < 30
    assert isinstance(info.value, zray.exceptions.ObjectLostError)

    @zray.remote
    def ok():
        return 1

    assert zray.get(ok.remote(), timeout=30) == 1
