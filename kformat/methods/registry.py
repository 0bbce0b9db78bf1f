"""The registry of quantization methods by name (kformat.methods registers the core ones)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..registry import Registry

if TYPE_CHECKING:
    from .base import Method

_REGISTRY: Registry["Method"] = Registry("quantization method")
METHODS = _REGISTRY.items


def register_method(method: "Method", *, replace: bool = False) -> "Method":
    """Make `method` known to recipes, writers and readers under `method.name`."""
    return _REGISTRY.register(method, replace=replace)


def unregister_method(name: str) -> None:
    _REGISTRY.unregister(name)


def get_method(name: str) -> "Method":
    return _REGISTRY.get(name)
