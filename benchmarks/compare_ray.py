#!/usr/bin/env python3
"""Compare zray with Ray on the same workloads, side by side.

Runs every case of ``zray/microbenchmark.py`` (Ray's ``ray microbenchmark``
task/object/actor cases) plus a few extra cases, once under zray (this
interpreter, ``--zray-python``) and once under Ray (``--ray-python``). Each
(case, backend) run is a fresh subprocess; backends alternate case by case
(the side that goes first flips every case and every repeat), all in one run.
Finally a table is printed: case, zray, Ray, ratio zray/Ray.

Extra cases, beyond the microbenchmark:

* ``init to first result``: seconds from ``init()`` in a fresh process until
  ``get`` of a trivial task returns (lower is better).
* ``idle cluster memory``: summed RSS (MB) of the driver and every process the
  runtime started, after one task ran and the cluster settled (lower is
  better). Processes are found as descendants of the driver plus processes
  whose command line mentions the session (``init()``'s
  ``address_info["session_dir"]``), with their descendants.
* ``dependent chain of 200 tasks``: ``f.remote(f.remote(...))`` 200 deep, then
  ``get``; chains per second (higher is better).

Each subprocess prints its result as one JSON object on the last line of its
stdout; a subprocess that crashes, prints no result or exceeds ``--timeout``
gives a failure row instead of hanging the run.

The workloads only use the public Ray API, so both sides can run Ray for a dry
run of the harness itself::

    python benchmarks/compare_ray.py --zray-python /work/ray-venv/bin/python \\
        --zray-module ray --filter "tasks sync"
"""

from __future__ import annotations

import argparse
import datetime
import faulthandler
import importlib
import importlib.util
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
MICROBENCHMARK = REPO / "zray" / "microbenchmark.py"
DEFAULT_RAY_PYTHON = "/work/ray-venv/bin/python"

INIT_CASE = "init to first result"
MEMORY_CASE = "idle cluster memory"
CHAIN_CASE = "dependent chain of 200 tasks"
CHAIN_DEPTH = 200
# Cases whose single call is long (40k tasks for "multi client tasks async";
# timeit makes at least 5 calls): their subprocess gets timeout * factor.
TIMEOUT_FACTOR = {"multi client tasks async": 3.0}
# name -> (unit, higher_is_better)
EXTRA_CASES: dict[str, tuple[str, bool]] = {
    INIT_CASE: ("s", False),
    MEMORY_CASE: ("MB", False),
    CHAIN_CASE: ("/s", True),
}

VENV_HELP = """\
Ray runs from its own virtualenv (Ray must never be a dependency of zray).
Create it once with:

  python3 -m venv /work/ray-venv && /work/ray-venv/bin/pip install "ray[default]" numpy

then point --ray-python (or the RAY_PYTHON environment variable) at
/work/ray-venv/bin/python, which is the default.

Dry run of the harness with Ray on both sides (no zray needed):

  python benchmarks/compare_ray.py --zray-python /work/ray-venv/bin/python --zray-module ray
"""


def load_microbenchmark():
    """Load zray/microbenchmark.py by path, without importing the zray package.

    That way the Ray interpreter, which cannot import zray, can use it too.
    """
    name = "zray_microbenchmark_standalone"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, MICROBENCHMARK)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def all_cases() -> list[str]:
    return list(load_microbenchmark().CASE_NAMES) + list(EXTRA_CASES)


def case_unit(case: str) -> tuple[str, bool]:
    return EXTRA_CASES.get(case, ("/s", True))


# ---------------------------------------------------------------------------
# Child side: one case under one backend, result as JSON on the last line.
# ---------------------------------------------------------------------------


def _session_markers(ctx: Any) -> list[str]:
    """Strings that identify this runtime's session on process command lines."""
    info: Any = getattr(ctx, "address_info", None)
    if info is None and isinstance(ctx, dict):
        info = ctx
    markers: list[str] = []
    for key in ("session_dir", "session_name"):
        try:
            value = info[key] if info is not None else None
        except (KeyError, TypeError, IndexError):
            value = None
        if value:
            value = str(value).rstrip("/")
            markers.append(value)
            base = os.path.basename(value)
            if len(base) >= 8:  # long enough to be unique, e.g. session_2026-...
                markers.append(base)
    return sorted(set(markers))


def runtime_processes(markers: list[str]) -> list:
    """This process, its descendants, and processes mentioning a session marker
    (plus their descendants)."""
    import psutil

    me = psutil.Process()
    found = {me.pid: me}
    for p in me.children(recursive=True):
        found[p.pid] = p
    if markers:
        for p in psutil.process_iter(["cmdline"]):
            try:
                cmdline = " ".join(p.info["cmdline"] or [])
            except (psutil.Error, TypeError):
                continue
            if any(m in cmdline for m in markers):
                found[p.pid] = p
                try:
                    for c in p.children(recursive=True):
                        found[c.pid] = c
                except psutil.Error:
                    pass
    alive = []
    for p in found.values():
        try:
            if p.status() != psutil.STATUS_ZOMBIE:
                alive.append(p)
        except psutil.Error:
            pass
    return alive


def measure_memory(markers: list[str]) -> dict[str, Any]:
    import psutil

    procs = []
    rss = pss = 0
    for p in runtime_processes(markers):
        try:
            mi = p.memory_info()
            name = p.name()
            cmdline = " ".join(p.cmdline())[:120]
        except psutil.Error:
            continue
        try:
            p_pss = p.memory_full_info().pss
        except (psutil.Error, AttributeError):
            p_pss = 0
        rss += mi.rss
        pss += p_pss
        procs.append(
            {"pid": p.pid, "name": name, "rss_mb": round(mi.rss / 2**20, 1), "cmdline": cmdline}
        )
    procs.sort(key=lambda d: -d["rss_mb"])
    return {
        "rss_mb": rss / 2**20,
        "pss_mb": pss / 2**20,
        "num_processes": len(procs),
        "processes": procs,
    }


def _reap_leftovers(markers: list[str], grace: float = 10.0) -> list[str]:
    """After shutdown: wait for the runtime's processes to exit, kill any that
    remain (they were all started by this process) and name them."""
    import psutil

    deadline = time.monotonic() + grace
    me = os.getpid()
    left = [p for p in runtime_processes(markers) if p.pid != me]
    while left and time.monotonic() < deadline:
        time.sleep(0.2)
        left = [p for p in runtime_processes(markers) if p.pid != me]
    names = []
    for p in left:
        try:
            names.append(f"{p.pid}:{p.name()}")
            p.kill()
        except psutil.Error:
            pass
    return names


def _child_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="compare_ray.py --child")
    p.add_argument("--child", required=True, metavar="CASE")
    p.add_argument("--module", required=True)
    p.add_argument("--duration", type=float, required=True)
    p.add_argument("--warmup", type=float, required=True)
    p.add_argument("--settle", type=float, required=True)
    p.add_argument("--memory-settle", type=float, required=True)
    p.add_argument("--init-kwargs", default="{}")
    args = p.parse_args(argv)
    case = args.child
    # On timeout the parent sends SIGUSR1 first: dump every thread's stack to
    # stderr, so a hang shows where it hangs.
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    init_kwargs = json.loads(args.init_kwargs)
    result: dict[str, Any] = {
        "case": case,
        "module": args.module,
        "python": sys.executable,
        "pid": os.getpid(),
        "ok": False,
    }
    ray = None
    markers: list[str] = []
    try:
        mb = load_microbenchmark()
        t0 = time.perf_counter()
        ray = importlib.import_module(args.module)
        result["import_s"] = time.perf_counter() - t0
        result["version"] = getattr(ray, "__version__", None)

        if case in EXTRA_CASES:

            @ray.remote
            def trivial():
                return 1

            if case == INIT_CASE:
                t0 = time.perf_counter()
                ctx = ray.init(**init_kwargs)
                markers = _session_markers(ctx)
                assert ray.get(trivial.remote()) == 1
                result["value"] = time.perf_counter() - t0
                result["stddev"] = None
            elif case == MEMORY_CASE:
                ctx = ray.init(**init_kwargs)
                markers = _session_markers(ctx)
                assert ray.get(trivial.remote()) == 1
                time.sleep(args.memory_settle)
                mem = measure_memory(markers)
                result["value"] = mem.pop("rss_mb")
                result["stddev"] = None
                result["details"] = dict(mem, session_markers=markers)
            elif case == CHAIN_CASE:

                @ray.remote
                def f(x):
                    return x + 1

                ctx = ray.init(**init_kwargs)
                markers = _session_markers(ctx)

                def chain():
                    ref = f.remote(0)
                    for _ in range(CHAIN_DEPTH - 1):
                        ref = f.remote(ref)
                    assert ray.get(ref) == CHAIN_DEPTH

                _, rate, sd = mb.timeit(
                    case,
                    chain,
                    1,
                    duration=args.duration,
                    warmup=args.warmup,
                    settle=args.settle,
                )
                result["value"], result["stddev"] = rate, sd
        elif case in mb.CASE_NAMES:
            ctx = ray.init(**init_kwargs)
            markers = _session_markers(ctx)
            results = mb.main(
                ray,
                case,
                args.duration,
                warmup=args.warmup,
                settle=args.settle,
                exact=True,
                raise_errors=True,
                init=False,
            )
            (_, rate, sd) = results[0]
            result["value"], result["stddev"] = rate, sd
        else:
            raise ValueError(f"unknown case {case!r}")
        result["ok"] = True
    except BaseException as e:  # report, never hang or lose the JSON line
        result["error"] = f"{type(e).__name__}: {e}"[:2000]
        traceback.print_exc()
    finally:
        try:
            if ray is not None and getattr(ray, "is_initialized", lambda: True)():
                ray.shutdown()
        except BaseException as e:
            result["shutdown_error"] = f"{type(e).__name__}: {e}"[:500]
        try:
            result["leftover_processes"] = _reap_leftovers(markers)
        except BaseException as e:
            result["leftover_error"] = f"{type(e).__name__}: {e}"[:500]
    sys.stderr.flush()
    print(flush=True)
    print(json.dumps(result), flush=True)
    return 0 if result["ok"] else 1


# ---------------------------------------------------------------------------
# Parent side.
# ---------------------------------------------------------------------------


def _kill_tree(pid: int) -> None:
    """Kill a child we started, and every process it started."""
    try:
        import psutil

        procs = psutil.Process(pid).children(recursive=True)
    except Exception:
        procs = []
    try:
        os.killpg(pid, signal.SIGKILL)  # the child leads its own process group
    except OSError:
        pass
    for p in procs:
        try:
            p.kill()
        except Exception:
            pass


def _parse_last_json(stdout: str) -> dict[str, Any] | None:
    for line in reversed(stdout.splitlines()):
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            obj = json.loads(line)
        except ValueError:
            continue
        if isinstance(obj, dict) and "case" in obj:
            return obj
    return None


def run_child(python: str, module: str, case: str, args, extra_env: dict[str, str]):
    cmd = [
        python,
        str(Path(__file__).resolve()),
        "--child",
        case,
        "--module",
        module,
        "--duration",
        str(args.duration),
        "--warmup",
        str(args.warmup),
        "--settle",
        str(args.settle),
        "--memory-settle",
        str(args.memory_settle),
        "--init-kwargs",
        args.init_kwargs,
    ]
    env = dict(os.environ, **extra_env)
    t0 = time.monotonic()
    try:
        proc = subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
            errors="replace",
            env=env,
            start_new_session=True,
            cwd=str(REPO),
        )
    except OSError as e:
        return {"case": case, "ok": False, "error": f"cannot start {python}: {e}", "wall_s": 0.0}
    timed_out = False
    timeout = args.timeout * TIMEOUT_FACTOR.get(case, 1.0)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
        try:
            os.kill(proc.pid, signal.SIGUSR1)  # child dumps its stacks (faulthandler)
            out, err = proc.communicate(timeout=3)
        except (OSError, subprocess.TimeoutExpired):
            pass
        _kill_tree(proc.pid)
        out, err = proc.communicate()
    wall = time.monotonic() - t0
    result = _parse_last_json(out or "")
    if timed_out:
        result = {"case": case, "ok": False, "error": f"timed out after {timeout:g} s"}
    elif result is None:
        result = {
            "case": case,
            "ok": False,
            "error": f"no JSON result (exit code {proc.returncode})",
        }
    result["wall_s"] = wall
    result["returncode"] = proc.returncode
    if not result.get("ok"):
        tail = ((err or "") + "\n" + (out or "")).strip().splitlines()[-80:]
        result["output_tail"] = tail
    return result


def aggregate(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean over repeats; spread is the std across repeats (N > 1) or the
    within-run std of Ray's timeit (N == 1)."""
    ok = [r for r in runs if r.get("ok")]
    if not ok:
        errors = [r.get("error", "?") for r in runs]
        return {"ok": False, "error": errors[0] if errors else "not run", "runs": runs}
    values = [r["value"] for r in ok]
    mean = statistics.fmean(values)
    if len(values) > 1:
        spread = statistics.pstdev(values)
    else:
        spread = ok[0].get("stddev")
    return {
        "ok": True,
        "value": mean,
        "stddev": spread,
        "n": len(values),
        "failed_runs": len(runs) - len(ok),
        "runs": runs,
    }


def _fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit == "s":
        return f"{value:.3f} s"
    if unit == "MB":
        return f"{value:.0f} MB"
    if value >= 100:
        return f"{value:,.0f}/s"
    return f"{value:.3g}/s"


def _cell(agg: dict[str, Any] | None, unit: str) -> str:
    if agg is None:
        return "(skipped)"
    if not agg["ok"]:
        return "FAILED"
    text = _fmt(agg["value"], unit)
    sd = agg.get("stddev")
    if sd and agg["value"]:
        text += f" ±{100 * sd / agg['value']:.0f}%"
    return text


def print_table(rows: list[dict[str, Any]], zray_label: str, ray_label: str, file=None) -> None:
    file = file or sys.stdout
    w = max([len(r["case"]) for r in rows] + [4])
    head = f"{'case':<{w}}  {zray_label:>20}  {ray_label:>20}  {'zray/Ray':>8}  better"
    print(head, file=file)
    print("-" * len(head), file=file)
    for r in rows:
        unit = r["unit"]
        ratio = f"{r['ratio']:.2f}" if r.get("ratio") is not None else "-"
        better = "higher" if r["higher_is_better"] else "lower"
        print(
            f"{r['case']:<{w}}  {_cell(r['zray'], unit):>20}  {_cell(r['ray'], unit):>20}  "
            f"{ratio:>8}  {better}",
            file=file,
        )
    notes = []
    for r in rows:
        for side, label in (("zray", zray_label), ("ray", ray_label)):
            agg = r[side]
            if agg is None:
                continue
            if not agg["ok"]:
                notes.append(f"{r['case']} [{label}]: {agg['error']}")
            for run in agg["runs"]:
                if run.get("leftover_processes"):
                    notes.append(
                        f"{r['case']} [{label}]: processes left after shutdown (killed): "
                        + ", ".join(run["leftover_processes"][:8])
                    )
            if r["case"] == MEMORY_CASE and agg["ok"]:
                d = agg["runs"][-1].get("details", {})
                top = ", ".join(
                    f"{p['name']} {p['rss_mb']:.0f}" for p in d.get("processes", [])[:6]
                )
                notes.append(
                    f"{MEMORY_CASE} [{label}]: {d.get('num_processes')} processes, "
                    f"PSS {d.get('pss_mb', 0):.0f} MB; largest RSS (MB): {top}"
                )
    if notes:
        print("\nNotes:", file=file)
        for n in notes:
            print("  " + n, file=file)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if "--child" in argv:
        return _child_main(argv)

    p = argparse.ArgumentParser(
        description=__doc__.split("The workloads only use")[0].rstrip(),
        epilog=VENV_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--ray-python",
        default=os.environ.get("RAY_PYTHON", DEFAULT_RAY_PYTHON),
        help="interpreter with Ray installed (default: $RAY_PYTHON or %(default)s)",
    )
    p.add_argument(
        "--zray-python",
        default=sys.executable,
        help="interpreter for the zray side (default: this one, %(default)s)",
    )
    p.add_argument(
        "--zray-module",
        default="zray",
        help="module the zray side imports (default zray; 'ray' for a dry run of the harness)",
    )
    p.add_argument("--filter", default=None, help="only cases whose name contains SUBSTR (several: A|B)")
    p.add_argument("--repeat", type=int, default=1, help="runs per case and backend (default 1)")
    p.add_argument("--json", metavar="OUT.json", help="also write all results as JSON here")
    p.add_argument(
        "--sides",
        choices=("both", "zray", "ray"),
        default="both",
        help="run both backends (default) or only one",
    )
    mb = load_microbenchmark()
    p.add_argument(
        "--duration",
        type=float,
        default=mb.DEFAULT_DURATION,
        help=f"timed seconds per case over {mb.NUM_TRIALS} trials "
        f"(default %(default)s; Ray's own: {mb.RAY_DURATION})",
    )
    p.add_argument("--warmup", type=float, default=mb.DEFAULT_WARMUP, help="warmup seconds")
    p.add_argument(
        "--settle",
        type=float,
        default=mb.DEFAULT_SETTLE,
        help=f"idle seconds before timing a case (default %(default)s; Ray's own: {mb.RAY_SETTLE})",
    )
    p.add_argument(
        "--memory-settle",
        type=float,
        default=5.0,
        help="seconds to let the cluster idle before measuring memory (default %(default)s)",
    )
    p.add_argument(
        "--timeout",
        type=float,
        default=300.0,
        help="seconds before a case subprocess is killed and reported failed "
        "(default %(default)s; x3 for 'multi client tasks async')",
    )
    p.add_argument(
        "--init-kwargs",
        default="{}",
        metavar="JSON",
        help="keyword arguments for init() on both sides, e.g. '{\"num_cpus\": 2}'",
    )
    p.add_argument("--list", action="store_true", help="list the cases and exit")
    args = p.parse_args(argv)

    wanted = args.filter.split("|") if args.filter else None
    cases = [c for c in all_cases() if not wanted or any(w in c for w in wanted)]
    if args.list:
        print("\n".join(cases))
        return 0
    if not cases:
        p.error(f"no case matches --filter {args.filter!r}")
    json.loads(args.init_kwargs)
    run_zray = args.sides in ("both", "zray")
    run_ray = args.sides in ("both", "ray")
    for side, python in (("zray", args.zray_python), ("ray", args.ray_python)):
        if (side == "zray" and run_zray) or (side == "ray" and run_ray):
            if not (os.path.isfile(python) and os.access(python, os.X_OK)):
                p.error(f"--{side}-python {python!r} is not an executable file.\n\n{VENV_HELP}")

    zray_label = "zray" if args.zray_module == "zray" else f"zray-side[{args.zray_module}]"
    ray_label = "Ray"
    # Make the checkout importable on the zray side (and in its workers).
    zray_env = {
        "PYTHONPATH": os.pathsep.join(
            [str(REPO)] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else [])
        )
    }
    sides = {
        "zray": (args.zray_python, args.zray_module, zray_env),
        "ray": (args.ray_python, "ray", {}),
    }

    started = datetime.datetime.now().astimezone()
    rows = []
    total = len(cases) * args.repeat * (int(run_zray) + int(run_ray))
    done = 0
    for i, case in enumerate(cases):
        unit, higher = case_unit(case)
        runs: dict[str, list[dict[str, Any]]] = {"zray": [], "ray": []}
        for rep in range(args.repeat):
            order = ["zray", "ray"] if (i + rep) % 2 == 0 else ["ray", "zray"]
            for side in order:
                if (side == "zray" and not run_zray) or (side == "ray" and not run_ray):
                    continue
                python, module, env = sides[side]
                r = run_child(python, module, case, args, env)
                runs[side].append(r)
                done += 1
                label = zray_label if side == "zray" else ray_label
                status = _fmt(r["value"], unit) if r.get("ok") else "FAILED: " + r.get("error", "?")
                print(
                    f"[{done}/{total}] {case} | {label}: {status} ({r['wall_s']:.0f} s)",
                    file=sys.stderr,
                    flush=True,
                )
        z = aggregate(runs["zray"]) if run_zray else None
        y = aggregate(runs["ray"]) if run_ray else None
        ratio = None
        if z and y and z["ok"] and y["ok"] and y["value"]:
            ratio = z["value"] / y["value"]
        rows.append(
            {
                "case": case,
                "unit": unit,
                "higher_is_better": higher,
                "zray": z,
                "ray": y,
                "ratio": ratio,
            }
        )

    print()
    print_table(rows, zray_label, ray_label)

    if args.json:
        versions = {}
        for side in ("zray", "ray"):
            for rr in runs_of(rows, side):
                if rr.get("version"):
                    versions[side] = rr["version"]
                    break
        meta = {
            "started": started.isoformat(timespec="seconds"),
            "finished": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "command": [sys.executable, *sys.argv],
            "host": platform.node(),
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
            "zray_python": args.zray_python,
            "zray_module": args.zray_module,
            "ray_python": args.ray_python,
            "versions": versions,
            "duration": args.duration,
            "warmup": args.warmup,
            "settle": args.settle,
            "memory_settle": args.memory_settle,
            "repeat": args.repeat,
            "init_kwargs": json.loads(args.init_kwargs),
        }
        with open(args.json, "w") as fh:
            json.dump({"meta": meta, "results": rows}, fh, indent=2)
        print(f"\nwrote {args.json}", file=sys.stderr)
    failed = any(
        (r["zray"] is not None and not r["zray"]["ok"])
        or (r["ray"] is not None and not r["ray"]["ok"])
        for r in rows
    )
    return 1 if failed else 0


def runs_of(rows: list[dict[str, Any]], side: str):
    for r in rows:
        if r[side]:
            yield from r[side]["runs"]


if __name__ == "__main__":
    sys.exit(main())
