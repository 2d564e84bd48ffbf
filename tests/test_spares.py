"""Spare segments: freed objects' pages are recycled, never under a reader's feet.

Unit tests drive ``objstore.spare``/``objstore.shm`` on real /dev/shm files and real
processes; the end-to-end tests drive a zray cluster (Ray keeps no files in /dev/shm,
so they are zray's own).
"""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import threading
import uuid

import numpy as np
import pytest
from backend import IS_RAY, ray, shm_segments, wait_until

from zray.objstore import shm, spare
from zray.objstore.spill import StoreExecutor, run_sync
from zray.objstore.store import Delete, ObjectStoreState, Seal

MB = 1 << 20


@pytest.fixture
def prefix():
    p = f"zray-test-{os.getpid()}-{uuid.uuid4().hex[:8]}-"
    try:
        yield p
    finally:
        shm.remove_all(p)  # spares too: they share the prefix
        assert shm.list_segments(p) == []


@pytest.fixture
def filler(prefix):
    f = spare.SpareFiller(prefix, 256 * MB)
    try:
        yield f
    finally:
        f.stop()


def _oid() -> str:
    return os.urandom(20).hex()


def _put(prefix: str, value: np.ndarray) -> str:
    name = prefix + _oid()
    shm.create(name, [b"head", value])
    return name


def _ino(path: str) -> int:
    return os.stat(path).st_ino


def _spares(prefix: str) -> dict[str, int]:
    return {n: _ino(shm.segment_path(n)) for _, n in spare.spares(prefix)}


def test_freed_segment_becomes_a_spare_and_is_reused(prefix, filler):
    name = _put(prefix, np.full(12 * MB, 1, np.uint8))
    ino = _ino(shm.segment_path(name))
    assert filler.recycle(name)
    assert not shm.exists(name)
    assert list(_spares(prefix).values()) == [ino]
    # The next object of that size is written into the same pages.
    again = _put(prefix, np.full(12 * MB, 2, np.uint8))
    assert _ino(shm.segment_path(again)) == ino and _spares(prefix) == {}
    frames = shm.read(again)
    assert frames[0] == b"head" and np.frombuffer(frames[1], np.uint8).min() == 2
    assert len(frames[1]) == 12 * MB
    # A smaller object does not take a spare much larger than itself.
    del frames
    assert filler.recycle(again)
    other = _put(prefix, np.zeros(9 * MB, np.uint8))
    assert _ino(shm.segment_path(other)) != ino and len(_spares(prefix)) == 1


def test_not_recycled_while_a_view_lives(prefix, filler):
    name = _put(prefix, np.full(10 * MB, 7, np.uint8))
    frames = shm.read(name)
    view = np.frombuffer(frames[1], np.uint8)[5:]  # a numpy view into one frame
    del frames
    gc.collect()
    assert not filler.recycle(name)  # mapped: the caller unlinks it instead
    shm.unlink(name)
    # Whatever is written next, the view keeps the object's bytes.
    for v in (8, 9):
        _put(prefix, np.full(10 * MB, v, np.uint8))
    assert view.min() == view.max() == 7
    del view
    gc.collect()
    # Without readers, the same kind of segment is recycled.
    name = _put(prefix, np.full(10 * MB, 3, np.uint8))
    frames = shm.read(name)
    del frames
    assert filler.recycle(name)


READER = """
import sys, time
import numpy as np
from zray.objstore import shm
frames = shm.read(sys.argv[1])
view = np.frombuffer(frames[1], np.uint8)
del frames
print("mapped", flush=True)
for line in sys.stdin:
    print(int(view.min()), int(view.max()), flush=True)
"""


def test_a_reader_process_blocks_recycling_until_it_dies(prefix, filler):
    name = _put(prefix, np.full(10 * MB, 5, np.uint8))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [os.path.dirname(os.path.dirname(os.path.abspath(__file__))), os.environ.get("PYTHONPATH", "")])}
    p = subprocess.Popen([sys.executable, "-c", READER, name], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert p.stdout.readline().strip() == "mapped"
        assert not filler.recycle(name)
        shm.unlink(name)  # what the raylet does then
        for v in (6, 7):
            _put(prefix, np.full(10 * MB, v, np.uint8))
        p.stdin.write("?\n")
        p.stdin.flush()
        assert p.stdout.readline().split() == ["5", "5"]  # the reader's object never changed
        name = _put(prefix, np.full(10 * MB, 5, np.uint8))
        p.kill()
        p.wait()
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert filler.recycle(name)


def test_a_reader_that_opened_it_before_the_recycle_finds_it_gone(prefix, filler):
    """The race: open, (raylet locks and renames), lock: the reader must not map the spare."""
    import fcntl

    name = _put(prefix, np.full(10 * MB, 1, np.uint8))
    path = shm.segment_path(name)
    holder = os.open(path, os.O_RDONLY)
    fcntl.flock(holder, fcntl.LOCK_EX)  # as the raylet's recycle does
    result: list = []

    def reader():
        try:
            result.append(shm.read(name))
        except FileNotFoundError as e:
            result.append(e)

    t = threading.Thread(target=reader)
    t.start()
    # The reader has opened the file and waits for its shared lock (a blocked flock
    # shows in /proc/locks as "->" on the file's inode).
    ino = os.stat(path).st_ino

    def reader_waits() -> bool:
        with open("/proc/locks") as f:
            return any("->" in line and f":{ino} " in line for line in f)

    assert wait_until(reader_waits, 10), "the reader never waited for the lock"
    os.rename(path, shm.segment_path(spare.spare_name(prefix, 10 * MB + 128)))
    os.close(holder)
    t.join(10)
    assert isinstance(result[0], FileNotFoundError), result


def test_recycling_keeps_to_the_budget_and_the_store_room(prefix):
    room = [1 << 30]
    f = spare.SpareFiller(prefix, 40 * MB, room=lambda: room[0], keep_recycled=2)
    try:
        names = [_put(prefix, np.zeros(12 * MB, np.uint8)) for _ in range(4)]
        assert f.recycle(names[0]) and f.recycle(names[1])
        assert not f.recycle(names[2])  # 3 x 12 MB: under 40 MB, but 2 per size class
        small = _put(prefix, np.zeros(9 * MB, np.uint8))
        assert f.recycle(small)  # another size class
        assert not f.recycle(names[3])  # 12 + 12 + 9 + 12 > 40 MB
        room[0] = 30 * MB  # the store's objects grew: spares hold at most the room left
        assert f.trim(room[0]) > 0
        assert sum(b for b, _ in spare.spares(prefix)) <= 30 * MB
        assert not f.recycle(names[3])
        assert not f.recycle(_put(prefix, np.zeros(1 * MB, np.uint8)))  # too small to matter
    finally:
        f.stop()


def test_spares_nobody_claims_are_given_back(prefix):
    f = spare.SpareFiller(prefix, 64 * MB, idle_s=1.0)
    try:
        assert f.recycle(_put(prefix, np.zeros(10 * MB, np.uint8)))
        assert spare.spares(prefix) and f.held_max >= 10 * MB
        assert wait_until(lambda: not spare.spares(prefix), 10), spare.spares(prefix)
        assert f.held_max == 0
    finally:
        f.stop()


def test_store_executor_recycles_freed_objects(prefix, tmp_path, filler):
    ex = StoreExecutor(prefix, str(tmp_path / "spill"))
    ex.recycle = filler.recycle
    st = ObjectStoreState(1 << 30)
    key = os.urandom(20)
    size = shm.create(ex.segment_name(key), [b"x", np.ones(10 * MB, np.uint8)])
    ino = _ino(shm.segment_path(ex.segment_name(key)))
    run_sync(st, ex, st.handle(Seal(key, size, primary=True)))
    run_sync(st, ex, st.handle(Delete(key)))
    assert shm.list_segments(prefix) == [n for _, n in spare.spares(prefix)]
    assert list(_spares(prefix).values()) == [ino]
    assert st.stats().used_bytes == 0  # a spare is not an object
    ex.cleanup()
    assert shm.list_segments(prefix) == []


def test_filler_makes_written_spares_when_idle(prefix):
    f = spare.SpareFiller(prefix, 64 * MB)
    try:
        f.note(20 * MB)
        cls = spare.size_class(20 * MB)
        assert wait_until(lambda: len(spare.spares(prefix)) == 2, 20), spare.spares(prefix)
        assert all(b == cls for b, _ in spare.spares(prefix))
        # Written, not only allocated: tmpfs counts the pages.
        for _, n in spare.spares(prefix):
            assert os.stat(shm.segment_path(n)).st_blocks * 512 >= cls
        name = _put(prefix, np.full(20 * MB - 4096, 4, np.uint8))
        assert len(spare.spares(prefix)) == 1 or wait_until(
            lambda: len(spare.spares(prefix)) == 2, 20)
        frames = shm.read(name)
        assert len(frames[1]) == 20 * MB - 4096 and np.frombuffer(frames[1], np.uint8).min() == 4
        assert shm.size_of(name) == shm.layout_size([b"head", frames[1]])
    finally:
        f.stop()


def _mapped_here(name: str) -> bool:
    with open("/proc/self/maps") as f:
        return any(name in line for line in f)


def test_writer_keeps_its_mapping_of_a_spare_without_blocking_recycling(prefix, filler):
    name = _put(prefix, np.full(10 * MB, 1, np.uint8))  # fresh: written with pwrite, no mapping
    assert not _mapped_here(name)
    ino = _ino(shm.segment_path(name))
    assert filler.recycle(name)
    name = _put(prefix, np.full(10 * MB, 2, np.uint8))  # into the spare, through a mapping ...
    assert _ino(shm.segment_path(name)) == ino
    assert ino in shm._writer_maps.inodes()  # ... which the writer keeps
    assert filler.recycle(name)  # and which holds no lock
    name = _put(prefix, np.full(10 * MB, 3, np.uint8))
    assert _ino(shm.segment_path(name)) == ino
    frames = shm.read(name)
    assert np.frombuffer(frames[1], np.uint8).min() == 3
    view = np.frombuffer(frames[1], np.uint8)
    del frames
    assert not filler.recycle(name)  # a reader maps it: unlinked instead ...
    shm.unlink(name)
    # ... and the writer lets go of its mapping soon, so the pages are freed.
    assert wait_until(lambda: ino not in shm._writer_maps.inodes(), 5)
    _put(prefix, np.full(10 * MB, 4, np.uint8))
    assert view.min() == view.max() == 3


def test_size_classes_and_fit():
    assert spare.size_class(1) == spare.SPARE_MIN
    assert spare.size_class(800 * MB) == 896 * MB
    assert spare.fits(800 * MB + 128, 800 * MB + 128)  # a recycled segment, same object size
    assert spare.fits(896 * MB, 800 * MB)
    assert not spare.fits(800 * MB, 800 * MB + 1)
    assert not spare.fits(512 * MB, 100 * MB)


# ---------------------------------------------------------------- end to end

pytestmark_zray = pytest.mark.skipif(
    IS_RAY, reason="Ray keeps objects in one plasma arena, not in /dev/shm/zray* files")


def _new_segment(before: dict[str, int], size: int) -> str:
    got = wait_until(lambda: [n for n, s in shm_segments().items()
                              if n not in before and s >= size], 10)
    assert got, "a large put made no /dev/shm/zray* segment"
    return got[0]


@ray.remote
class Keeper:
    def keep(self, box):
        self.arr = ray.get(box[0])  # a zero-copy view of the object
        return int(self.arr.min()), int(self.arr.max())

    def check(self):
        return int(self.arr.min()), int(self.arr.max())


@pytestmark_zray
def test_put_reuses_a_freed_objects_pages_and_views_stay_intact(ray_start):
    size = 24 * MB
    before = shm_segments()
    ref = ray.put(np.full(size, 1, np.uint8))
    name = _new_segment(before, size)
    prefix, ino = name[: -shm.OID_HEX], _ino(shm.segment_path(name))
    view = ray.get(ref)  # the driver holds a view ...
    keeper = Keeper.remote()
    assert ray.get(keeper.keep.remote([ref])) == (1, 1)  # ... and so does an actor
    del ref
    gc.collect()
    for v in range(2, 6):  # new objects of the same size, each freed at once
        before = shm_segments()
        r = ray.put(np.full(size, v, np.uint8))
        assert _ino(shm.segment_path(_new_segment(before, size))) != ino
        assert int(ray.get(r).max()) == v
        del r
    assert int(view.min()) == int(view.max()) == 1
    assert ray.get(keeper.check.remote()) == (1, 1)
    ray.kill(keeper)
    del view
    gc.collect()
    # Nobody maps the first object any more: the next frees are recycled, and a put
    # writes into a recycled segment.
    inos = set()
    for v in range(6, 10):
        before = shm_segments()
        r = ray.put(np.full(size, v, np.uint8))
        inos.add(_ino(shm.segment_path(_new_segment(before, size))))
        assert int(ray.get(r).min()) == v
        del r
        gc.collect()
        wait_until(lambda: spare.spares(prefix), 5)
    assert len(inos) < 4, "no put reused a freed segment"
    assert spare.spares(prefix)


@pytestmark_zray
def test_no_segment_or_spare_is_left_after_shutdown(ray_fresh):
    ray_fresh(num_cpus=1)
    before = shm_segments()
    ref = ray.put(np.ones(16 * MB, np.uint8))
    prefix = _new_segment(before, 16 * MB)[: -shm.OID_HEX]
    del ref
    gc.collect()
    assert wait_until(lambda: spare.spares(prefix), 10), "the freed object was not recycled"
    ray.shutdown()
    assert wait_until(lambda: not shm.list_segments(prefix), 10), shm.list_segments(prefix)
