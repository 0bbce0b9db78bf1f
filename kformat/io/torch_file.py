"""PyTorch state_dict files, loaded with ``torch.load(weights_only=True)`` (no pickle code).

torch is an optional extra: importing this module without it gives a clear InputError.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import InputError
from . import TensorInfo


def _import_torch():
    try:
        import torch
    except ImportError:
        raise InputError("reading PyTorch files needs torch: pip install 'kformat[torch]'") from None
    return torch


def tensor_to_numpy(torch, value) -> np.ndarray:
    value = value.detach().cpu()
    if value.dtype == torch.bfloat16:
        value = value.float()
    return value.numpy()


def flatten_state_dict(torch, obj, prefix: str = "") -> dict:
    """Tensors of a (possibly nested) state dict, keyed by dotted names."""
    out = {}
    if isinstance(obj, torch.Tensor):
        out[prefix] = obj
    elif isinstance(obj, dict):
        for key, value in obj.items():
            name = f"{prefix}.{key}" if prefix else str(key)
            out.update(flatten_state_dict(torch, value, name))
    return out


class TorchSource:
    def __init__(self, path: Path):
        torch = _import_torch()
        self.path = path
        self._torch = torch
        try:
            obj = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
        except Exception as exc:  # noqa: BLE001 - torch raises many kinds on bad files
            try:
                obj = torch.load(str(path), map_location="cpu", weights_only=True)
            except Exception:  # noqa: BLE001
                raise InputError(f"{path}: not a loadable PyTorch weights file ({type(exc).__name__}: {exc})") from None
        if isinstance(obj, dict):
            for key in ("state_dict", "model_state_dict", "model"):
                if isinstance(obj.get(key), dict) and len(obj) <= 4:
                    obj = obj[key]
                    break
        self._tensors = flatten_state_dict(torch, obj)
        if not self._tensors:
            raise InputError(f"{path}: holds no tensors (expected a state_dict)")

    def tensors(self) -> list[TensorInfo]:
        infos = []
        for name, t in self._tensors.items():
            dtype = np.float32 if t.dtype == self._torch.bfloat16 else np.dtype(str(t.dtype).removeprefix("torch."))
            infos.append(TensorInfo(name, tuple(t.shape), np.dtype(dtype)))
        return infos

    def load(self, name: str) -> np.ndarray:
        try:
            return tensor_to_numpy(self._torch, self._tensors[name])
        except TypeError as exc:
            raise InputError(f"{self.path}: tensor {name!r}: {exc}") from None
