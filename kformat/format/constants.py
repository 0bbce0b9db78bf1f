"""Fixed numbers and names of the byte layout (spec/FORMAT.md, sections 2-4)."""

from __future__ import annotations

MAGIC = b"\x89KFMT\r\n\x1a"
FORMAT_MAJOR = 1
FORMAT_MINOR = 0
SUPPORTED_MAJORS = (1,)
HEADER_SIZE = 64
ALIGNMENT = 64
MAX_MANIFEST_BYTES = 64 << 20  # default cap a reader accepts; a reader option can lower it
MANIFEST_NAME = "manifest.kf"
SHARD_DIR = "shards"
SHARD_SUFFIX = ".kfs"
DEFAULT_SHARD_SIZE = 64 << 20

# The methods and codecs of the base format. Anything else is an extension: a writer lists it
# in `must_understand` as "method:NAME" or "codec:NAME", and a reader refuses a method or
# codec it does not know whether or not it is listed.
CORE_METHODS = ("kmeans", "linear", "fp16", "raw")
CORE_CODECS = ("png", "zstd", "raw", "floatz")
# Tables of the core methods have named slots in the manifest's `quant`; any other table lives
# under `quant.tables`.
TABLE_SLOTS = ("codebook", "scale", "zero_point")
# Features a reader must know to read a file correctly, listed in `must_understand` when used:
# "aliases" (tied tensors stored once under another name; a reader ignoring them would lose
# tensors) and "scaled-codebooks" (kmeans tensors with a per-row scale table: value =
# codebook entry x the row's scale; a reader ignoring the scale would decode wrong values).
FEATURES = ("aliases", "scaled-codebooks")
