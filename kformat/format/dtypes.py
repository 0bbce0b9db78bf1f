"""Element types a tensor may have, by the numpy names the manifest stores.

bfloat16 and the float8 types have no numpy type of their own; `ml_dtypes` (the `dtypes`
extra) provides them. The format stores their bytes either way; reading them back as their
own type needs ml_dtypes, and without it they are refused with an error that says so.
"""

from __future__ import annotations

import numpy as np

from ..errors import FormatError

NUMPY_DTYPES = (
    "float16",
    "float32",
    "float64",
    "bool",
    "int8",
    "int16",
    "int32",
    "int64",
    "uint8",
    "uint16",
    "uint32",
    "uint64",
)
EXTRA_FLOATS = {"bfloat16": 2, "float8_e4m3fn": 1, "float8_e5m2": 1}  # name -> itemsize
VALUE_DTYPES = frozenset(NUMPY_DTYPES) | frozenset(EXTRA_FLOATS)

try:  # registers bfloat16 and float8 names with numpy
    import ml_dtypes  # noqa: F401

    HAVE_ML_DTYPES = True
except ImportError:  # pragma: no cover - without the extra
    HAVE_ML_DTYPES = False


def itemsize(name: str) -> int:
    return EXTRA_FLOATS[name] if name in EXTRA_FLOATS else np.dtype(name).itemsize


def numpy_dtype(name: str) -> np.dtype:
    """The numpy dtype of a manifest dtype name."""
    if name in EXTRA_FLOATS and not HAVE_ML_DTYPES:
        raise FormatError(f"{name} tensors need the ml_dtypes package: pip install 'kformat[dtypes]'")
    return np.dtype(name)


def is_float(dtype) -> bool:
    """Floating point, numpy's own types or bfloat16/float8."""
    dtype = np.dtype(dtype)
    return dtype.kind == "f" or dtype.name in EXTRA_FLOATS


def is_storable(dtype) -> bool:
    """bool, integers, and floats (numpy's and bfloat16/float8)."""
    dtype = np.dtype(dtype)
    return dtype.kind in "biuf" or dtype.name in EXTRA_FLOATS
