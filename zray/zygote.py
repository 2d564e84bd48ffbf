"""Starting worker processes fast: a pre-imported zygote that forks them.

The raylet forks the zygote first thing, before it creates any ZeroMQ context.
The zygote imports the worker's modules once and then forks a worker per request
in a few milliseconds, instead of the ~150 ms a fresh interpreter needs. Forked
workers share the zygote's pages copy-on-write, which keeps an idle node light.

The zygote dies with the raylet (PR_SET_PDEATHSIG) and its workers die with
it; the raylet watches each worker through a pidfd, which works for processes
that are not its children.

It lives outside the raylet package: it imports the worker's modules (that is
its point), which the raylet's own modules never do.
"""

from __future__ import annotations

import ctypes
import json
import os
import select
import signal
import socket
import sys

from zray.process import set_title


def _pdeathsig(sig: int) -> None:
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, sig)
    except OSError:
        pass


class Zygote:
    """The raylet's handle on its zygote process."""

    def __init__(self, shm_prefix: str = "", leftovers: tuple = ()) -> None:
        """``shm_prefix``/``leftovers`` (paths): what the zygote removes if the raylet dies.

        A SIGKILLed raylet cannot clean up; its zygote gets SIGTERM from the kernel
        (PR_SET_PDEATHSIG), kills the workers, then removes the node's segments.
        """
        parent, child = socket.socketpair()
        pid = os.fork()
        if pid == 0:  # the zygote
            parent.close()
            try:
                _zygote_main(child, shm_prefix, leftovers)
            finally:
                os._exit(0)
        child.close()
        self.pid = pid
        self.sock = parent
        self.rfile = parent.makefile("rb")

    def spawn(self, argv: list[str], log_path: str) -> int:
        """Fork a worker running worker_main.main(argv); returns its pid (or raises OSError)."""
        req = json.dumps({"argv": argv, "log": log_path}).encode() + b"\n"
        self.sock.sendall(req)
        line = self.rfile.readline()
        if not line:
            raise OSError("the worker zygote is gone")
        pid = int(line)
        if pid < 0:
            raise OSError("the zygote could not fork a worker")
        return pid

    def stop(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass
        try:
            os.kill(self.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            os.waitpid(self.pid, 0)
        except ChildProcessError:
            pass


class ForkedProc:
    """A Popen-like handle on a worker forked by the zygote (not our child)."""

    def __init__(self, pid: int, args: list[str]):
        self.pid = pid
        self.args = args
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            try:
                os.kill(self.pid, 0)
            except ProcessLookupError:
                self.returncode = 0
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            os.kill(self.pid, sig)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def wait(self, timeout: float | None = None) -> int:
        import subprocess
        import time

        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(self.args, timeout or 0.0)
            time.sleep(0.01)
        return self.returncode or 0


def _zygote_main(sock: socket.socket, shm_prefix: str, leftovers: tuple) -> None:
    set_title("zray::zygote")
    # Children are reaped automatically; the raylet learns of exits via pidfds.
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)

    def on_term(*_):
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, on_term)
    _pdeathsig(signal.SIGTERM)  # after the handler: the raylet may already be gone
    children: list[int] = []
    try:
        if os.getppid() == 1:
            return
        _serve(sock, children)
    finally:
        _cleanup(children, shm_prefix, leftovers)


def _cleanup(children: list, shm_prefix: str, leftovers: tuple) -> None:
    """The raylet is gone: no worker may write a segment after we sweep them."""
    import shutil
    import time

    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    for pid, _ in children:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + 2
    for pid, _ in children:
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.01)
    if shm_prefix:
        from zray.objstore import shm

        shm.remove_all(shm_prefix)
    for path in [*leftovers, *(sock for _, sock in children if sock)]:
        if os.path.isdir(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            try:
                os.unlink(path)
            except OSError:
                pass


def _serve(sock: socket.socket, children: list) -> None:
    import zray.worker_main  # noqa: F401  (the point: import once, fork many)

    rfile = sock.makefile("rb")
    warmed = False
    while True:
        r, _, _ = select.select([sock], [], [], 0.5)
        if not r:
            if not warmed:
                warmed = True
                _warm_extras()
            continue
        line = rfile.readline()
        if not line:
            return
        req = json.loads(line)
        try:
            pid = os.fork()
        except OSError:
            sock.sendall(b"-1\n")
            continue
        if pid == 0:
            rfile.close()
            sock.close()
            _worker_child(req)
        children[:] = [c for c in children if _alive(c[0])]
        children.append((pid, _socket_of(req["argv"])))
        sock.sendall(f"{pid}\n".encode())


def _socket_of(argv: list[str]) -> str | None:
    """The ipc socket file a worker with these arguments binds (see CoreWorker)."""
    try:
        session = argv[argv.index("--session-dir") + 1]
        wid = argv[argv.index("--worker-id") + 1]
    except (ValueError, IndexError):
        return None
    return os.path.join(session, "sockets", "w-" + wid[:12])


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False


def _warm_extras() -> None:
    # Libraries most tasks use; imported while idle so a forked worker has them.
    try:
        import numpy  # noqa: F401
    except Exception:
        pass
    try:  # what a worker needs to become an actor (asyncio, thread pools: ~15 ms)
        import zray.actor  # noqa: F401
        import zray.actor_executor  # noqa: F401
    except Exception:
        pass


def _worker_child(req: dict) -> None:
    code = 1
    try:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        set_title("ray::IDLE")  # Ray's title of an idle worker
        signal.signal(signal.SIGINT, signal.default_int_handler)
        fd = os.open(req["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.close(devnull)
        sys.stdout = os.fdopen(1, "w", buffering=1, closefd=False)
        sys.stderr = os.fdopen(2, "w", buffering=1, closefd=False)
        from zray import worker_main

        worker_main.main(req["argv"])
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    except BaseException:
        import traceback

        traceback.print_exc()
    finally:
        os._exit(code)
