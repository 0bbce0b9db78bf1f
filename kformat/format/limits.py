"""The limits a reader enforces on what a file may ask of it (spec/FORMAT.md, security model).

A file from the network decides how much a reader allocates and inflates, so each request it
can make is bounded here: before anything is decoded, a manifest that exceeds a limit is
refused with a LimitError naming the tensor and tile. Each plane codec declares its own
inflation bound (kformat.codecs), and registering a codec without one is impossible.
"""

from __future__ import annotations

MAX_TENSOR_ELEMENTS = 1 << 40
MAX_TILE_ELEMENTS = 1 << 26  # largest tile a reader accepts; writers default to 256 x 4096 = 2^20
MAX_TILE_SIDE = 1 << 16
INFLATION_SLACK = 64
