"""The one compiled part: kformat.methods._kernels, the fits' inner loops in C.

Optional: where it cannot be built (no compiler), the install goes on and the fits run
through numba or numpy instead, with the same results. Everything else is in pyproject.toml.
"""

import sys

from setuptools import Extension, setup

# no contraction of a * b + c into one rounding: the loops must round as numpy and numba do
flags = [] if sys.platform == "win32" else ["-O3", "-ffp-contract=off", "-fno-fast-math"]

setup(
    ext_modules=[
        Extension("kformat.methods._kernels", ["kformat/methods/_kernels.c"], extra_compile_args=flags, optional=True)
    ]
)
