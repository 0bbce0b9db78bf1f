"""Every error kformat raises on bad input is a KFormatError.

They subclass ValueError so callers that already catch ValueError keep working, and carry
a message a user can act on: what (file, tensor, tile, offset), expected versus got.
"""

from __future__ import annotations


class KFormatError(ValueError):
    """Base class of every error kformat raises for bad input, files or recipes."""


class FormatError(KFormatError):
    """The bytes are not a well-formed kformat container (magic, header, manifest, bounds)."""


class VersionError(FormatError):
    """The container needs a newer reader (major version, or a must-understand extension)."""


class IntegrityError(KFormatError):
    """A blob's bytes do not match the hash or length the manifest promises."""


class DecodeError(FormatError):
    """A tile plane (PNG or zstd) or table could not be decoded as the manifest describes."""


class RecipeError(KFormatError):
    """The quantization recipe is invalid: the message names the field."""


class QuantizationError(KFormatError):
    """A tensor cannot be quantized as asked (NaN/Inf values, unsupported dtype or shape)."""


class InputError(KFormatError):
    """The source model file cannot be read (unknown format, pickled objects, bad tensors)."""


class StorageError(KFormatError):
    """Reading from or writing to a store failed (short reply, server ignoring Range, I/O)."""


class NotFound(StorageError, FileNotFoundError):
    """A file, shard or tensor does not exist."""


class TensorNotFound(NotFound, KeyError):
    """No tensor of that name: a KeyError too, so a model behaves as a Mapping should."""

    def __str__(self) -> str:  # KeyError would show the message quoted
        return str(self.args[0]) if self.args else ""
