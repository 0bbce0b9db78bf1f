"""The limits a reader enforces on what a file may ask of it (spec/FORMAT.md, security model).

A file from the network decides how much a reader allocates and inflates, so each request it
can make is bounded here: before anything is decoded, a manifest that exceeds a limit is
refused with a LimitError naming the tensor and tile. Each plane codec declares its own
inflation bound (kformat.codecs), and registering a codec without one is impossible.
"""

from __future__ import annotations

MAX_TENSOR_ELEMENTS = 1 << 40  # also the largest dimension, so shapes of empty tensors stay sane
MAX_RANK = 32  # numpy allows 64 dimensions; no model needs more than a handful
# What a tensor decodes to (float32, or the source dtype when lossless) may be at most this many
# times the bytes it stores (tiles and tables) plus the slack, so a kilobyte cannot promise a
# gigabyte: 1-bit codes in Huffman-coded PNG stay under 256:1, and a writer whose planes would
# compress past this (a huge constant tensor) stores them with the raw codec instead.
MAX_AMPLIFICATION = 4096
AMPLIFICATION_SLACK = 64 << 20
MAX_TILE_ELEMENTS = 1 << 26  # largest tile a reader accepts; writers default to whole rows, about 2^20 values
MAX_TILE_SIDE = 1 << 16
INFLATION_SLACK = 64
