"""PyTorch state_dict files, loaded with ``torch.load(weights_only=True)`` (no pickle code).

torch is an optional extra, imported by kformat.torch only: without it opening a file gives
a clear InputError.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import InputError
from ..format.dtypes import EXTRA_FLOATS, HAVE_ML_DTYPES, is_storable
from ..torch import load_torch_file, tensor_to_numpy, torch_module
from . import TensorInfo, shared_views


class TorchSource:
    def __init__(self, path: Path):
        self.path = path
        self._torch = torch_module()
        self._tensors = load_torch_file(path)
        if not self._tensors:
            raise InputError(f"{path}: holds no tensors (expected a state_dict)")
        self.aliases = shared_views(
            (name, (t.data_ptr(), tuple(t.shape), t.stride(), str(t.dtype)) if t.numel() else None)
            for name, t in self._tensors.items()
        )

    def tensors(self) -> list[TensorInfo]:
        infos = []
        for name, t in self._tensors.items():
            if not name:
                raise InputError(f"{self.path}: a tensor has an empty name")
            name_of = str(t.dtype).removeprefix("torch.")
            if HAVE_ML_DTYPES and name_of in EXTRA_FLOATS:
                dtype = np.dtype(name_of)
            elif t.dtype == self._torch.bfloat16:
                dtype = np.dtype(np.float32)
            else:
                try:
                    dtype = np.dtype(str(t.dtype).removeprefix("torch."))
                except TypeError:
                    raise InputError(
                        f"{self.path}: tensor {name!r} has dtype {t.dtype}, which kformat cannot store yet"
                        " (float, integer and bool tensors only)"
                    ) from None
            if not is_storable(dtype):
                raise InputError(
                    f"{self.path}: tensor {name!r} has dtype {dtype} (only bool, integer and float tensors)"
                )
            infos.append(TensorInfo(name, tuple(t.shape), dtype))
        return infos

    def load(self, name: str) -> np.ndarray:
        try:
            return tensor_to_numpy(self._torch, self._tensors[name], name)
        except (TypeError, RuntimeError) as exc:
            raise InputError(f"{self.path}: tensor {name!r}: {exc}") from None


def write_torch(path: Path, tensors) -> None:
    """A state dict of torch tensors (bfloat16 and float8 as torch's own types), saved with
    torch.save; tied tensors share storage."""
    from ..packing.atomic import atomic_path
    from ..torch import numpy_to_tensor

    state, seen = {}, {}
    for name, array in tensors:  # one array under two names (aliases) stays one tensor: tied
        if id(array) not in seen:
            seen[id(array)] = (array, numpy_to_tensor(array))
        state[name] = seen[id(array)][1]
    with atomic_path(path) as temp:
        torch_module().save(state, str(temp))
