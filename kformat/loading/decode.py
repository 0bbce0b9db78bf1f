"""A tile's checked blob -> its plane (codec) -> values in place (method)."""

from __future__ import annotations

import numpy as np

from ..codecs import get_codec
from ..errors import DecodeError
from ..format.dtypes import numpy_dtype
from ..format.manifest import TensorEntry, Tile
from ..methods import get_method


def decode_plane(tensor: TensorEntry, tile: Tile, data: bytes, where: str) -> np.ndarray:
    """A tile's plane: uint8 codes for code methods, stored values otherwise. `where` prefixes
    errors (source and tile label)."""
    codec = get_codec(tensor.codec)
    try:
        if tensor.depth is not None:
            entries = 1 << int(tensor.quant.bits)
            return codec.decode_codes(data, tile.rows, tile.cols, tensor.depth, entries)
        return codec.decode_values(data, tile.rows, tile.cols, numpy_dtype(tensor.storage))
    except DecodeError as exc:
        raise DecodeError(f"{where}: {exc}") from None


def fill_tile(
    tensor: TensorEntry,
    tile: Tile,
    data: bytes,
    where: str,
    tables: dict[str, np.ndarray],
    region: np.ndarray,
) -> None:
    """Decode a tile's checked blob straight into `region` (its rectangle of the output):
    values as stored for lossless methods, float32 otherwise. Code planes whose every code is
    valid (a full codebook) are dequantized from their packed bytes, never unpacked."""
    method = get_method(tensor.quant.method)
    q = tensor.quant
    if method.codes and tensor.depth is not None and q.bits is not None and q.bits == tensor.depth:
        try:
            packed = get_codec(tensor.codec).decode_packed(data, tile.rows, tile.cols, tensor.depth)
        except DecodeError as exc:
            raise DecodeError(f"{where}: {exc}") from None
        method.dequantize_packed(packed, tensor.depth, tile.cols, tile.row, q.group_rows, tables, out=region)
        return
    plane = decode_plane(tensor, tile, data, where)
    if method.lossless:
        region[...] = plane
    else:
        method.dequantize(plane, tile.row, q.group_rows, tables, out=region)
