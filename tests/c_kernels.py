"""The C loops for a test that needs them: kformat.methods.kernels_c, or the test skipped where
the extension was not built; under `make test` (KFORMAT_REQUIRE_C_KERNELS=1) a missing build
fails the test instead, so that the C tests cannot pass by never running."""

from __future__ import annotations

import os
from types import ModuleType

import pytest

from kformat.methods import kernels


def built_or_skip() -> ModuleType:
    loops = kernels.c_loops()
    if loops is None:
        if os.environ.get("KFORMAT_REQUIRE_C_KERNELS") == "1":
            pytest.fail("kformat.methods._kernels was not built (make venv builds it)")
        pytest.skip("kformat.methods._kernels was not built (no compiler at install)")
    return loops
