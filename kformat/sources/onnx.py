"""ONNX models through the `onnx` package: the graph's initializers are the tensors.

The model is parsed without its external data; a tensor stored in an external file is read
from that file (which must lie inside the model's directory) only when it is packed, so a
large model with external weights is never held whole. Initializers of subgraphs (If/Loop
bodies) are included under their own names.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import external_data_helper, helper, numpy_helper

from ..errors import InputError
from . import TensorInfo, _check_array


def _initializers(graph, found: list) -> None:
    found.extend(graph.initializer)
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.type == onnx.AttributeProto.GRAPH:
                _initializers(attribute.g, found)
            elif attribute.type == onnx.AttributeProto.GRAPHS:
                for sub in attribute.graphs:
                    _initializers(sub, found)


class OnnxSource:
    def __init__(self, path: Path):
        self.path = path
        try:
            model = onnx.load(str(path), load_external_data=False)
        except Exception as exc:  # protobuf's DecodeError and friends share no base class
            raise InputError(f"{path}: not a readable ONNX model ({type(exc).__name__}: {exc})") from None
        found: list = []
        _initializers(model.graph, found)
        self._tensors = {}
        self._infos = []
        for tensor in found:
            name = tensor.name
            if not name:
                raise InputError(f"{path}: an initializer has no name")
            if name in self._tensors:
                raise InputError(f"{path}: two initializers are named {name!r}")
            try:
                dtype = np.dtype(helper.tensor_dtype_to_np_dtype(tensor.data_type))
            except (KeyError, TypeError, ValueError):
                raise InputError(
                    f"{path}: initializer {name!r} has unsupported data type {tensor.data_type}"
                ) from None
            shape = tuple(int(d) for d in tensor.dims)
            if any(d < 0 for d in shape):
                raise InputError(f"{path}: initializer {name!r} has a negative dimension {list(shape)}")
            self._tensors[name] = tensor
            self._infos.append(TensorInfo(name, shape, dtype))
        base = path.parent.resolve()
        external = {
            (base / e.value).resolve()
            for t in found
            for e in t.external_data
            if e.key == "location" and (base / e.value).resolve().is_relative_to(base)
        }
        self.files = [path, *sorted(p for p in external if p.is_file())]
        self.metadata = {f"onnx.{p.key}": p.value for p in model.metadata_props}
        if model.producer_name:
            self.metadata["onnx.producer"] = f"{model.producer_name} {model.producer_version}".strip()

    def tensors(self) -> list[TensorInfo]:
        return list(self._infos)

    def load(self, name: str) -> np.ndarray:
        tensor = self._tensors[name]
        base = self.path.parent.resolve()
        if external_data_helper.uses_external_data(tensor):
            location = next((e.value for e in tensor.external_data if e.key == "location"), "")
            target = (base / location).resolve()
            if not location or not target.is_relative_to(base) or not target.is_file():
                raise InputError(
                    f"{self.path}: initializer {name!r} keeps its data in {location!r}, which is not a"
                    " file inside the model's directory"
                )
        try:
            array = numpy_helper.to_array(tensor, base_dir=str(base))
        except Exception as exc:  # truncated external data, bad raw_data length
            raise InputError(f"{self.path}: initializer {name!r}: {type(exc).__name__}: {exc}") from None
        info = next(i for i in self._infos if i.name == name)
        if tuple(array.shape) != info.shape:
            raise InputError(
                f"{self.path}: initializer {name!r} holds {array.shape}, its dims say {info.shape}"
            )
        _check_array(name, array, str(self.path))
        return array
