"""The registry of quantization methods by name (kformat.methods registers the core ones)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import VersionError

if TYPE_CHECKING:
    from .base import Method

METHODS: dict[str, "Method"] = {}


def register_method(method: "Method", *, replace: bool = False) -> "Method":
    """Make `method` known to recipes, writers and readers under `method.name`."""
    name = getattr(method, "name", None)
    if not isinstance(name, str) or not name.isidentifier():
        raise ValueError(f"a method needs a name that is an identifier, got {name!r}")
    if name in METHODS and not replace:
        raise ValueError(f"a method named {name!r} is already registered")
    METHODS[name] = method
    return method


def unregister_method(name: str) -> None:
    METHODS.pop(name, None)


def get_method(name: str) -> "Method":
    try:
        return METHODS[name]
    except KeyError:
        raise VersionError(
            f"unknown quantization method {name!r} (this reader knows {', '.join(METHODS)}): the file needs a"
            " newer reader or the extension that defines it"
        ) from None
