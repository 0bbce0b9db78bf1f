"""The C loops for a test that needs them: kformat.methods.kernels_c, or the test skipped where
the extension was not built; under `make test` (KFORMAT_REQUIRE_C_KERNELS=1) a missing build
fails the test instead, so that the C tests cannot pass by never running."""

from __future__ import annotations

import os
from types import ModuleType

import numpy as np
import pytest

from kformat.methods import histogram, kernels


def built_or_skip() -> ModuleType:
    loops = kernels.c_loops()
    if loops is None:
        if os.environ.get("KFORMAT_REQUIRE_C_KERNELS") == "1":
            pytest.fail("kformat.methods._kernels was not built (make venv builds it)")
        pytest.skip("kformat.methods._kernels was not built (no compiler at install)")
    return loops


def same_histogram_without_c(values: np.ndarray) -> None:
    """histogram.histogram(values) by the C loops is numpy's alone: points, counts, ranges."""
    built_or_skip()
    got = histogram.histogram(values)
    with pytest.MonkeyPatch.context() as m:
        m.setattr(kernels, "c_loops", lambda: None)
        want = histogram.histogram(values)
    np.testing.assert_array_equal(got.points, want.points, strict=True)
    np.testing.assert_array_equal(got.counts, want.counts, strict=True)
    fields = ("lo", "hi", "core_lo", "core_hi", "width")
    assert [getattr(got, f) for f in fields] == [getattr(want, f) for f in fields]
