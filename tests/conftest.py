"""Fixtures of the end-to-end tests; the runtime under test comes from ``backend.py``.

- ``ray_start``: a shared 4-CPU cluster, started once per test module (lazily: a test
  that needed its own cluster may have shut it down) and shut down at the module's end.
- ``ray_fresh``: for tests that need their own cluster configuration; yields a
  function ``start(**init_kwargs)`` (or nothing is started, for tests of the implicit
  start), and shuts down whatever is running at the end of the test.
"""

from __future__ import annotations

import pytest
from backend import BACKEND, init, ray


def pytest_report_header(config):
    return f"zray end-to-end backend: {BACKEND} ({ray.__name__} from {ray.__file__})"


@pytest.fixture(scope="module")
def _module_cluster():
    yield
    if ray.is_initialized():
        ray.shutdown()


@pytest.fixture
def ray_start(_module_cluster):
    if not ray.is_initialized():
        init(num_cpus=4)
    yield ray


@pytest.fixture
def ray_fresh():
    if ray.is_initialized():
        ray.shutdown()

    def start(**kwargs):
        return init(**kwargs)

    yield start
    if ray.is_initialized():
        ray.shutdown()
