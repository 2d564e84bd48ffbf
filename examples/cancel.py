# ruff: noqa: E402, I001
"""Seed example "Cancelling tasks".

The seed's example is a fragment: it uses `ray` and `time` without importing them. The
two imports below are the minimal additions that make it a runnable driver; everything
between the markers is the seed's text, verbatim but for the `zray` in the imports.
Expected output: "Object reference was cancelled."
"""

import time

import zray as ray

# --- seed begin ---
@ray.remote
def blocking_operation():
    time.sleep(10e6)

obj_ref = blocking_operation.remote()
ray.cancel(obj_ref)

from zray.exceptions import TaskCancelledError

try:
    ray.get(obj_ref)
except TaskCancelledError:
    print("Object reference was cancelled.")
# --- seed end ---
