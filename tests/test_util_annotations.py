"""zray.util.annotations (Ray's ``ray.util.annotations``): markers and deprecation warnings."""

from __future__ import annotations

import warnings

import pytest
from backend import IS_RAY

if IS_RAY:
    from ray.util.annotations import Deprecated, DeveloperAPI, PublicAPI, RayDeprecationWarning
else:
    from zray.util.annotations import Deprecated, DeveloperAPI, PublicAPI, RayDeprecationWarning


def test_markers_leave_the_object_alone():
    def f(x):
        return x + 1

    class C:
        pass

    for marker in (PublicAPI, DeveloperAPI, Deprecated, PublicAPI(stability="beta"),
                   PublicAPI(stability="alpha", api_group="Core"), Deprecated(message="m")):
        assert marker(f)(1) == 2
        assert marker(C) is C
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        f(1)
    assert issubclass(RayDeprecationWarning, DeprecationWarning)


def test_deprecated_with_warning_warns_on_use():
    @Deprecated(message="Use g() instead.", warning=True)
    def f(x):
        return x * 2

    @Deprecated(warning=True)
    class C:
        def __init__(self, v):
            self.v = v

    with pytest.warns(RayDeprecationWarning, match="Use g"):
        assert f(2) == 4
    with pytest.warns(RayDeprecationWarning):
        assert C(3).v == 3


@pytest.mark.skipif(IS_RAY, reason="zray's argument checks")
def test_bad_marker_arguments():
    with pytest.raises(ValueError, match="stability"):
        PublicAPI(stability="gamma")
    with pytest.raises(TypeError):
        DeveloperAPI(x=1)
    with pytest.raises(TypeError):
        Deprecated(bogus=1)
