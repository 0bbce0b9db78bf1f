"""The limits a reader enforces on what a file may ask of it (spec/FORMAT.md, security model).

A file from the network decides how much a reader allocates and inflates, so each request it
can make is bounded here: before anything is decoded, a manifest that exceeds a limit is
refused with a FormatError naming the tensor and tile.
"""

from __future__ import annotations

MAX_TENSOR_ELEMENTS = 1 << 40
MAX_TILE_ELEMENTS = 1 << 26  # largest tile a reader accepts; writers default to 256 x 4096 = 2^20
# No deflate stream inflates more than 1032:1 and no zstd frame more than 32768:1 (a 128 KiB
# RLE block in 4 bytes), so a plane claiming more than this from its blob is forged: the
# memory a reader allocates stays within a constant factor of the bytes it was sent.
MAX_INFLATION = {"png": 1032, "zstd": 32768}
INFLATION_SLACK = 64
