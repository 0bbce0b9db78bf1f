"""Plane codecs by name: how a tile's codes or values become a blob and back.

Each codec is one module with one `Codec` subclass (kformat.codecs.base), registered here by
name. A codec cannot be registered without an inflation bound, so no codec can skip the
reader's memory limit. `png` holds code planes only; `zstd` and `raw` hold both.
"""

from __future__ import annotations

from ..errors import VersionError
from .base import Codec
from .bitpack import plane_depth
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

CODECS: dict[str, Codec] = {}


def register_codec(codec: Codec, *, replace: bool = False) -> Codec:
    """Make `codec` known to readers and writers under `codec.name`."""
    name = getattr(codec, "name", None)
    if not isinstance(name, str) or not name.isidentifier():
        raise ValueError(f"a codec needs a name that is an identifier, got {name!r}")
    bound = getattr(codec, "max_inflation", None)
    if not isinstance(bound, int) or isinstance(bound, bool) or bound < 1:
        raise ValueError(f"codec {name!r} must declare max_inflation, a whole number >= 1 (got {bound!r})")
    if name in CODECS and not replace:
        raise ValueError(f"a codec named {name!r} is already registered")
    CODECS[name] = codec
    return codec


def unregister_codec(name: str) -> None:
    CODECS.pop(name, None)


def get_codec(name: str) -> Codec:
    try:
        return CODECS[name]
    except KeyError:
        raise VersionError(
            f"unknown plane codec {name!r} (this reader knows {', '.join(CODECS)}): the file needs a newer"
            " reader or the extension that defines it"
        ) from None


for _codec in (PngCodec(), ZstdCodec(), RawCodec()):
    register_codec(_codec)
