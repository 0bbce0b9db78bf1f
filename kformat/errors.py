"""Every error kformat raises on bad input is a KFormatError.

They subclass ValueError so callers that already catch ValueError keep working, and carry
a message a user can act on: what (file, tensor, tile, offset), expected versus got.

Each class has a language-neutral `kind` (`format`, `version`, `limits`, `integrity`,
`decode`, `storage`, `not_found`, ...): spec/conformance/ names the kind a hostile file must
raise, so a reader in any language can check itself against the same cases.
"""

from __future__ import annotations


class KFormatError(ValueError):
    """Base class of every error kformat raises for bad input, files or recipes."""

    kind = "error"


class FormatError(KFormatError):
    """The bytes are not a well-formed kformat container (magic, header, manifest, bounds)."""

    kind = "format"


class BadMagic(FormatError):
    """The bytes do not start with the kformat magic (not a kformat file, or an empty one)."""


class TruncatedError(FormatError):
    """The file ends before its header or manifest does (a cut download, a partial cache copy)."""


class VersionError(FormatError):
    """The container needs a newer reader: a major version, a must-understand extension, or a
    quantization method or plane codec this reader does not know."""

    kind = "version"


class LimitError(FormatError):
    """The file asks more of a reader than the format allows (tile size, inflation ratio)."""

    kind = "limits"


class IntegrityError(KFormatError):
    """A blob's bytes do not match the hash or length the manifest promises."""

    kind = "integrity"


class DecodeError(FormatError):
    """A tile plane (PNG or zstd) or table could not be decoded as the manifest describes."""

    kind = "decode"


class RecipeError(KFormatError):
    """The quantization recipe is invalid: the message names the field."""

    kind = "recipe"


class QuantizationError(KFormatError):
    """A tensor cannot be quantized as asked (NaN/Inf values, unsupported dtype or shape)."""

    kind = "quantization"


class InputError(KFormatError):
    """The source model file cannot be read (unknown format, pickled objects, bad tensors)."""

    kind = "input"


class StorageError(KFormatError):
    """Reading from or writing to a store failed (short reply, server ignoring Range, I/O)."""

    kind = "storage"


class NotFound(StorageError, FileNotFoundError):
    """A file, shard or tensor does not exist."""

    kind = "not_found"


class TensorNotFound(NotFound, KeyError):
    """No tensor of that name: a KeyError too, so a model behaves as a Mapping should."""

    def __str__(self) -> str:  # KeyError would show the message quoted
        return str(self.args[0]) if self.args else ""
