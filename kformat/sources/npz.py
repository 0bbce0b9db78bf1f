"""NumPy .npz archives, read lazily member by member, never with pickle."""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Iterable

import numpy as np

from ..errors import InputError
from ..format.dtypes import EXTRA_FLOATS
from . import TensorInfo, _check_array
from ..packing.atomic import atomic_path


class NpzSource:
    def __init__(self, path: Path):
        self.path = path
        try:
            self._npz = np.load(path, allow_pickle=False)
        except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
            raise InputError(f"{path}: not a readable .npz archive ({exc})") from None
        self._infos = []
        with zipfile.ZipFile(path) as archive:
            for name in self._npz.files:
                member = name + ".npy" if name + ".npy" in archive.namelist() else name
                with archive.open(member) as handle:
                    try:
                        version = np.lib.format.read_magic(handle)
                        if version == (1, 0):
                            shape, _fortran, dtype = np.lib.format.read_array_header_1_0(handle)
                        else:
                            shape, _fortran, dtype = np.lib.format.read_array_header_2_0(handle)
                    except (ValueError, EOFError) as exc:
                        raise InputError(
                            f"{path}: member {name!r} is not a valid .npy array ({exc})"
                        ) from None
                if dtype.hasobject:
                    raise InputError(f"{path}: member {name!r} holds Python objects; refusing to unpickle")
                self._infos.append(TensorInfo(name, tuple(shape), dtype))

    def tensors(self) -> list[TensorInfo]:
        return list(self._infos)

    def load(self, name: str) -> np.ndarray:
        try:
            array = self._npz[name]
        except ValueError as exc:
            raise InputError(f"{self.path}: tensor {name!r}: {exc}") from None
        _check_array(name, array, str(self.path))
        return array


def write_npz(path: Path, tensors: Iterable[tuple[str, np.ndarray]]) -> None:
    with atomic_path(path) as temp:
        with zipfile.ZipFile(temp, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive:
            for name, array in tensors:
                if array.dtype.name in EXTRA_FLOATS:  # .npy has no bfloat16/float8: widened, exactly
                    array = array.astype(np.float32)
                with archive.open(name + ".npy", "w", force_zip64=True) as member:
                    np.lib.format.write_array(member, np.require(array, requirements="C"), allow_pickle=False)
