"""Plane codecs by name: how a tile's codes or values become a blob and back.

Each codec is one module with one `Codec` subclass (kformat.codecs.base), registered here by
name. A codec cannot be registered without an inflation bound, so no codec can skip the
reader's memory limit. `png` holds code planes only, `floatz` (entropy-coded float fields) value planes only;
`zstd` and `raw` hold both.
"""

from __future__ import annotations

from ..registry import Registry
from .base import Codec
from .bitpack import plane_depth
from .floatz import FloatzCodec
from .png import PngCodec
from .raw import RawCodec
from .shuffle import shuffle_bytes, unshuffle_bytes
from .zstd import ZstdCodec

__all__ = [
    "CODECS",
    "Codec",
    "get_codec",
    "register_codec",
    "plane_depth",
    "shuffle_bytes",
    "unshuffle_bytes",
]


def _has_bound(name: str, codec: Codec) -> None:
    bound = getattr(codec, "max_inflation", None)
    if not isinstance(bound, int) or isinstance(bound, bool) or bound < 1:
        raise ValueError(f"codec {name!r} must declare max_inflation, a whole number >= 1 (got {bound!r})")


_REGISTRY: Registry[Codec] = Registry("plane codec", _has_bound)
CODECS = _REGISTRY.items


def register_codec(codec: Codec, *, replace: bool = False) -> Codec:
    """Make `codec` known to readers and writers under `codec.name`; it must declare its
    inflation bound."""
    return _REGISTRY.register(codec, replace=replace)


def unregister_codec(name: str) -> None:
    _REGISTRY.unregister(name)


def get_codec(name: str) -> Codec:
    return _REGISTRY.get(name)


for _codec in (PngCodec(), ZstdCodec(), RawCodec(), FloatzCodec()):
    register_codec(_codec)
