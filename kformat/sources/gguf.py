"""GGUF files through gguf-py (the `gguf` extra): float and integer tensors as they are,
GGML's quantized types (Q4_0, Q4_K, IQ...) dequantized to float32 by gguf-py, one tensor at a
time from the memory-mapped file. Shapes are numpy's order (GGUF stores them reversed).

Metadata fields are kept as strings under "gguf.<key>": scalars as text, arrays as JSON,
except arrays of more than MAX_ARRAY items (token lists), which are recorded by length only.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType, GGUFReader
from gguf.quants import dequantize

from ..errors import InputError
from ..format.dtypes import HAVE_ML_DTYPES
from . import TensorInfo, _check_array

MAX_ARRAY = 256
_AS_IS = {
    GGMLQuantizationType.F32,
    GGMLQuantizationType.F16,
    GGMLQuantizationType.F64,
    GGMLQuantizationType.I8,
    GGMLQuantizationType.I16,
    GGMLQuantizationType.I32,
    GGMLQuantizationType.I64,
}


def _field_text(field) -> str:
    value = field.contents()
    if isinstance(value, list) and len(value) > MAX_ARRAY:
        return f"<array of {len(value)} items, not kept>"
    return value if isinstance(value, str) else json.dumps(value)


class GgufSource:
    def __init__(self, path: Path):
        self.path = path
        try:
            self._reader = GGUFReader(str(path), "r")
        except Exception as exc:  # gguf-py raises ValueError, KeyError, struct errors...
            raise InputError(f"{path}: not a readable GGUF file ({type(exc).__name__}: {exc})") from None
        self._tensors = {}
        self._infos = []
        for tensor in self._reader.tensors:
            shape = tuple(int(d) for d in reversed(tensor.shape.tolist()))
            if tensor.tensor_type in _AS_IS:
                dtype = tensor.data.dtype
            elif tensor.tensor_type == GGMLQuantizationType.BF16 and HAVE_ML_DTYPES:
                dtype = np.dtype("bfloat16")
            else:
                dtype = np.dtype(np.float32)  # dequantized
            self._tensors[tensor.name] = tensor
            self._infos.append(TensorInfo(tensor.name, shape, dtype))
        self.metadata = {}
        for key, field in self._reader.fields.items():
            if key.startswith("GGUF."):  # the container's own version and counts
                continue
            try:
                self.metadata[f"gguf.{key}"] = _field_text(field)
            except (ValueError, UnicodeDecodeError, IndexError) as exc:
                raise InputError(f"{path}: metadata field {key!r} is unreadable ({exc})") from None

    def tensors(self) -> list[TensorInfo]:
        return list(self._infos)

    def load(self, name: str) -> np.ndarray:
        tensor = self._tensors[name]
        info = next(i for i in self._infos if i.name == name)
        try:
            if tensor.tensor_type in _AS_IS:
                array = np.asarray(tensor.data)
            elif info.dtype.name == "bfloat16":
                array = np.asarray(tensor.data).view(info.dtype)
            else:
                array = dequantize(np.asarray(tensor.data), tensor.tensor_type)
            array = array.reshape(info.shape)
        except Exception as exc:  # an unsupported GGML type, a truncated file
            raise InputError(
                f"{self.path}: tensor {name!r} ({tensor.tensor_type.name}) cannot be read: {exc}"
            ) from None
        _check_array(name, array, str(self.path))
        return array
