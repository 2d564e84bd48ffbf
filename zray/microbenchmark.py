"""Ray's ``ray microbenchmark`` cases for tasks, objects and actors.

This mirrors ``python/ray/_private/ray_perf.py`` (the script behind
``ray microbenchmark``) and the ``timeit`` helper from
``python/ray/_private/ray_microbenchmark_helpers.py``: the same case names, the
same workloads and multipliers, the same rate computation. It is written purely
against the public Ray API and receives the runtime module as a parameter, so
the very same code runs under ``ray`` and under ``zray``::

    import zray
    from zray.microbenchmark import main
    main(zray, filter="tasks")

Command line (prints lines in Ray's format,
``single client tasks sync per second 1234.56 +- 12.3``)::

    python -m zray.microbenchmark [--backend zray|ray] [--filter SUBSTR]

Under an interpreter where the ``zray`` package itself cannot be imported
(e.g. a venv holding only Ray), run the file by path instead:
``/work/ray-venv/bin/python zray/microbenchmark.py --backend ray``.

Differences from Ray's script, all deliberate:

* Cases that need private Ray internals (object out-of-scope callbacks via
  ``core_worker``), placement groups and the Ray Client cases are left out.
* ``Actor._remote()`` is spelled ``Actor.remote()`` (same thing, public API).
* Setup runs only for the selected cases (Ray builds every case's actors even
  when ``TESTS_TO_RUN`` filters them out).
* The timing is shorter by default (see ``DEFAULT_*``), because Ray's defaults
  (10 s idle sleep, 1 s warmup, 4 x 2 s trials per case) take ~6 minutes for
  the whole suite; pass ``duration=RAY_DURATION, settle=RAY_SETTLE`` (CLI:
  ``--ray-timing``) for Ray's exact schedule.

Nothing here imports zray internals, and every remote function and class is
defined inside a function so that cloudpickle ships it by value: workers never
need to import this module.
"""

from __future__ import annotations

import os
import sys

if (
    __name__ == "__main__"
    and sys.path
    and os.path.abspath(sys.path[0]) == os.path.dirname(os.path.abspath(__file__))
):
    # Run as ``python zray/microbenchmark.py``: don't let the package's own
    # modules (zray/exceptions.py, ...) shadow top-level imports.
    del sys.path[0]

import argparse  # noqa: E402
import asyncio  # noqa: E402
import importlib  # noqa: E402
import multiprocessing  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402
from collections.abc import Callable  # noqa: E402
from types import ModuleType, SimpleNamespace  # noqa: E402
from typing import Any  # noqa: E402

# Ray's timeit: sleep 10 s, warm up for 1 s, then 4 trials of 2 s each.
RAY_SETTLE = 10.0
RAY_WARMUP = 1.0
RAY_DURATION = 8.0
NUM_TRIALS = 4

# Defaults for a small (2-core) machine: same structure, 4 trials of 1 s.
DEFAULT_SETTLE = 1.0
DEFAULT_WARMUP = 1.0
DEFAULT_DURATION = 4.0

Result = tuple[str, float, float]


def timeit(
    name: str,
    fn: Callable[[], Any],
    multiplier: float = 1,
    *,
    duration: float = DEFAULT_DURATION,
    warmup: float = DEFAULT_WARMUP,
    settle: float = DEFAULT_SETTLE,
    trials: int = NUM_TRIALS,
    echo: bool = True,
) -> Result:
    """Ray's ``timeit``: returns ``(name, mean rate/s, stddev)``.

    Sleeps ``settle`` seconds (Ray: 10, "to avoid noisy neighbors"), calls
    ``fn`` repeatedly for ``warmup`` seconds (Ray: 1) and counts the calls,
    then runs ``trials`` timed loops (Ray: 4) of ``duration / trials`` seconds
    each (Ray: 2). Each loop calls ``fn`` in steps of ``warmup_count // 10 + 1``
    until its time is up, and yields ``multiplier * calls / elapsed``. The
    result is the mean and population std (``np.std``) of those rates. Every
    phase runs ``fn`` at least once, so a slow ``fn`` still gives a rate.
    """
    time.sleep(settle)
    start = time.perf_counter()
    count = 0
    while time.perf_counter() - start < warmup:
        fn()
        count += 1
    step = count // 10 + 1
    trial_time = duration / trials
    stats = []
    for _ in range(trials):
        start = time.perf_counter()
        count = 0
        while time.perf_counter() - start < trial_time:
            for _ in range(step):
                fn()
            count += step
        end = time.perf_counter()
        stats.append(multiplier * count / (end - start))
    mean = statistics.fmean(stats)
    sd = statistics.pstdev(stats)
    if echo:
        print(name, "per second", round(mean, 2), "+-", round(sd, 2), flush=True)
    return name, mean, sd


def _define(ray: ModuleType) -> SimpleNamespace:
    """The module-level remote functions and classes of ray_perf.py.

    Defined in a function (not at module level) so they are pickled by value
    and bound to whichever runtime module was passed in.
    """

    @ray.remote(num_cpus=0)
    class Actor:
        def small_value(self):
            return b"ok"

        def small_value_arg(self, x):
            return b"ok"

        def small_value_batch(self, n):
            ray.get([small_value.remote() for _ in range(n)])

    @ray.remote
    class AsyncActor:
        async def small_value(self):
            return b"ok"

        async def small_value_with_arg(self, x):
            return b"ok"

        async def small_value_batch(self, n):
            await asyncio.wait([small_value.remote() for _ in range(n)])

    @ray.remote(num_cpus=0)
    class Client:
        def __init__(self, servers):
            if not isinstance(servers, list):
                servers = [servers]
            self.servers = servers

        def small_value_batch(self, n):
            results = []
            for s in self.servers:
                results.extend([s.small_value.remote() for _ in range(n)])
            ray.get(results)

        def small_value_batch_arg(self, n):
            x = ray.put(0)
            results = []
            for s in self.servers:
                results.extend([s.small_value_arg.remote(x) for _ in range(n)])
            ray.get(results)

    @ray.remote
    def small_value():
        return b"ok"

    @ray.remote
    def create_object_containing_ref():
        obj_refs = []
        for _ in range(10000):
            obj_refs.append(ray.put(1))
        return obj_refs

    return SimpleNamespace(
        Actor=Actor,
        AsyncActor=AsyncActor,
        Client=Client,
        small_value=small_value,
        create_object_containing_ref=create_object_containing_ref,
    )


# A case's setup gets (ray module, definitions), does the per-case setup of
# ray_perf.main and returns (fn to time, multiplier).
Setup = Callable[[ModuleType, SimpleNamespace], tuple[Callable[[], Any], float]]
CASES: list[tuple[str, Setup]] = []


def _case(name: str) -> Callable[[Setup], Setup]:
    def register(setup: Setup) -> Setup:
        CASES.append((name, setup))
        return setup

    return register


def _n_cpu() -> int:
    # ray_perf.py: multiprocessing.cpu_count() // 2 (1 on a 2-core machine).
    return max(1, multiprocessing.cpu_count() // 2)


@_case("single client get calls (Plasma Store)")
def _get_small(ray, d):
    value = ray.put(0)

    def get_small():
        ray.get(value)

    return get_small, 1


@_case("single client put calls (Plasma Store)")
def _put_small(ray, d):
    def put_small():
        ray.put(0)

    return put_small, 1


@_case("multi client put calls (Plasma Store)")
def _put_multi_small(ray, d):
    @ray.remote
    def do_put_small():
        for _ in range(100):
            ray.put(0)

    def put_multi_small():
        ray.get([do_put_small.remote() for _ in range(10)])

    return put_multi_small, 1000


@_case("single client put gigabytes")
def _put_large(ray, d):
    import numpy as np

    arr = np.zeros(100 * 1024 * 1024, dtype=np.int64)

    def put_large():
        ray.put(arr)

    return put_large, 8 * 0.1


@_case("single client tasks and get batch")
def _tasks_and_get_batch(ray, d):
    small_value = d.small_value

    def small_value_batch():
        submitted = [small_value.remote() for _ in range(1000)]
        ray.get(submitted)
        return 0

    return small_value_batch, 1


@_case("multi client put gigabytes")
def _put_multi(ray, d):
    @ray.remote
    def do_put():
        import numpy as np

        for _ in range(10):
            ray.put(np.zeros(10 * 1024 * 1024, dtype=np.int64))

    def put_multi():
        ray.get([do_put.remote() for _ in range(10)])

    return put_multi, 10 * 8 * 0.1


@_case("single client get object containing 10k refs")
def _get_containing_refs(ray, d):
    obj_containing_ref = d.create_object_containing_ref.remote()

    def get_containing_object_ref():
        ray.get(obj_containing_ref)

    return get_containing_object_ref, 1


@_case("single client wait 1k refs")
def _wait_1k(ray, d):
    small_value = d.small_value

    def wait_multiple_refs():
        num_objs = 1000
        not_ready = [small_value.remote() for _ in range(num_objs)]
        # ray_perf.py: trigger fetch_local only once per object.
        fetch_local = True
        for _ in range(num_objs):
            _ready, not_ready = ray.wait(not_ready, fetch_local=fetch_local)
            if fetch_local:
                fetch_local = False

    return wait_multiple_refs, 1


@_case("single client tasks sync")
def _tasks_sync(ray, d):
    small_value = d.small_value

    def small_task():
        ray.get(small_value.remote())

    return small_task, 1


@_case("single client tasks async")
def _tasks_async(ray, d):
    small_value = d.small_value

    def small_task_async():
        ray.get([small_value.remote() for _ in range(1000)])

    return small_task_async, 1000


@_case("multi client tasks async")
def _multi_tasks(ray, d):
    n = 10000
    m = 4
    actors = [d.Actor.remote() for _ in range(m)]

    def multi_task():
        submitted = [a.small_value_batch.remote(n) for a in actors]
        ray.get(submitted)

    return multi_task, n * m


@_case("1:1 actor calls sync")
def _actor_sync(ray, d):
    a = d.Actor.remote()

    def actor_sync():
        ray.get(a.small_value.remote())

    return actor_sync, 1


@_case("1:1 actor calls async")
def _actor_async(ray, d):
    a = d.Actor.remote()

    def actor_async():
        ray.get([a.small_value.remote() for _ in range(1000)])

    return actor_async, 1000


@_case("1:1 actor calls concurrent")
def _actor_concurrent(ray, d):
    a = d.Actor.options(max_concurrency=16).remote()

    def actor_concurrent():
        ray.get([a.small_value.remote() for _ in range(1000)])

    return actor_concurrent, 1000


@_case("1:n actor calls async")
def _actor_1n(ray, d):
    n = 5000
    actors = [d.Actor.remote() for _ in range(_n_cpu())]
    client = d.Client.remote(actors)

    def actor_async_direct():
        ray.get(client.small_value_batch.remote(n))

    return actor_async_direct, n * len(actors)


@_case("n:n actor calls async")
def _actor_nn(ray, d):
    n = 5000
    m = 4
    n_cpu = _n_cpu()
    a = [d.Actor.remote() for _ in range(n_cpu)]

    @ray.remote
    def work(actors):
        ray.get([actors[i % n_cpu].small_value.remote() for i in range(n)])

    def actor_multi2():
        ray.get([work.remote(a) for _ in range(m)])

    return actor_multi2, m * n


@_case("n:n actor calls with arg async")
def _actor_nn_arg(ray, d):
    n = 1000
    actors = [d.Actor.remote() for _ in range(_n_cpu())]
    clients = [d.Client.remote(a) for a in actors]

    def actor_multi2_direct_arg():
        ray.get([c.small_value_batch_arg.remote(n) for c in clients])

    return actor_multi2_direct_arg, n * len(clients)


@_case("1:1 async-actor calls sync")
def _async_actor_sync(ray, d):
    a = d.AsyncActor.remote()

    def actor_sync():
        ray.get(a.small_value.remote())

    return actor_sync, 1


@_case("1:1 async-actor calls async")
def _async_actor_async(ray, d):
    a = d.AsyncActor.remote()

    def async_actor():
        ray.get([a.small_value.remote() for _ in range(1000)])

    return async_actor, 1000


@_case("1:1 async-actor calls with args async")
def _async_actor_args(ray, d):
    a = d.AsyncActor.remote()

    def async_actor():
        ray.get([a.small_value_with_arg.remote(i) for i in range(1000)])

    return async_actor, 1000


@_case("1:n async-actor calls async")
def _async_actor_1n(ray, d):
    n = 5000
    actors = [d.AsyncActor.remote() for _ in range(_n_cpu())]
    client = d.Client.remote(actors)

    def async_actor_async():
        ray.get(client.small_value_batch.remote(n))

    return async_actor_async, n * len(actors)


@_case("n:n async-actor calls async")
def _async_actor_nn(ray, d):
    n = 5000
    m = 4
    n_cpu = _n_cpu()
    a = [d.AsyncActor.remote() for _ in range(n_cpu)]

    @ray.remote
    def async_actor_work(actors):
        ray.get([actors[i % n_cpu].small_value.remote() for i in range(n)])

    def async_actor_multi():
        ray.get([async_actor_work.remote(a) for _ in range(m)])

    return async_actor_multi, m * n


CASE_NAMES: list[str] = [name for name, _ in CASES]


def select_cases(filter: str | None = None, exact: bool = False) -> list[str]:
    """Case names matching ``filter`` (a substring, like TESTS_TO_RUN)."""
    if not filter:
        return list(CASE_NAMES)
    if exact:
        return [n for n in CASE_NAMES if n == filter]
    return [n for n in CASE_NAMES if filter in n]


def main(
    ray_module: ModuleType,
    filter: str | None = None,
    duration: float = DEFAULT_DURATION,
    *,
    warmup: float = DEFAULT_WARMUP,
    settle: float = DEFAULT_SETTLE,
    exact: bool = False,
    raise_errors: bool = False,
    init: bool = True,
    init_kwargs: dict[str, Any] | None = None,
) -> list[Result]:
    """Run the selected cases; return ``[(case_name, rate_per_s, stddev)]``.

    ``filter`` selects cases whose name contains it (or equals it, with
    ``exact=True``). ``duration`` is the timed seconds per case, split over 4
    trials (Ray: 8.0); ``warmup`` and ``settle`` as in :func:`timeit`.
    Calls ``ray_module.init(**init_kwargs)`` and finally ``shutdown()``,
    unless ``init=False`` or ``ray_module.is_initialized()`` says it is running
    already. A failing case is reported on stderr and skipped,
    or re-raised if ``raise_errors``.
    """
    ray = ray_module
    selected = select_cases(filter, exact)
    results: list[Result] = []
    if not selected:
        return results
    is_initialized = getattr(ray, "is_initialized", None)
    owns_runtime = init and not (is_initialized and is_initialized())
    if owns_runtime:
        ray.init(**(init_kwargs or {}))
    try:
        d = _define(ray)
        setups = dict(CASES)
        for name in selected:
            try:
                fn, multiplier = setups[name](ray, d)
                results.append(
                    timeit(name, fn, multiplier, duration=duration, warmup=warmup, settle=settle)
                )
            except Exception as e:
                if raise_errors:
                    raise
                print(f"{name} FAILED: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
                traceback.print_exc(file=sys.stderr)
    finally:
        if owns_runtime:
            ray.shutdown()
    return results


def _cli(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m zray.microbenchmark",
        description="Ray's `ray microbenchmark` task/object/actor cases, run on zray or Ray.",
    )
    p.add_argument("--backend", default="zray", help="runtime module to import: zray or ray")
    p.add_argument("--filter", default=None, help="only cases whose name contains SUBSTR")
    p.add_argument(
        "--duration",
        type=float,
        default=DEFAULT_DURATION,
        help=f"timed seconds per case, over {NUM_TRIALS} trials (default %(default)s; Ray: {RAY_DURATION})",
    )
    p.add_argument("--warmup", type=float, default=DEFAULT_WARMUP, help="warmup seconds")
    p.add_argument(
        "--settle",
        type=float,
        default=DEFAULT_SETTLE,
        help=f"idle seconds before each case (default %(default)s; Ray: {RAY_SETTLE})",
    )
    p.add_argument(
        "--ray-timing", action="store_true", help="use Ray's exact schedule (10 s + 1 s + 4x2 s)"
    )
    p.add_argument("--list", action="store_true", help="list case names and exit")
    args = p.parse_args(argv)
    if args.list:
        print("\n".join(select_cases(args.filter)))
        return 0
    if args.ray_timing:
        args.duration, args.warmup, args.settle = RAY_DURATION, RAY_WARMUP, RAY_SETTLE
    try:
        module = importlib.import_module(args.backend)
    except ImportError as e:
        hint = ""
        if args.backend == "ray":
            hint = (
                "\n(Ray lives in its own venv: /work/ray-venv/bin/python zray/microbenchmark.py"
                " --backend ray; see benchmarks/README.md)"
            )
        print(f"cannot import backend {args.backend!r}: {e}{hint}", file=sys.stderr)
        return 2
    results = main(module, args.filter, args.duration, warmup=args.warmup, settle=args.settle)
    return 0 if len(results) == len(select_cases(args.filter)) else 1


if __name__ == "__main__":
    sys.exit(_cli())
