"""Model files in and out: .npz, .safetensors, PyTorch, Hugging Face sharded checkpoints,
ONNX and GGUF.

A TensorSource lists its tensors (name, shape, dtype) without loading them, then loads one
at a time, so packing holds roughly one tensor in memory. Input formats are registered in
kformat.sources.formats (one module per format plus one registration). A source may also
carry `metadata` (strings kept in the manifest) and `aliases` (tied tensors stored once).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Protocol

import numpy as np

from ..errors import InputError, StorageError
from ..format.dtypes import is_storable


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int, ...]
    dtype: np.dtype


class TensorSource(Protocol):
    """A source may also set `forkable = True`: its load() may run in a forked child process
    at the same time as this one's (it reads from memory, or by offset through descriptors
    of its own), so packing can read and encode tensors in worker processes
    (kformat.packing.forked)."""

    path: Path | None

    def tensors(self) -> list[TensorInfo]: ...

    def load(self, name: str) -> np.ndarray: ...


class DictSource:
    """In-memory tensors (tests, the torch integration, programmatic use)."""

    forkable = True  # a forked child reads the arrays copy-on-write, with no copy

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
        self.aliases = shared_views((n, _memory_key(a)) for n, a in self._tensors.items())

    def tensors(self) -> list[TensorInfo]:
        return [TensorInfo(n, tuple(a.shape), a.dtype) for n, a in self._tensors.items()]

    def load(self, name: str) -> np.ndarray:
        return self._tensors[name]


def _check_array(name: str, array: np.ndarray, where: str) -> None:
    if not is_storable(array.dtype):
        raise InputError(
            f"{where}: tensor {name!r} has dtype {array.dtype} (only bool, integer and float tensors)"
        )


def input_formats() -> list[str]:
    """The model files kformat reads, as a user gives them (e.g. `.gguf`), registration order."""
    from .formats import input_formats as _described

    return _described()


def open_source(path: str | Path) -> TensorSource:
    """The tensors of a model file (or a Hugging Face checkpoint directory), by its format."""
    from .formats import open_source as _open

    return _open(path)


def source_metadata(source: TensorSource) -> dict[str, str]:
    """Strings the source file carries (safetensors __metadata__, GGUF fields), if any."""
    return dict(getattr(source, "metadata", None) or {})


def source_aliases(source: TensorSource) -> dict[str, str]:
    """Tensors the source stores once under another name (tied weights): alias -> name."""
    return dict(getattr(source, "aliases", None) or {})


def find_aliases(source: TensorSource) -> dict[str, str]:
    """The source's tied tensors (alias -> stored name), each alias naming a tensor the
    source lists and a stored name that is not itself an alias."""
    aliases = source_aliases(source)
    names = {t.name for t in source.tensors()}
    return {a: n for a, n in aliases.items() if n in names and n not in aliases and a != n}


def shared_views(items) -> dict[str, str]:
    """Names whose arrays are the same memory as an earlier one (same address, shape, strides
    and dtype): the tied weights of a state dict. `items` gives (name, key) pairs."""
    first: dict[tuple, str] = {}
    aliases = {}
    for name, key in items:
        if key is None:
            continue
        if key in first:
            aliases[name] = first[key]
        else:
            first[key] = name
    return aliases


def _memory_key(array: np.ndarray):
    if array.size == 0:
        return None
    return (array.__array_interface__["data"][0], array.shape, array.strides, array.dtype.str)


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
