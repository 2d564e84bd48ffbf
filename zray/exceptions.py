"""Ray's exception hierarchy, under the same names.

A task's exception reaches ``zray.get`` as a ``RayTaskError`` that is *also* an
instance of the original exception class, so ``except ValueError`` still works.
"""

from __future__ import annotations

import os
import traceback
from typing import Any


def _log_warning(msg: str, *args: Any) -> None:
    # logging imports threading: loaded only when a warning is due, so that the owner
    # state machine (which imports this module) stays free of anything doing I/O.
    import logging

    logging.getLogger("zray.exceptions").warning(msg, *args)


class RayError(Exception):
    """Base class of every zray error."""


class RaySystemError(RayError):
    def __init__(self, client_exc: Any = None, traceback_str: str | None = None):
        self.client_exc = client_exc
        self.traceback_str = traceback_str
        super().__init__(client_exc)

    def __str__(self) -> str:
        out = f"System error: {self.client_exc}"
        if self.traceback_str:
            out += f"\ntraceback: {self.traceback_str}"
        return out


class CrossLanguageError(RayError):
    pass


class RayTaskError(RayError):
    """A task raised; carries the cause and the remote traceback."""

    def __init__(
        self,
        function_name: str = "",
        traceback_str: str = "",
        cause: BaseException | None = None,
        proctitle: str = "",
        pid: int = 0,
        ip: str = "127.0.0.1",
        actor_repr: str | None = None,
        actor_id: str | None = None,
    ):
        self.function_name = function_name
        self.traceback_str = traceback_str
        self.cause = cause
        self.proctitle = proctitle or f"zray::{function_name}()"
        self.pid = pid or os.getpid()
        self.ip = ip
        self.actor_repr = actor_repr
        self.actor_id = actor_id
        # Exception.args is what pickling uses: keep it complete.
        Exception.__init__(
            self, function_name, traceback_str, cause, proctitle, pid, ip, actor_repr, actor_id
        )

    def __reduce__(self):
        return (
            _rebuild_task_error,
            (
                self.function_name,
                self.traceback_str,
                self.cause,
                self.proctitle,
                self.pid,
                self.ip,
                self.actor_repr,
                self.actor_id,
            ),
        )

    def __str__(self) -> str:
        lines = self.traceback_str.strip().split("\n") if self.traceback_str else []
        head = f"{self.__class__.__name__}: {self.proctitle} (pid={self.pid}, ip={self.ip}"
        if self.actor_repr:
            head += f", actor_id={self.actor_id}, repr={self.actor_repr}"
        head += ")"
        return "\n".join([head, *lines])

    def as_instanceof_cause(self) -> RayTaskError:
        """Return an error that is both a RayTaskError and an instance of the cause's class."""
        cause_cls = type(self.cause) if self.cause is not None else None
        if cause_cls is None or isinstance(self.cause, RayTaskError):
            return self
        if issubclass(RayTaskError, cause_cls):
            return self
        return _make_dual(cause_cls, self)

    def make_dual_exception_instance(self) -> RayTaskError:
        return self.as_instanceof_cause()

    def with_unserializable_cause(self, why: BaseException) -> RayTaskError:
        """This error with its cause, which cannot be pickled, replaced by a RayError that
        says so (Ray's rule; the traceback keeps the original's text)."""
        msg = (f"The original cause of the RayTaskError ({type(self.cause)}) isn't "
               f"serializable: {why}. Overwriting the cause to a RayError.")
        _log_warning(msg)
        return RayTaskError(self.function_name, self.traceback_str, RayError(msg),
                            self.proctitle, self.pid, self.ip, self.actor_repr, self.actor_id)


_dual_classes: dict[type, type] = {}


def _make_dual(cause_cls: type, err: RayTaskError) -> RayTaskError:
    cls = _dual_classes.get(cause_cls)
    if cls is None:
        try:

            class _Dual(RayTaskError, cause_cls):  # type: ignore[misc, valid-type]
                def __init__(self, inner: RayTaskError):
                    self.__dict__.update(inner.__dict__)
                    self.args = inner.args

                def __getattr__(self, name: str) -> Any:
                    # Attributes of the original exception stay reachable.
                    cause = self.__dict__.get("cause")
                    if cause is None:
                        raise AttributeError(name)
                    return getattr(cause, name)

                def __str__(self) -> str:
                    return RayTaskError.__str__(self)

                def __reduce__(self):
                    # Rebuilt as the dual again: ``except UserError`` still matches.
                    return (_rebuild_dual_error, RayTaskError.__reduce__(self)[1])

            _Dual.__name__ = f"RayTaskError({cause_cls.__name__})"
            _Dual.__qualname__ = _Dual.__name__
            cls = _Dual
        except TypeError as e:
            # Layout conflicts (some builtins) or a class that refuses subclasses.
            _log_warning(
                f"User exception type {cause_cls} in RayTaskError can't be subclassed! This "
                "exception is raised as RayTaskError only. You can use `ray_task_error.cause` "
                f"to access the user exception. Failure in subclassing: {e}")
            return err
        _dual_classes[cause_cls] = cls
    return cls(err)


def _rebuild_task_error(*args: Any) -> RayTaskError:
    return RayTaskError(*args)


def _rebuild_dual_error(*args: Any) -> RayTaskError:
    return RayTaskError(*args).as_instanceof_cause()


class WorkerCrashedError(RayError):
    def __str__(self) -> str:
        return (
            "The worker died unexpectedly while executing this task. "
            "Check the worker's log in the session directory for the cause."
        )


class TaskCancelledError(RayError):
    def __init__(self, task_id: Any = None, error_message: str | None = None):
        self.task_id = task_id
        self.error_message = error_message
        super().__init__(task_id, error_message)

    def __str__(self) -> str:
        msg = "This task or its dependency was cancelled by"
        if self.task_id:
            msg = f"Task: {self.task_id} was cancelled. "
        return self.error_message or msg


class GetTimeoutError(RayError, TimeoutError):
    pass


class ObjectStoreFullError(RayError):
    pass


class OutOfMemoryError(RayError):
    """The node ran low on memory and its raylet's memory monitor killed the worker of this
    task (Ray's name); the message says the threshold and the usage."""


class OutOfDiskError(RayError):
    pass


def describe_address(addr: Any) -> str:
    """A process address as text: a packed one ([node id, ipc, tcp]) as 'tcp (node <hex>)'."""
    if isinstance(addr, (list, tuple)) and len(addr) == 3:
        node_id, ipc, tcp = addr
        where = tcp or ipc or "?"
        if isinstance(node_id, (bytes, bytearray)) and node_id:
            return f"{where}, node {bytes(node_id).hex()[:16]}"
        return str(where)
    if isinstance(addr, (bytes, bytearray)):
        return bytes(addr).hex()
    return str(addr)


class ObjectLostError(RayError):
    def __init__(self, object_ref_hex: str = "", owner_address: Any = "", call_site: str = ""):
        self.object_ref_hex = object_ref_hex
        owner_address = describe_address(owner_address)
        self.owner_address = owner_address
        self.call_site = call_site
        super().__init__(object_ref_hex, owner_address, call_site)

    def _base_str(self) -> str:
        return f"Failed to retrieve object {self.object_ref_hex}. "

    def __str__(self) -> str:
        return self._base_str() + "All copies of the object were lost and it cannot be rebuilt."


class ObjectFetchTimedOutError(ObjectLostError):
    def __str__(self) -> str:
        return self._base_str() + "Fetching the object timed out."


class ReferenceCountingAssertionError(ObjectLostError, AssertionError):
    def __str__(self) -> str:
        return self._base_str() + "The object was already freed (reference counting)."


class ObjectFreedError(ObjectLostError):
    def __str__(self) -> str:
        return self._base_str() + "It was freed explicitly (zray._private.internal_api.free)."


class OwnerDiedError(ObjectLostError):
    def __str__(self) -> str:
        return (
            self._base_str()
            + f"The object's owner ({self.owner_address}) has exited, so it cannot be resolved."
        )


class ObjectReconstructionFailedError(ObjectLostError):
    def __str__(self) -> str:
        return self._base_str() + "Rebuilding the object from its lineage failed."


class ObjectReconstructionFailedMaxAttemptsExceededError(ObjectLostError):
    def __str__(self) -> str:
        return self._base_str() + "Rebuilding it would exceed the task's max_retries."


class ObjectReconstructionFailedLineageEvictedError(ObjectLostError):
    def __str__(self) -> str:
        return self._base_str() + "Its lineage was evicted."


class RayActorError(RayError):
    """An actor died or could not be reached."""

    def __init__(self, cause: Any = None, error_msg: str | None = None, actor_id: Any = None):
        self.cause = cause
        self.error_msg = error_msg or (str(cause) if cause else "The actor died unexpectedly.")
        self.actor_id = actor_id
        super().__init__(cause, error_msg, actor_id)

    def __str__(self) -> str:
        return self.error_msg


class ActorDiedError(RayActorError):
    pass


class ActorUnavailableError(RayActorError):
    pass


class ActorAlreadyExistsError(ValueError, RayError):
    """An actor name is already taken in its namespace (a ValueError, as in Ray)."""


class ActorUnschedulableError(RayError):
    pass


class TaskUnschedulableError(RayError):
    pass


class RpcError(RayError):
    """A call to a cluster service failed (Ray's name): here, the GCS is unreachable.

    ``rpc_code`` follows gRPC's codes, as Ray's: UNAVAILABLE (14) when the GCS is down.
    """

    UNAVAILABLE = 14

    def __init__(self, message: str, rpc_code: int | None = None):
        super().__init__(message)
        self.rpc_code = rpc_code


class LocalRayletDiedError(RayError):
    def __str__(self) -> str:
        return "The task's local raylet died."


class NodeDiedError(RayError):
    pass


class RuntimeEnvSetupError(RayError):
    pass


class TaskPlacementGroupRemoved(RayError):
    pass


class PendingCallsLimitExceeded(RayError):
    pass


class AsyncioActorExit(RayError):
    pass


class ObjectRefStreamEndOfStreamError(RayError):
    """A streaming generator has no more values (iteration turns it into StopIteration)."""


class ActorClassInheritanceException(TypeError):
    """An actor class (a class decorated with @remote) cannot be subclassed."""


class RaySerializationError(RayError, TypeError):
    """A value could not be serialised; the message names its type."""


_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep


def error_from_wire(h: dict[str, Any]) -> BaseException:
    """The error a header names by class (``kind``) and message (``msg``); RayError if unknown."""
    kind = h.get("kind")
    cls = globals().get(kind) if isinstance(kind, str) else None
    if isinstance(cls, type) and issubclass(cls, BaseException):
        try:
            return cls(h.get("msg"))
        except TypeError:
            pass
    return RayError(h.get("msg"))


def as_raisable(value: Any) -> BaseException:
    """What ``get`` raises for a stored error value (a task's error as its dual class)."""
    if isinstance(value, RayTaskError):
        return value.as_instanceof_cause()
    if isinstance(value, BaseException):
        return value
    return RaySystemError(value)


def format_remote_traceback(exc: BaseException) -> str:
    """The traceback of a task's exception as the user wants it: from their code on.

    The executor's own frames (zray's, before the first frame of user code) are left out,
    as Ray does; if every frame is zray's (an internal error), all are kept.
    """
    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename.startswith(_PACKAGE_DIR):
        tb = tb.tb_next
    return "".join(traceback.format_exception(type(exc), exc, tb or exc.__traceback__))


__all__ = [name for name, obj in list(globals().items()) if isinstance(obj, type)]
