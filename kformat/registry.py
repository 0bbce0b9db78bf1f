"""A registry of named plug-ins (quantization methods, plane codecs): one shape for all, so a
file naming something this reader lacks always gets the same clear refusal."""

from __future__ import annotations

from typing import Callable, Generic, TypeVar

from .errors import VersionError

T = TypeVar("T")


class Registry(Generic[T]):
    """Plug-ins by their `name`; `check` refuses one that lacks what the format needs."""

    def __init__(self, what: str, check: Callable[[str, T], None] | None = None):
        self.what = what  # "quantization method", "plane codec"
        self.check = check
        self.items: dict[str, T] = {}

    def register(self, item: T, *, replace: bool = False) -> T:
        name = getattr(item, "name", None)
        if not isinstance(name, str) or not name.isidentifier():
            raise ValueError(f"a {self.what} needs a name that is an identifier, got {name!r}")
        if self.check is not None:
            self.check(name, item)
        if name in self.items and not replace:
            raise ValueError(f"a {self.what} named {name!r} is already registered")
        self.items[name] = item
        return item

    def unregister(self, name: str) -> None:
        self.items.pop(name, None)

    def get(self, name: str) -> T:
        try:
            return self.items[name]
        except KeyError:
            raise VersionError(
                f"unknown {self.what} {name!r} (this reader knows {', '.join(self.items)}): the file needs a"
                " newer reader or the extension that defines it"
            ) from None
