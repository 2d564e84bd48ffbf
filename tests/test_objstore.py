"""Object store: accounting state machine (events in, actions out) and its real-file executor."""

from __future__ import annotations

import gc
import mmap
import os
import pickle
import random
import uuid

import numpy as np
import pytest

from zray.objstore import shm
from zray.objstore.capacity import MAX_DEFAULT_BYTES, default_capacity
from zray.objstore.spill import SegmentInUse, StoreExecutor, run_sync
from zray.objstore.store import (
    Delete,
    DeleteSpilled,
    Evict,
    Evicted,
    Get,
    Missing,
    ObjectStoreState,
    Pin,
    Ready,
    Restore,
    Restored,
    RestoreFailed,
    Seal,
    Spill,
    Spilled,
    SpillFailed,
    StoreFull,
    Unlink,
    Unpin,
    Where,
)


def oid(name: str) -> bytes:
    return name.encode()


def check_invariants(st: ObjectStoreState) -> None:
    """Recompute the accounting from the object table and compare."""
    used = sum(st._evicting.values())
    releasing = sum(st._evicting.values())
    for o in st._objects.values():
        if o.where in (Where.IN_MEMORY, Where.SPILLING, Where.RESTORING):
            used += o.size
        if o.where is Where.SPILLING:
            releasing += o.size
    assert st.stats().used_bytes == used
    assert st.stats().releasing_bytes == releasing
    assert st.stats().num_spilled == sum(o.where is Where.SPILLED for o in st._objects.values())
    for key, o in st._objects.items():
        candidate = o.where is Where.IN_MEMORY and o.pins == 0
        assert (key in st._lru_primary) == (candidate and o.primary)
        assert (key in st._lru_secondary) == (candidate and not o.primary)


# ---------------------------------------------------------------- state machine


def test_seal_under_capacity_needs_nothing():
    st = ObjectStoreState(300)
    assert st.handle(Seal(oid("a"), 100, primary=True)) == []
    assert st.handle(Seal(oid("b"), 200, primary=False)) == []
    s = st.stats()
    assert (s.used_bytes, s.capacity, s.num_in_memory, s.over_capacity) == (300, 300, 2, False)
    assert st.handle(Get(oid("a"))) == [Ready(oid("a"))]
    assert st.handle(Get(oid("zz"))) == [Missing(oid("zz"))]
    check_invariants(st)


def test_evicts_least_recently_used_secondary():
    st = ObjectStoreState(300)
    for n in "abc":
        st.handle(Seal(oid(n), 100, primary=False))
    st.handle(Get(oid("a")))  # a is now the most recent: b is the oldest
    assert st.handle(Seal(oid("d"), 100, primary=False)) == [Evict(oid("b"))]
    # Evicted copies are gone for readers at once, bytes until the executor confirms.
    assert st.handle(Get(oid("b"))) == [Missing(oid("b"))]
    assert st.stats().used_bytes == 400 and st.stats().releasing_bytes == 100
    check_invariants(st)
    assert st.handle(Evicted(oid("b"))) == []
    assert st.stats().used_bytes == 300 and st.stats().evicted_bytes_total == 100
    assert st.handle(Evicted(oid("b"))) == []  # duplicate completion is harmless
    check_invariants(st)


def test_pin_also_touches_lru():
    st = ObjectStoreState(200)
    st.handle(Seal(oid("a"), 100, primary=False))
    st.handle(Seal(oid("b"), 100, primary=False))
    st.handle(Pin(oid("a")))
    st.handle(Unpin(oid("a")))  # unpinned last: most recent
    assert st.handle(Seal(oid("c"), 100, primary=False)) == [Evict(oid("b"))]


def test_secondary_evicted_before_primary_spilled():
    st = ObjectStoreState(300)
    st.handle(Seal(oid("p1"), 100, primary=True))  # oldest of all
    st.handle(Seal(oid("s1"), 100, primary=False))
    st.handle(Seal(oid("s2"), 100, primary=False))
    st.handle(Get(oid("s1")))
    # Needs 200: both secondaries go, even the recent one, before any primary.
    assert st.handle(Seal(oid("p2"), 200, primary=True)) == [Evict(oid("s2")), Evict(oid("s1"))]
    for n in ("s1", "s2"):
        st.handle(Evicted(oid(n)))
    # No secondaries left: now the LRU primary is spilled.
    assert st.handle(Seal(oid("p3"), 50, primary=True)) == [Spill(oid("p1"))]
    check_invariants(st)
    assert st.handle(Get(oid("p1"))) == []  # spill in flight: answer comes later
    check_invariants(st)


def test_pins_are_honoured_and_unpin_makes_room():
    st = ObjectStoreState(200)
    st.handle(Seal(oid("a"), 100, primary=True))
    st.handle(Seal(oid("b"), 100, primary=True))
    st.handle(Pin(oid("a")))
    st.handle(Pin(oid("a")))  # two readers
    st.handle(Pin(oid("b")))
    acts = st.handle(Seal(oid("c"), 100, primary=True))
    assert acts == [StoreFull(oid("c"), 300, 200)]
    assert st.stats().over_capacity and st.stats().num_pinned == 2
    assert st.handle(Get(oid("c"))) == [Ready(oid("c"))]  # accepted all the same
    # The new object itself is never its own victim.
    assert not any(isinstance(a, (Spill, Evict)) for a in acts)
    assert st.handle(Unpin(oid("a"))) == []  # one reader left
    # a is the most recently used now: the unpinned c is older, so it goes.
    assert st.handle(Unpin(oid("a"))) == [Spill(oid("c"))]
    assert st.handle(Unpin(oid("a"))) == []  # extra unpin is a no-op
    assert not st.stats().over_capacity  # the pending spill counts as free
    check_invariants(st)
    st.handle(Spilled(oid("c")))
    s = st.stats()
    assert (s.used_bytes, s.num_spilled, s.spilled_bytes_total) == (200, 1, 100)
    check_invariants(st)


def test_pending_release_is_not_counted_twice():
    st = ObjectStoreState(200)
    for n in "abc":
        st.handle(Seal(oid(n), 100, primary=True))  # c pushes a out
    # The spill of a is not finished yet; d needs one more victim, not two.
    assert st.handle(Seal(oid("d"), 100, primary=True)) == [Spill(oid("b"))]
    check_invariants(st)


def test_object_larger_than_capacity_frees_what_it_can():
    st = ObjectStoreState(100)
    st.handle(Seal(oid("a"), 60, primary=False))
    assert st.handle(Seal(oid("big"), 500, primary=True)) == [
        Evict(oid("a")),
        StoreFull(oid("big"), 560, 100),
    ]


def test_restore_makes_room_then_ready():
    st = ObjectStoreState(200)
    st.handle(Seal(oid("a"), 100, primary=True))
    st.handle(Seal(oid("b"), 100, primary=True))
    assert st.handle(Seal(oid("c"), 100, primary=True)) == [Spill(oid("a"))]
    st.handle(Spilled(oid("a")))
    assert st.is_spilled(oid("a")) and not st.in_memory(oid("a"))
    st.handle(Get(oid("c")))  # b is now the LRU
    assert st.handle(Get(oid("a"))) == [Spill(oid("b")), Restore(oid("a"))]
    assert st.handle(Get(oid("a"))) == []  # restore in flight: no second Restore
    check_invariants(st)
    assert st.handle(Restored(oid("a"))) == [Ready(oid("a"))]
    st.handle(Spilled(oid("b")))
    s = st.stats()
    assert (s.used_bytes, s.num_in_memory, s.num_spilled) == (200, 2, 1)
    assert (s.spilled_bytes_total, s.restored_bytes_total) == (200, 100)
    assert st.handle(Get(oid("a"))) == [Ready(oid("a"))]
    check_invariants(st)


def test_restore_with_no_room_still_restores_and_reports():
    st = ObjectStoreState(100)
    st.handle(Seal(oid("a"), 100, primary=True))
    st.handle(Seal(oid("b"), 100, primary=True))
    st.handle(Spilled(oid("a")))
    st.handle(Pin(oid("b")))
    assert st.handle(Get(oid("a"))) == [Restore(oid("a")), StoreFull(oid("a"), 200, 100)]


def test_get_during_spill_restores_after_it():
    st = ObjectStoreState(100)
    st.handle(Seal(oid("a"), 100, primary=True))
    st.handle(Seal(oid("b"), 100, primary=True))  # a is being spilled
    assert st.handle(Get(oid("a"))) == []
    assert st.handle(Spilled(oid("a"))) == [Spill(oid("b")), Restore(oid("a"))]
    assert st.handle(Restored(oid("a"))) == [Ready(oid("a"))]
    check_invariants(st)


def test_delete_wherever_it_lives():
    st = ObjectStoreState(100)
    st.handle(Seal(oid("a"), 100, primary=True))
    st.handle(Seal(oid("b"), 100, primary=True))
    st.handle(Spilled(oid("a")))
    assert st.handle(Delete(oid("a"))) == [DeleteSpilled(oid("a"))]
    assert st.handle(Delete(oid("b"))) == [Unlink(oid("b"))]
    assert st.handle(Delete(oid("b"))) == []  # idempotent
    assert st.handle(Delete(oid("never"))) == []
    assert st.handle(Get(oid("a"))) == [Missing(oid("a"))]
    s = st.stats()
    assert (s.used_bytes, s.num_in_memory, s.num_spilled) == (0, 0, 0)
    check_invariants(st)


def test_delete_while_spilling_cleans_up_after_spill():
    st = ObjectStoreState(100)
    st.handle(Seal(oid("a"), 100, primary=True))
    st.handle(Seal(oid("b"), 100, primary=True))  # Spill(a) in flight
    assert st.handle(Delete(oid("a"))) == []  # nobody waits: nothing to answer
    assert st.handle(Get(oid("a"))) == [Missing(oid("a"))]
    assert st.handle(Spilled(oid("a"))) == [DeleteSpilled(oid("a"))]
    assert not st.contains(oid("a"))
    check_invariants(st)
    # The same, but the spill fails: the segment is unlinked instead.
    st.handle(Seal(oid("c"), 100, primary=True))  # Spill(b)
    st.handle(Get(oid("b")))  # a reader waits for b
    assert st.handle(Delete(oid("b"))) == [Missing(oid("b"))]
    assert st.handle(SpillFailed(oid("b"))) == [Unlink(oid("b"))]
    assert st.stats().used_bytes == 100
    check_invariants(st)


def test_delete_while_restoring():
    st = ObjectStoreState(100)
    st.handle(Seal(oid("a"), 100, primary=True))
    st.handle(Seal(oid("b"), 100, primary=False))
    st.handle(Spilled(oid("a")))
    assert st.handle(Get(oid("a"))) == [Evict(oid("b")), Restore(oid("a"))]
    assert st.handle(Delete(oid("a"))) == [Missing(oid("a"))]  # answers the waiting reader
    assert st.handle(Restored(oid("a"))) == [Unlink(oid("a"))]
    st.handle(Evicted(oid("b")))
    assert st.stats().used_bytes == 0
    check_invariants(st)


def test_spill_failure_keeps_object_in_memory():
    st = ObjectStoreState(100)
    st.handle(Seal(oid("a"), 100, primary=True))
    st.handle(Seal(oid("b"), 100, primary=True))
    st.handle(Get(oid("a")))  # waits on the spill
    assert st.handle(SpillFailed(oid("a"))) == [Ready(oid("a")), StoreFull(oid("a"), 200, 100)]
    assert st.in_memory(oid("a"))
    check_invariants(st)
    # The failed one became most recent: the next shortfall tries b first.
    assert st.handle(Seal(oid("c"), 10, primary=True)) == [Spill(oid("b")), Spill(oid("a"))]


def test_restore_failure():
    st = ObjectStoreState(100)
    st.handle(Seal(oid("a"), 100, primary=True))
    st.handle(Seal(oid("b"), 100, primary=True))
    st.handle(Spilled(oid("a")))
    st.handle(Delete(oid("b")))
    assert st.handle(Get(oid("a"))) == [Restore(oid("a"))]
    assert st.handle(RestoreFailed(oid("a"))) == [Missing(oid("a"))]
    assert st.is_spilled(oid("a"))  # file intact: a later get retries
    check_invariants(st)
    assert st.handle(Get(oid("a"))) == [Restore(oid("a"))]
    assert st.handle(RestoreFailed(oid("a"), lost=True)) == [DeleteSpilled(oid("a")), Missing(oid("a"))]
    assert not st.contains(oid("a"))
    assert st.stats().used_bytes == 0
    check_invariants(st)


def test_duplicate_seal_and_promotion():
    st = ObjectStoreState(200)
    st.handle(Seal(oid("a"), 100, primary=False))
    assert st.handle(Seal(oid("a"), 100, primary=False)) == []
    assert st.stats().used_bytes == 100
    st.handle(Seal(oid("a"), 100, primary=True))  # now the primary copy: spilled, not evicted
    st.handle(Seal(oid("b"), 100, primary=False))
    st.handle(Get(oid("b")))
    assert st.handle(Seal(oid("c"), 100, primary=True)) == [Evict(oid("b"))]
    check_invariants(st)


def test_seal_of_spilled_object_drops_the_file():
    st = ObjectStoreState(200)
    st.handle(Seal(oid("a"), 100, primary=True))
    st.handle(Seal(oid("b"), 100, primary=True))
    st.handle(Seal(oid("c"), 100, primary=True))
    st.handle(Spilled(oid("a")))
    # a is made again (e.g. pulled back): one copy, in memory, room made for it.
    assert st.handle(Seal(oid("a"), 100, primary=True)) == [DeleteSpilled(oid("a")), Spill(oid("b"))]
    assert st.in_memory(oid("a"))
    check_invariants(st)


def test_pin_unknown_and_handle_dispatch():
    st = ObjectStoreState(100)
    assert st.handle(Pin(oid("x"))) == [Missing(oid("x"))]
    assert st.handle(Unpin(oid("x"))) == []
    assert st.handle(Seal(oid("a"), 100, True)) == []
    assert st.handle(Seal(oid("b"), 100, True)) == [Spill(oid("a"))]
    assert st.handle(Get(oid("a"))) == []
    assert st.handle(Spilled(oid("a"))) == [Spill(oid("b")), Restore(oid("a"))]
    assert st.handle(RestoreFailed(oid("a"))) == [Missing(oid("a"))]
    assert st.handle(SpillFailed(oid("b"))) == []
    assert st.handle(Delete(oid("b"))) == [Unlink(oid("b"))]
    assert st.handle(Evicted(oid("zz"))) == []
    assert st.handle(Restored(oid("zz"))) == []
    with pytest.raises(TypeError):
        st.handle(Ready(oid("a")))  # an action is not an event


def test_random_events_keep_accounting_exact():
    """Drive the state machine with random events and a lazy fake executor."""
    rng = random.Random(7)
    st = ObjectStoreState(1000)
    pins: dict[bytes, int] = {}
    pending: list = []  # I/O actions the "executor" has not finished
    for step in range(5000):
        key = oid(f"o{rng.randrange(40)}")
        r = rng.random()
        if r < 0.3:
            acts = st.handle(Seal(key, rng.randrange(1, 300), rng.random() < 0.5))
        elif r < 0.45:
            acts = st.handle(Pin(key))
            if not acts:
                pins[key] = pins.get(key, 0) + 1
        elif r < 0.6:
            acts = st.handle(Unpin(key))
            if pins.get(key):
                pins[key] -= 1
        elif r < 0.75:
            acts = st.handle(Get(key))
        elif r < 0.8:
            acts = st.handle(Delete(key))
            pins.pop(key, None)
        elif pending:
            a = pending.pop(rng.randrange(len(pending)))
            fail = rng.random() < 0.1
            if isinstance(a, Spill):
                acts = st.handle(SpillFailed(a.object_id)) if fail else st.handle(Spilled(a.object_id))
            elif isinstance(a, Restore):
                acts = (st.handle(RestoreFailed(a.object_id, lost=rng.random() < 0.5)) if fail
                        else st.handle(Restored(a.object_id)))
            else:
                acts = st.handle(Evicted(a.object_id))
        else:
            acts = []
        for a in acts:
            if isinstance(a, (Spill, Evict)):
                o = st._objects.get(a.object_id)
                assert pins.get(a.object_id, 0) == 0, f"step {step}: {a} of a pinned object"
                if isinstance(a, Spill):
                    assert o is not None and o.primary
                else:
                    assert o is None  # gone from the table at once
            if isinstance(a, (Spill, Evict, Restore)):
                pending.append(a)
        check_invariants(st)
        # Deleted objects drop their pins in the model, as in the store.
        for k in list(pins):
            if not st.contains(k):
                pins.pop(k)


# ---------------------------------------------------------------- executor


@pytest.fixture
def executor(tmp_path):
    prefix = f"zray-test-{os.getpid()}-{uuid.uuid4().hex[:8]}-"
    ex = StoreExecutor(prefix, str(tmp_path / "spill"))
    try:
        yield ex
    finally:
        # Runs even when the test failed: no segment may outlive the test.
        ex.cleanup()
        assert shm.list_segments(prefix) == []


def frames_of(seed: int, size: int) -> list[bytes]:
    rnd = random.Random(seed)
    return [b"pickle-%d" % seed, rnd.randbytes(size), rnd.randbytes(size // 3)]


def test_spill_and_restore_round_trip(executor):
    key = oid("obj-1")
    name = executor.segment_name(key)
    frames = frames_of(1, 1 << 20)
    size = shm.create(name, frames)
    reader = shm.read(name)  # a reader maps it: spilling it would free no memory
    with pytest.raises(SegmentInUse):
        executor.spill(key)
    assert shm.exists(name) and not os.path.exists(executor.spill_path(key))
    assert [bytes(f) for f in reader] == frames
    del reader
    gc.collect()
    assert executor.spill(key) == size
    assert not shm.exists(name)
    assert os.stat(executor.spill_path(key)).st_mode & 0o777 == 0o600
    assert [bytes(f) for f in shm.read_file(executor.spill_path(key))] == frames
    assert executor.restore(key) == size
    assert not os.path.exists(executor.spill_path(key))
    assert [bytes(f) for f in shm.read(name)] == frames
    assert os.stat(shm.segment_path(name)).st_mode & 0o777 == 0o600


def test_restore_over_existing_segment_and_failures(executor):
    key = oid("obj-2")
    name = executor.segment_name(key)
    shm.create(name, frames_of(2, 1000))
    executor.spill(key)
    shm.create(name, frames_of(2, 1000))  # pulled again meanwhile
    executor.restore(key)  # same bytes: counts as restored
    assert [bytes(f) for f in shm.read(name)] == frames_of(2, 1000)
    # The first restore consumed the spill file: a second one finds nothing.
    assert executor.execute(Restore(key)) == RestoreFailed(key, lost=True)
    assert executor.execute(Spill(oid("nope"))) == SpillFailed(oid("nope"))
    assert executor.execute(Evict(key)) == Evicted(key)
    assert not shm.exists(name)
    assert executor.execute(Unlink(key)) is None  # already gone: fine
    assert executor.execute(DeleteSpilled(key)) is None


def test_store_and_executor_together(executor):
    st = ObjectStoreState(3 * 90_000)  # each object is ~85 kB: 3 fit
    data = {}
    for i in range(6):
        key = oid(f"k{i}")
        data[key] = frames_of(10 + i, 64_000)
        size = shm.create(executor.segment_name(key), data[key])
        assert run_sync(st, executor, st.handle(Seal(key, size, primary=True))) == []
    s = st.stats()
    assert s.num_in_memory == 3 and s.num_spilled == 3 and not s.over_capacity
    assert len(shm.list_segments(executor.shm_prefix)) == 3
    assert len(os.listdir(executor.spill_dir)) == 3
    # Read every object back, restoring transparently.
    for key, frames in data.items():
        assert run_sync(st, executor, st.handle(Get(key))) == [Ready(key)]
        st.handle(Pin(key))
        assert [bytes(f) for f in shm.read(executor.segment_name(key))] == frames
        st.handle(Unpin(key))
    assert st.stats().restored_bytes_total > 0
    assert len(shm.list_segments(executor.shm_prefix)) == 3
    # The owner frees everything: nothing is left anywhere.
    for key in data:
        run_sync(st, executor, st.handle(Delete(key)))
    assert shm.list_segments(executor.shm_prefix) == []
    assert os.listdir(executor.spill_dir) == []
    assert st.stats().used_bytes == 0


def test_cleanup_removes_segments_and_spill_files(executor):
    for i in range(4):
        shm.create(executor.segment_name(oid(f"c{i}")), frames_of(i, 100))
    executor.spill(oid("c0"))
    open(os.path.join(executor.spill_dir, "stray.part"), "wb").close()
    assert executor.cleanup() == 5
    assert shm.list_segments(executor.shm_prefix) == []
    assert os.listdir(executor.spill_dir) == []


def test_numpy_zero_copy_read(executor):
    arr = np.arange(1 << 16, dtype=np.float64).reshape(256, 256)
    bufs: list[pickle.PickleBuffer] = []
    head = pickle.dumps(arr, protocol=5, buffer_callback=bufs.append)
    name = executor.segment_name(oid("np"))
    shm.create(name, [head, *(b.raw() for b in bufs)])
    frames = shm.read(name)
    out = pickle.loads(frames[0], buffers=frames[1:])
    np.testing.assert_array_equal(out, arr)
    assert not out.flags.writeable  # read-only view of the segment
    with pytest.raises(ValueError):
        out[0, 0] = 1.0
    # Zero-copy: the array's memory is the segment's mapping, 64-byte aligned...
    addr = out.__array_interface__["data"][0]
    assert addr == np.frombuffer(frames[1], np.uint8).ctypes.data
    assert addr % shm.ALIGN == 0
    # ...so a write through another mapping of the segment shows in `out`.
    with open(shm.segment_path(name), "r+b") as f, mmap.mmap(f.fileno(), 0) as m:
        offset = shm._ENT.unpack_from(m, shm._HDR.size + shm._ENT.size)[0]
        m[offset: offset + 8] = np.float64(42.0).tobytes()
    assert out[0, 0] == 42.0


def test_default_capacity():
    gib = 1 << 30
    assert default_capacity(total_memory=10 * gib, shm_free=100 * gib, shm_total=100 * gib) == 3 * gib
    # Capped by free /dev/shm minus a 5% margin.
    assert default_capacity(total_memory=100 * gib, shm_free=10 * gib, shm_total=20 * gib) == 9 * gib
    assert default_capacity(total_memory=10**13, shm_free=10**13, shm_total=10**13) == MAX_DEFAULT_BYTES
    assert default_capacity(total_memory=10 * gib, shm_free=1 << 20, shm_total=1 << 20) == 0
    assert 0 < default_capacity()


def test_reservations_are_events_too():
    """The hard limit's bookkeeping goes through handle() like every other event."""
    from zray.objstore.store import MakeRoom, Reserve, Unreserve

    st = ObjectStoreState(300)
    st.handle(Seal(oid("old"), 200, primary=False))
    assert not st.fits(200)
    assert st.handle(MakeRoom(200)) == [Evict(oid("old"))]  # a secondary copy makes way
    st.handle(Evicted(oid("old")))
    assert st.fits(200)
    assert st.handle(Reserve(oid("w"), 200)) == [] and st.is_reserved(oid("w"))
    assert not st.fits(200)  # the reservation counts
    assert st.handle(Reserve(oid("w"), 200)) == []  # twice: counted once
    assert st.stats().used_bytes == 200
    assert st.handle(Seal(oid("w"), 200, primary=True)) == []  # it becomes the object
    assert not st.is_reserved(oid("w")) and st.stats().used_bytes == 200
    assert st.handle(Reserve(oid("x"), 50)) == []
    assert st.handle(Unreserve(oid("x"))) == [] and st.stats().used_bytes == 200
    assert st.handle(Unreserve(oid("x"))) == []  # a second cancel is harmless
    check_invariants(st)
