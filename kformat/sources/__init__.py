"""Model files in and out: .npz, .safetensors and PyTorch state_dict files.

A TensorSource lists its tensors (name, shape, dtype) without loading them, then loads one
at a time, so packing holds roughly one tensor in memory. Formats are chosen by extension.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Protocol

import numpy as np

from ..errors import InputError, NotFound, StorageError
from ..format.dtypes import is_storable


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int, ...]
    dtype: np.dtype


class TensorSource(Protocol):
    path: Path | None

    def tensors(self) -> list[TensorInfo]: ...

    def load(self, name: str) -> np.ndarray: ...


class DictSource:
    """In-memory tensors (tests, the torch integration, programmatic use)."""

    def __init__(self, tensors: dict[str, np.ndarray]):
        self.path = None
        self._tensors = {}
        for name, array in tensors.items():
            if not isinstance(name, str) or not name:
                raise InputError(f"input: tensor names must be non-empty strings, got {name!r}")
            if type(array).__module__.startswith("torch"):  # bf16, requires_grad, devices
                from ..torch import tensor_to_numpy, torch_module

                array = tensor_to_numpy(torch_module(), array, name)
            elif not isinstance(array, np.ndarray):
                try:
                    array = np.asarray(array)
                except (TypeError, ValueError) as exc:
                    raise InputError(f"input: tensor {name!r} is not an array: {exc}") from None
            _check_array(name, array, "input")
            self._tensors[name] = array

    def tensors(self) -> list[TensorInfo]:
        return [TensorInfo(n, tuple(a.shape), a.dtype) for n, a in self._tensors.items()]

    def load(self, name: str) -> np.ndarray:
        return self._tensors[name]


SUPPORTED_KINDS = (".npz", ".safetensors", ".pt", ".pth", ".bin")


def _check_array(name: str, array: np.ndarray, where: str) -> None:
    if not is_storable(array.dtype):
        raise InputError(
            f"{where}: tensor {name!r} has dtype {array.dtype} (only bool, integer and float tensors)"
        )


def open_source(path: str | Path) -> TensorSource:
    path = Path(path)
    if not path.exists():
        raise NotFound(f"{path}: no such file")
    if path.is_dir():
        raise InputError(f"{path} is a directory; expected a .npz, .safetensors or .pt/.pth file")
    suffix = path.suffix.lower()
    if suffix == ".npz":
        from .npz import NpzSource

        return NpzSource(path)
    if suffix == ".safetensors":
        try:
            from .safetensors import SafetensorsSource

            return SafetensorsSource(path)
        except ImportError:
            raise InputError(
                f"{path}: reading .safetensors needs pip install 'kformat[safetensors]'"
            ) from None
    if suffix in (".pt", ".pth", ".bin"):
        from .torch_file import TorchSource

        return TorchSource(path)
    raise InputError(
        f"{path}: unknown model file type {suffix!r} (expected one of {', '.join(SUPPORTED_KINDS)})"
    )


def write_tensors(path: str | Path, tensors: Iterable[tuple[str, np.ndarray]]) -> None:
    """Write .npz, .safetensors or a PyTorch state dict (.pt/.pth) atomically (a temporary
    file renamed into place)."""
    from ..packing.atomic import write_errors

    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".npz", ".safetensors", ".pt", ".pth"):
        raise InputError(f"{path}: can unpack to .npz, .safetensors or .pt/.pth, not {suffix!r}")
    if path.is_dir():
        raise StorageError(f"{path} is a directory: give a file name")
    with write_errors(path):
        if suffix == ".npz":
            from .npz import write_npz

            write_npz(path, tensors)
        elif suffix in (".pt", ".pth"):
            from .torch_file import write_torch

            write_torch(path, tensors)
        else:
            from .safetensors import write_safetensors

            write_safetensors(path, tensors)
