"""raw: the source values, bit-exact, in their own dtype (no tables)."""

from __future__ import annotations

from .base import Method


class Raw(Method):
    name = "raw"
    codes = False
    lossless = True
    options = ()
    granular = False

    def storage(self, dtype: str) -> str:
        return dtype
