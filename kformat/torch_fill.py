"""Filling a torch module from a kformat model: tile by tile into parameter storage, tied
weights tied again, and nothing left on the meta device unnoticed.

kformat.torch owns the torch import and passes the module in, so this file never imports
torch itself.
"""

from __future__ import annotations

import contextlib
from typing import Iterable

import numpy as np

from .errors import InputError
from .loading.lazy import LazyModel, LazyTensor


def owner_of(module, dotted: str):
    *path, leaf = dotted.split(".")
    owner = module
    for part in path:
        owner = getattr(owner, part)
    return owner, leaf


def _get(module, dotted: str):
    owner, leaf = owner_of(module, dotted)
    if leaf in owner._parameters:
        return owner._parameters[leaf]
    return owner._buffers.get(leaf)


def _put(module, dotted: str, value) -> None:
    """Put `value` (a Parameter or tensor) at `dotted`, where a parameter or buffer is."""
    owner, leaf = owner_of(module, dotted)
    if leaf in owner._parameters:
        owner._parameters[leaf] = value
    else:
        owner._buffers[leaf] = value


def _set_tensor(torch, module, dotted: str, value) -> None:
    owner, leaf = owner_of(module, dotted)
    if leaf in owner._parameters:
        old = owner._parameters[leaf]
        value = torch.nn.Parameter(value, requires_grad=old.requires_grad if old is not None else True)
    _put(module, dotted, value)


def _destination(torch, target, lazy: LazyTensor, name: str):
    """The tensor that will hold `lazy`'s values (a new one when `target` lives on the meta
    device), and the array to decode into: its own storage when it can take float32 tiles
    directly, else None (decoded apart, then copied)."""
    if tuple(target.shape) != lazy.shape:
        raise InputError(
            f"tensor {name!r}: the module wants shape {list(target.shape)}, the file has {list(lazy.shape)}"
        )
    if target.is_meta:
        target = torch.empty(tuple(target.shape), dtype=target.dtype, device="cpu")
    direct = (
        target.device.type == "cpu"
        and target.dtype == torch.float32
        and target.is_contiguous()
        and not lazy.lossless
    )
    return target, (target.detach().numpy().reshape(lazy.view) if direct else None)


def _file_order(model: LazyModel, names: Iterable[str]) -> list[str]:
    index = {name: i for i, name in enumerate(model)}
    return sorted(names, key=index.__getitem__)


def _keys(names: list[str]) -> str:
    return f"{', '.join(names[:8])}{' ...' if len(names) > 8 else ''}"


def _shared_names(module) -> dict[int, list[str]]:
    """Names under which each parameter or buffer object appears: tied weights share one."""
    names: dict[int, list[str]] = {}
    for name, tensor in module.named_parameters(remove_duplicate=False):
        names.setdefault(id(tensor), []).append(name)
    for name, tensor in module.named_buffers(remove_duplicate=False):
        names.setdefault(id(tensor), []).append(name)
    return names


def load_into(
    torch, module, model: LazyModel, targets: dict, strict: bool, skip: set[str]
) -> tuple[list[str], list[str]]:
    """Fill `targets` (the module's state_dict(keep_vars=True)) from `model`, keep tied what
    the module ties or the file stores tied, and refuse to leave a tensor on the meta device.

    A name the file lacks is not missing when the module ties it to one the file has (Hugging
    Face checkpoints drop tied weights)."""
    shared = _shared_names(module)
    tied_to_file = {
        n
        for n in targets
        if n not in model and any(o in model for o in shared.get(id(targets[n]), ()) if o != n)
    }
    missing = [n for n in targets if n not in model and n not in skip and n not in tied_to_file]
    unexpected = [n for n in model if n not in targets and n not in skip]
    if strict and (missing or unexpected):
        parts = []
        if missing:
            parts.append(f"missing from the file: {_keys(missing)}")
        if unexpected:
            parts.append(f"not in the module: {_keys(unexpected)}")
        raise InputError(f"{model.source}: state dict does not match the module ({'; '.join(parts)})")
    aliases = {a: n for a, n in model.aliases.items() if a in targets and n in targets and a not in skip}
    wanted = [n for n in targets if n in model and n not in skip and n not in aliases]
    holders: dict[str, tuple] = {}  # name -> (tensor to hold the values, array decoded into or None)

    def output(name: str):
        holders[name] = _destination(torch, targets[name], model[name], name)
        return holders[name][1]  # None: a new array (Container.output), copied below

    with torch.no_grad():
        for name, values in model.read(_file_order(model, wanted), output):
            target = targets[name]
            filled, direct = holders.pop(name)
            if direct is None:
                filled.copy_(torch.from_numpy(np.asarray(values, order="C")))
            if filled is not target:
                _set_tensor(torch, module, name, filled)
                new = _get(module, name)
                for other in shared.get(id(target), ()):  # the module's ties stay tied
                    if other != name:
                        _put(module, other, new)
        for alias, name in aliases.items():  # tied in the file: the same Parameter again
            _put(module, alias, _get(module, name))
    check_materialised(module)
    return missing, unexpected


def check_materialised(module) -> None:
    """Refuse a module with tensors still on the meta device, naming them."""
    left = [n for n, t in module.named_parameters(remove_duplicate=False) if t.is_meta]
    left += [n for n, t in module.named_buffers(remove_duplicate=False) if t.is_meta]
    if left:
        raise InputError(
            f"still on the meta device after loading: {_keys(left)}. The file does not hold them"
            " (non-persistent buffers are never saved): build the model with"
            " kformat.torch.empty_weights(), which puts only parameters on the meta device and lets"
            " the modules create their buffers"
        )


@contextlib.contextmanager
def empty_weights(torch):
    """Within this block, new modules get their parameters on the meta device (no memory)
    while buffers are built for real by the modules' own code, as Hugging Face's
    init_empty_weights does; load_state_dict then fills the parameters."""
    register = torch.nn.Module.register_parameter

    def register_meta(self, name, param):
        register(self, name, param)
        if param is not None and not param.is_meta:
            self._parameters[name] = torch.nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)

    torch.nn.Module.register_parameter = register_meta
    try:
        yield
    finally:
        torch.nn.Module.register_parameter = register
