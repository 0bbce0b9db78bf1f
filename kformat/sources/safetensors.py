"""safetensors files through the `safetensors` package (numpy framework)."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Iterable

import numpy as np

from ..errors import InputError
from ..format.dtypes import HAVE_ML_DTYPES
from . import TensorInfo, _check_array
from ..packing.atomic import atomic_path
from .naming import natural_key
from .reading import map_range

_DTYPES = {
    "F64": np.float64,
    "F32": np.float32,
    "F16": np.float16,
    "I64": np.int64,
    "I32": np.int32,
    "I16": np.int16,
    "I8": np.int8,
    "U64": np.uint64,
    "U32": np.uint32,
    "U16": np.uint16,
    "U8": np.uint8,
    "BOOL": np.bool_,
    "BF16": np.float32,  # widened (exactly) when ml_dtypes is missing
}
if HAVE_ML_DTYPES:  # kept as they are, bit-exact
    _DTYPES.update(
        {
            "BF16": np.dtype("bfloat16"),
            "F8_E4M3": np.dtype("float8_e4m3fn"),
            "F8_E5M2": np.dtype("float8_e5m2"),
        }
    )


class SafetensorsSource:
    """Tensors in natural name order (``layer2`` before ``layer10``), read one at a time.

    bfloat16 and float8 tensors keep their type with the `dtypes` extra (ml_dtypes); without it bfloat16
    is widened to float32 (exact), since numpy has no bfloat16.
    """

    forkable = True  # tensors are read by offset (read_range), through descriptors of their own

    def __init__(self, path: Path):
        from safetensors import SafetensorError, safe_open

        self.path = path
        try:
            self._file = safe_open(str(path), framework="np")
            names = list(self._file.keys())
            self._infos = []
            self._stored: dict[str, str] = {}  # name -> the file's dtype name (F32, BF16...)
            for name in sorted(names, key=natural_key):
                sl = self._file.get_slice(name)
                dtype = sl.get_dtype()
                if dtype not in _DTYPES:
                    raise InputError(f"{path}: tensor {name!r} has unsupported dtype {dtype}")
                self._infos.append(TensorInfo(name, tuple(sl.get_shape()), np.dtype(_DTYPES[dtype])))
                self._stored[name] = dtype
            stored = self._file.metadata() or {}
        except SafetensorError as exc:
            raise InputError(f"{path}: not a valid safetensors file ({exc})") from None
        self._offsets = _data_offsets(path)
        # safetensors' save_model drops tied duplicates and records them as removed -> kept
        names = set(names)
        self.aliases = {k: v for k, v in stored.items() if k not in names and v in names}
        self.metadata = {k: v for k, v in stored.items() if k not in self.aliases}

    def tensors(self) -> list[TensorInfo]:
        return list(self._infos)

    def load(self, name: str) -> np.ndarray:
        info = next(i for i in self._infos if i.name == name)
        if self._stored[name] == "BF16" and not HAVE_ML_DTYPES:  # widened exactly: bf16 is float32's top half
            raw = self._raw_bytes(name).view("<u2")
            return (raw.astype(np.uint32) << 16).view(np.float32).reshape(info.shape)
        array = self._raw_bytes(name).view(info.dtype).reshape(info.shape)  # (little-endian hosts)
        if not array.flags.aligned:  # a file whose tensors do not start at multiples of their size
            array = array.copy()
        _check_array(name, array, str(self.path))
        return array

    def _raw_bytes(self, name: str) -> np.ndarray:
        """A tensor's stored bytes, mapped read-only by the offsets safe_open checked
        (kformat.sources.reading): no copy, and no GIL held (safetensors' get_tensor copied
        under it: 0.4 s of a VGG16 pack's GIL-held time)."""
        start, end = self._offsets[name]
        return map_range(self.path, start, end - start, name)


def _data_offsets(path: Path) -> dict[str, tuple[int, int]]:
    """Each tensor's byte range in the file, from its header (which safe_open has validated)."""
    with open(path, "rb") as handle:
        (size,) = struct.unpack("<Q", handle.read(8))
        header = json.loads(handle.read(size))
    first = 8 + size
    return {
        name: (first + entry["data_offsets"][0], first + entry["data_offsets"][1])
        for name, entry in header.items()
        if name != "__metadata__"
    }


def write_safetensors(path: Path, tensors: Iterable[tuple[str, np.ndarray]]) -> None:
    from safetensors.numpy import save_file

    data = {name: np.require(array, requirements="C") for name, array in tensors}  # keeps 0-d scalars 0-d
    with atomic_path(path) as temp:
        save_file(data, str(temp))
