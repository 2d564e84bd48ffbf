"""Which runtime the end-to-end tests drive: zray (default) or real Ray.

Test files import the runtime from here, never directly::

    from backend import IS_RAY, exceptions, ray

With ``ZRAY_TEST_BACKEND=ray`` (and a Python that has Ray installed) the same tests
run against real Ray, which is how their expectations were checked::

    ZRAY_TEST_BACKEND=ray /work/ray-venv/bin/python -m pytest tests/ -x

Driver scripts (examples/ and the small drivers some tests write) are written with
``import zray as ray``; :func:`for_backend` rewrites them for Ray.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples"

BACKEND = os.environ.get("ZRAY_TEST_BACKEND", "zray").strip().lower() or "zray"
if BACKEND not in ("zray", "ray"):
    raise RuntimeError(f"ZRAY_TEST_BACKEND must be 'zray' or 'ray', not {BACKEND!r}")
IS_RAY = BACKEND == "ray"


def _prepend_pythonpath(*paths: Path) -> None:
    parts = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    for path in reversed(paths):
        if str(path) not in parts:
            parts.insert(0, str(path))
    os.environ["PYTHONPATH"] = os.pathsep.join(parts)


# Functions and classes defined at the top level of a test module are pickled by
# reference (as `test_tasks._plain`), so workers must be able to import the test modules
# and this one. Ray puts only the driver's working directory on its workers' sys.path, but
# workers inherit the environment of the node that the driver starts: so PYTHONPATH it is.
_prepend_pythonpath(Path(__file__).resolve().parent, *([] if IS_RAY else [REPO]))

if IS_RAY:
    import ray  # noqa: F401  (re-exported)
    from ray import exceptions  # noqa: F401
else:
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    import zray as ray  # noqa: F401
    from zray import exceptions  # noqa: F401

# Ray's dashboard doubles its start time on these 2-core machines and plays no part in
# what is tested: leave it out when the fixtures start Ray.
INIT_EXTRA: dict = {"include_dashboard": False} if IS_RAY else {}


def init(**kwargs):
    """``ray.init`` with the backend's test defaults."""
    return ray.init(**{**INIT_EXTRA, **kwargs})


# --------------------------------------------------------------------------- drivers

_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def strip_ansi(text: str) -> str:
    return _ANSI.sub("", text)


def for_backend(source: str) -> str:
    """Rewrite a driver written for zray so that it runs on the selected backend."""
    if not IS_RAY:
        return source
    source = source.replace("import zray as ray", "import ray")
    source = source.replace("from zray.exceptions import", "from ray.exceptions import")
    source = re.sub(r"^import zray$", "import ray as zray", source, flags=re.M)
    return source


def driver_env(extra: dict | None = None) -> dict:
    env = dict(os.environ)
    if not IS_RAY:
        parts = [str(REPO)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
        env["PYTHONPATH"] = os.pathsep.join(parts)
    env["PYTHONUNBUFFERED"] = "1"
    env.pop("RAY_ADDRESS", None)
    env.pop("ZRAY_ADDRESS", None)
    if extra:
        env.update(extra)
    return env


def write_driver(source: str, directory: Path, name: str = "driver.py") -> Path:
    path = Path(directory) / name
    path.write_text(for_backend(source))
    return path


def run_driver(
    source: str, directory: Path, *, timeout: float = 120, name: str = "driver.py",
    args: list[str] | None = None,
) -> subprocess.CompletedProcess:
    """Run ``source`` (written for zray) as a driver script; output is ANSI-stripped text."""
    path = write_driver(source, directory, name)
    proc = subprocess.run(
        [sys.executable, str(path), *(args or [])],
        cwd=str(directory), env=driver_env(), stdin=subprocess.DEVNULL,
        capture_output=True, text=True, timeout=timeout,
    )
    proc.stdout = strip_ansi(proc.stdout)
    proc.stderr = strip_ansi(proc.stderr)
    return proc


def run_example(name: str, directory: Path, *, timeout: float = 120) -> subprocess.CompletedProcess:
    return run_driver((EXAMPLES / name).read_text(), directory, timeout=timeout, name=name)


class DriverRun:
    """A driver run in the background; its stdout and stderr are merged and collected.

    A driver that must stay alive while the test watches its output ends with
    ``sys.stdin.read()``: :meth:`finish` closes its stdin so that it exits normally
    (running its shutdown), and kills it only if it does not exit in time.
    """

    def __init__(self, source: str, directory: Path, name: str = "driver.py"):
        path = write_driver(source, directory, name)
        self.proc = subprocess.Popen(
            [sys.executable, str(path)], cwd=str(directory), env=driver_env(),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True, bufsize=1,
        )
        self._chunks: list[str] = []
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._lock:
                self._chunks.append(line)

    @property
    def output(self) -> str:
        with self._lock:
            return strip_ansi("".join(self._chunks))

    def wait_for_output(self, pattern: str, timeout: float) -> re.Match | None:
        """Wait until ``pattern`` (a regex) occurs in the output or the driver exits."""
        deadline = time.monotonic() + timeout
        while True:
            m = re.search(pattern, self.output, re.M)
            if m or time.monotonic() > deadline:
                return m
            if self.proc.poll() is not None:
                self._reader.join(timeout=2)
                return re.search(pattern, self.output, re.M)
            time.sleep(0.1)

    def finish(self, timeout: float = 60) -> int:
        try:
            if self.proc.stdin and not self.proc.stdin.closed:
                self.proc.stdin.close()
        except OSError:
            pass
        try:
            rc = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()  # only the driver we started
            rc = self.proc.wait(timeout=10)
        self._reader.join(timeout=5)
        return rc


# --------------------------------------------------------------------------- helpers

def wait_until(predicate: Callable[[], object], timeout: float, interval: float = 0.05):
    """Poll ``predicate`` until it is truthy; return its last value (falsy on timeout)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)


def wait_for_file(path: str | os.PathLike, timeout: float = 60.0) -> bool:
    """For use inside tasks: short sleeps, so that a cancel's KeyboardInterrupt lands.

    (Ray delivers the KeyboardInterrupt of ``ray.cancel`` between bytecodes: a task
    inside one long ``time.sleep(100)`` is not interrupted before the sleep ends.)
    """
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def touch(path: str | os.PathLike) -> None:
    Path(path).touch()


def count_lines(path: str | os.PathLike) -> int:
    try:
        return len(Path(path).read_text().splitlines())
    except FileNotFoundError:
        return 0


def shm_segments(prefix: str = "zray") -> dict[str, int]:
    """Object segments in /dev/shm whose name starts with ``prefix``, with their sizes.

    A node keeps its segments in a private directory ``/dev/shm/zray-<session8>-<node8>-<rand>/``
    (names here: ``<dir>/<oid hex>``); files directly in /dev/shm that match count too.
    A raylet's spare segments (memory allocated ahead for large objects, named
    ``...spare-...``) hold no object and are left out; they go at shutdown.
    """
    out = {}
    try:
        names = os.listdir("/dev/shm")
    except OSError:
        return out
    for n in names:
        if not n.startswith(prefix):
            continue
        path = os.path.join("/dev/shm", n)
        if os.path.isdir(path) and not os.path.islink(path):
            try:
                inner = [f"{n}/{m}" for m in os.listdir(path)]
            except OSError:
                continue
        else:
            inner = [n]
        for m in inner:
            if "spare-" in m.rsplit("/", 1)[-1]:
                continue
            try:
                out[m] = os.stat(os.path.join("/dev/shm", m)).st_size
            except OSError:
                pass
    return out


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` runs (a zombie counts as dead: it only waits to be reaped)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False
