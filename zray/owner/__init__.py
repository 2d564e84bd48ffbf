"""The owner of a process's tasks and objects, as a state machine without I/O.

See zray/owner/core.py. The CoreWorker (zray/core_worker.py) is its shell.
"""

from zray.owner.core import Owner

__all__ = ["Owner"]
