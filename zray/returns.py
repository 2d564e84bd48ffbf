"""The return values of a task or actor call, from what its function returned."""

from __future__ import annotations

import inspect
from typing import Any


def split_returns(result: Any, nret: int, partial: list) -> list:
    """The ``nret`` return values of a task's result. A generator is drained into
    ``partial`` so that, if it raises, the caller still has what it yielded."""
    if nret == 0 or nret == 1:
        return [result if nret == 1 else None]
    if inspect.isgenerator(result):
        for v in result:
            partial.append(v)
        result = partial
    if not isinstance(result, (tuple, list)) or len(result) != nret:
        n = len(result) if isinstance(result, (tuple, list)) else "not a sequence"
        partial.clear()  # the wrong count: every return is the error
        raise ValueError(f"Task returned {n} objects, but num_returns={nret}.")
    return list(result)
