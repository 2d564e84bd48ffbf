"""Seed example "Waiting for Partial Results".

The seed's Python example is a single line, a fragment: it uses `object_refs`, which it
never defines. This driver is the minimal runnable program around it: it starts four
tasks of different lengths, and the seed's line (between the markers, verbatim) waits for
the first one to finish.
"""

import time

import zray as ray


@ray.remote
def sleep_then_return(seconds):
    time.sleep(seconds)
    return seconds


object_refs = [sleep_then_return.remote(s) for s in (0.0, 3.0, 3.0, 3.0)]

# --- seed begin ---
# Return as soon as one of the tasks finished execution.
ready_refs, remaining_refs = ray.wait(object_refs, num_returns=1, timeout=None)
# --- seed end ---

assert len(ready_refs) == 1 and len(remaining_refs) == 3
assert ready_refs[0] == object_refs[0], "the task that sleeps 0 s finishes first"
assert ray.get(ready_refs) == [0.0]
print("ready:", ray.get(ready_refs), "remaining:", len(remaining_refs))
