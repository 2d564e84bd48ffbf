"""zray.get_runtime_context(): ids and resources of the current driver, worker and task."""

from __future__ import annotations

from typing import Any

from zray import worker_state


class RuntimeContext:
    """What the calling process is: its node, job, worker, task and resources."""

    def __init__(self, cw: Any):
        self._cw = cw

    def get_node_id(self) -> str:
        return self._cw.node_id.hex()

    def get_job_id(self) -> str:
        return self._cw.job_id.hex()

    def get_worker_id(self) -> str:
        return self._cw.worker_id.hex()

    def get_task_id(self) -> str | None:
        t = self._cw.current_task_id
        return t.hex() if t is not None else None

    def get_actor_id(self) -> str | None:
        a = getattr(self._cw, "current_actor_id", None)
        return a.hex() if a is not None else None

    def get_assigned_resources(self) -> dict:
        return {k: v for k, v in self._cw.assigned_resources.items() if k != "GPU_ids"}

    def get_accelerator_ids(self) -> dict:
        return {"GPU": [str(i) for i in self._cw.assigned_resources.get("GPU_ids", [])]}

    @property
    def gcs_address(self) -> str:
        return self._cw.gcs_address

    @property
    def namespace(self) -> str | None:
        return self._cw.namespace

    def get_namespace(self) -> str | None:
        return self._cw.namespace

    @property
    def session_dir(self) -> str:
        return self._cw.session_dir

    @property
    def worker(self) -> Any:
        return self._cw

    def get(self) -> dict:
        return {"job_id": self.get_job_id(), "node_id": self.get_node_id(),
                "task_id": self.get_task_id(), "actor_id": self.get_actor_id(),
                "namespace": self.namespace}

    def is_canceled(self) -> bool:
        """Whether zray.cancel() was called on the running task or actor call (sync and
        threaded actors)."""
        rt = getattr(self._cw, "actor_runtime", None)
        if rt is None:
            if self._cw.mode == "driver":
                raise RuntimeError("This method should be called inside a task or actor.")
            ex = getattr(self._cw, "task_executor", None)
            return ex is not None and ex.is_canceled(self._cw.current_task_id)
        if rt.mode == "async":
            raise RuntimeError("This method is not supported in an async actor.")
        return rt.is_canceled(self._cw.current_task_id)

    @property
    def was_current_actor_reconstructed(self) -> bool:
        return bool(getattr(self._cw, "actor_restarted", False))

    @property
    def current_actor(self) -> Any:
        return getattr(self._cw, "current_actor_handle", None)


def get_runtime_context() -> RuntimeContext:
    cw = worker_state.ensure_initialized()
    return RuntimeContext(cw)
