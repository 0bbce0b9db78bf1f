"""Quantization methods by name: one module per method, each one `Method` subclass
(kformat.methods.base), registered here. Adding a method is one module plus one line below
(or a `register_method` call from outside the package); a method a reader does not know is
refused with an error that names it.
"""

from __future__ import annotations

from .base import Method, TableSpec, group_rows_for, view_2d
from .compact import QuantizedTensor
from .fp16 import Fp16
from .kmeans import KMeans
from .linear import Linear
from .raw import Raw
from .registry import METHODS, get_method, register_method, unregister_method

__all__ = [
    "METHODS",
    "Method",
    "QuantizedTensor",
    "TableSpec",
    "get_method",
    "group_rows_for",
    "register_method",
    "unregister_method",
    "view_2d",
]

for _method in (KMeans(), Linear(), Fp16(), Raw()):
    register_method(_method)
