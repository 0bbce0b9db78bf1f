"""PyTorch integration (the `torch` extra; torch is imported only when these are called).

    import kformat.torch as kt
    kt.save(model, "model.kf", recipe="mobile")

    with torch.device("meta"):                 # no float32 weights allocated at all
        model = Net()
    kt.load_state_dict(model, "https://cdn.example.com/model/")   # layer by layer, tile by tile
    # or keep Linear layers compact: codes + codebook as buffers, dequantized per band in forward
    model = kt.load_quantized(model, "https://cdn.example.com/model/")

`load_state_dict` dequantizes each tile straight into the parameter's storage, so it never
holds more than one tile of float32 beyond the model itself. `load_quantized` replaces every
`nn.Linear` whose weight is quantized in the file by a `QuantizedLinear` holding the compact
form only: a forward pass dequantizes one band of rows at a time into a reused buffer.
Modules built on the meta device get real tensors as they are filled.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

import numpy as np

from .errors import InputError
from .format.dtypes import HAVE_ML_DTYPES
from .format.constants import DEFAULT_SHARD_SIZE
from .loading.lazy import open_model
from .methods import QuantizedTensor
from .torch_fill import empty_weights as _empty_weights
from .torch_fill import load_into, owner_of
from .torch_linear import banded_matmul

__all__ = [
    "save",
    "load_state_dict",
    "empty_weights",
    "calibrate",
    "load_quantized",
    "QuantizedLinear",  # noqa: F822 - built on first use by the module's __getattr__
    "state_dict_arrays",
    "load_torch_file",
]


def _torch():
    try:
        import torch
    except ImportError:
        raise InputError("this needs PyTorch: pip install 'kformat[torch]'") from None
    return torch


torch_module = _torch


def tensor_to_numpy(torch, value, name: str = "") -> np.ndarray:
    """A CPU numpy copy or view of a torch tensor; bfloat16 and float8 keep their type through
    ml_dtypes (the `dtypes` extra), or bfloat16 is widened to float32 (exact) without it."""
    if value.is_meta:
        raise InputError(f"tensor {name!r} is on the meta device: it has no values")
    value = value.detach().cpu()
    extra = {
        torch.bfloat16: "bfloat16",
        getattr(torch, "float8_e4m3fn", None): "float8_e4m3fn",
        getattr(torch, "float8_e5m2", None): "float8_e5m2",
    }.get(value.dtype)
    if extra is not None and HAVE_ML_DTYPES:  # bit-exact, as ml_dtypes' type of the same name
        bits = torch.int16 if extra == "bfloat16" else torch.uint8
        return value.contiguous().view(bits).numpy().view(np.dtype(extra))
    if value.dtype == torch.bfloat16:  # without ml_dtypes: widened, exactly
        value = value.float()
    try:
        return value.numpy()
    except (TypeError, RuntimeError) as exc:
        raise InputError(f"tensor {name!r} of dtype {value.dtype} cannot be stored yet ({exc})") from None


def numpy_to_tensor(array: np.ndarray):
    """A torch tensor of a numpy array; bfloat16 and float8 (ml_dtypes) become torch's types."""
    torch = _torch()
    extra = {
        "bfloat16": (torch.int16, torch.bfloat16),
        "float8_e4m3fn": (torch.uint8, torch.float8_e4m3fn),
        "float8_e5m2": (torch.uint8, torch.float8_e5m2),
    }.get(array.dtype.name)
    array = np.require(array, requirements=["C", "W"])  # torch wants writable memory
    if extra is not None:
        bits, kind = extra
        return torch.from_numpy(array.view(np.int16 if bits == torch.int16 else np.uint8)).view(kind)
    return torch.from_numpy(array)


def _flatten_state_dict(torch, obj, prefix: str = "") -> dict:
    """Tensors of a (possibly nested) state dict, keyed by dotted names."""
    out = {}
    if isinstance(obj, torch.Tensor):
        out[prefix] = obj
    elif isinstance(obj, dict):
        for key, value in obj.items():
            name = f"{prefix}.{key}" if prefix else str(key)
            out.update(_flatten_state_dict(torch, value, name))
    return out


def load_torch_file(path) -> dict:
    """The tensors of a PyTorch weights file by dotted name, read with torch.load(weights_only=True)
    (memory-mapped where torch can), unwrapping a checkpoint's state_dict/model entry."""
    torch = _torch()
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many kinds on bad files
        try:
            obj = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception:  # noqa: BLE001
            raise InputError(
                f"{path}: not a loadable PyTorch weights file ({type(exc).__name__}: {exc})"
            ) from None
    if isinstance(obj, dict):
        for key in ("state_dict", "model_state_dict", "model"):
            if isinstance(obj.get(key), dict) and len(obj) <= 4:
                obj = obj[key]
                break
    return _flatten_state_dict(torch, obj)


def state_dict_arrays(module_or_state_dict) -> dict[str, np.ndarray]:
    """numpy views of a module's (or state dict's) tensors; bfloat16 is widened to float32."""
    torch = _torch()
    state = (
        module_or_state_dict.state_dict()
        if isinstance(module_or_state_dict, torch.nn.Module)
        else module_or_state_dict
    )
    arrays = {}
    for name, value in state.items():
        if not isinstance(value, torch.Tensor):
            raise InputError(f"state dict entry {name!r} is a {type(value).__name__}, not a tensor")
        arrays[name] = tensor_to_numpy(torch, value, name)
    return arrays


def save(
    module_or_state_dict,
    path: str | Path,
    recipe=None,
    *,
    rules: Iterable[str] = (),
    layout: str = "single",
    shard_size: int = DEFAULT_SHARD_SIZE,
    metadata: dict[str, str] | None = None,
    progress=None,
):
    """Pack a module's state dict (or a state dict) into a kformat container."""
    from .api import pack

    return pack(
        state_dict_arrays(module_or_state_dict),
        path,
        recipe,
        rules=rules,
        layout=layout,
        shard_size=shard_size,
        metadata=metadata,
        progress=progress,
    )


def calibrate(
    model, batches, path: str | Path, *, sensitivity: bool = True, covariance: bool | None = None
) -> dict[str, np.ndarray]:
    """Run `model` on sample `batches` (a dict is passed as model(**batch), a tuple as
    model(*batch), anything else as model(batch)) and write an importance file to `path`:
    for every Linear, Conv and Embedding weight, keyed by its state_dict name, how much each
    input channel matters (mean squared input activation; lookup frequency for embedding
    rows). `kformat pack --importance FILE` then fits k-means to the weighted error. Holds
    only running sums: the model and one batch's activations. With `sensitivity` (default)
    it then perturbs one weight at a time on the first two batches and records how much each
    moves the output, which bit allocation (--target-size/--target-bits) weighs errors by.
    It also records the input covariance E[x x^T] of each Linear and ungrouped convolution
    weight (columns x columns of its 2-D view, for up to 8192 columns), from which the pack
    rounds codes with error feedback (GPTQ's rounding on kformat's codebooks): lower output
    error at the same size, for a larger importance file. `covariance`: None (default) the
    smallest layers first within 2^27 floats (512 MiB), True every layer, False none."""
    from .torch_calibrate import calibrate as run

    return run(_torch(), model, batches, path, sensitivity, covariance)


def empty_weights():
    """A context in which new modules get parameters on the meta device (no memory) and real
    buffers, ready for load_state_dict; the way to build a large model before loading it::

        with kformat.torch.empty_weights():
            model = BertModel(config)
        kformat.torch.load_state_dict(model, "model.kf")
    """
    return _empty_weights(_torch())


def load_state_dict(
    module, url: str, *, strict: bool = True, **storage_options
) -> tuple[list[str], list[str]]:
    """Fill `module`'s parameters and buffers from a kformat model, one layer at a time.

    Returns (missing, unexpected) key lists like torch's; with `strict` any mismatch is an
    InputError naming the keys. Shapes must match exactly. Tensors the file stores tied
    (aliases) become one Parameter again, and a tensor left on the meta device (a
    non-persistent buffer of a model built under torch.device("meta")) is an InputError
    naming it: build such models with `empty_weights()`.
    """
    targets = module.state_dict(keep_vars=True)
    with open_model(url, **storage_options) as model:
        return load_into(_torch(), module, model, targets, strict, set())


# -- compact Linear layers ----------------------------------------------------------------------
def _module_class():
    torch = _torch()

    class QuantizedLinear(torch.nn.Module):
        """nn.Linear on compact weights: codes + codebook (or scale and zero point) as
        buffers, dequantized one band of rows at a time in forward (CPU, inference only)."""

        def __init__(self, q: QuantizedTensor, bias=None):
            super().__init__()
            if len(q.shape) != 2:
                raise InputError(f"tensor {q.name!r}: a Linear weight must be 2-D, got shape {list(q.shape)}")
            self.out_features, self.in_features = q.shape
            self._meta = {
                k: getattr(q, k)
                for k in ("name", "method", "shape", "view", "bits", "depth", "group_rows", "packed")
            }
            # codes or values, and each table of the method (codebook, scale, ...) by its name
            self._tables = tuple(q.tables)
            arrays = {"codes": q.codes, "values": q.values, **q.tables}
            for key, array in arrays.items():
                if array is not None and not (array.flags.writeable and array.flags.c_contiguous):
                    array = np.array(array, order="C")  # tables come straight from read-only bytes
                self.register_buffer(key, None if array is None else torch.from_numpy(array))
            self.bias = None if bias is None else torch.nn.Parameter(bias, requires_grad=False)

        def quantized(self) -> QuantizedTensor:
            def numpy(key):
                value = getattr(self, key)
                return None if value is None else value.numpy()

            return QuantizedTensor(
                **self._meta,
                codes=numpy("codes"),
                values=numpy("values"),
                tables={k: numpy(k) for k in self._tables},
            )

        def forward(self, x):
            if x.requires_grad and torch.is_grad_enabled():
                raise RuntimeError("QuantizedLinear is for inference: run it under torch.no_grad()")
            flat = x.reshape(-1, self.in_features).to(torch.float32)
            y = banded_matmul(torch, self.quantized(), flat, torch.get_num_threads())
            if self.bias is not None:
                y += self.bias
            return y.reshape(*x.shape[:-1], self.out_features)

        def extra_repr(self) -> str:
            m = self._meta
            what = f"{m['method']}:{m['bits']}" if m["bits"] else m["method"]
            has_bias = self.bias is not None
            return (
                f"in_features={self.in_features}, out_features={self.out_features}, {what}, bias={has_bias}"
            )

    return QuantizedLinear


_QUANTIZED_LINEAR = None


def __getattr__(name: str) -> Any:  # QuantizedLinear is built on first use, so importing is free
    global _QUANTIZED_LINEAR
    if name == "QuantizedLinear":
        if _QUANTIZED_LINEAR is None:
            _QUANTIZED_LINEAR = _module_class()
        return _QUANTIZED_LINEAR
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def load_quantized(module, url: str, *, packed: bool = True, strict: bool = True, **storage_options):
    """Swap every nn.Linear whose weight the file quantizes (kmeans, linear, fp16) for a
    QuantizedLinear holding the compact form; fill everything else as load_state_dict does.
    Returns the module (changed in place)."""
    torch = _torch()
    cls = __getattr__("QuantizedLinear")
    targets = module.state_dict(keep_vars=True)
    with open_model(url, **storage_options) as model:
        replaced: set[str] = set()
        linears = [(name, sub) for name, sub in module.named_modules() if isinstance(sub, torch.nn.Linear)]
        for name, linear in linears:
            key = f"{name}.weight" if name else "weight"
            if key not in model or model[key].lossless:
                continue
            lazy = model[key]
            if lazy.shape != (linear.out_features, linear.in_features):
                raise InputError(
                    f"tensor {key!r}: the module wants shape {[linear.out_features, linear.in_features]},"
                    f" the file has {list(lazy.shape)}"
                )
            bias = None
            bias_key = f"{name}.bias" if name else "bias"
            if linear.bias is not None:
                if bias_key not in model:
                    raise InputError(f"{model.source}: {bias_key!r} is missing from the file")
                bias = torch.from_numpy(np.ascontiguousarray(model[bias_key].numpy(), dtype=np.float32))
                replaced.add(bias_key)
            quantized = cls(lazy.quantized(packed=packed), bias)
            if name:
                owner, leaf = owner_of(module, name)
                setattr(owner, leaf, quantized)
            else:
                raise InputError(
                    "load_quantized needs a module that contains Linear layers, not a Linear itself"
                )
            replaced.add(key)
        load_into(torch, module, model, targets, strict, replaced)
    return module
