"""The method protocol: everything kformat knows about one quantization method, in one class.

A method says, for both journeys:
- recipe:  which rule options it takes (`check_rule`),
- pack:    how a tensor's 2-D view becomes codes or values plus tables (`encode`),
- format:  which tables it stores and their shapes (`table_specs`), what its value planes
           hold (`storage`), and how a decoded table is checked (`check_table`),
- load:    how one plane turns into float32 (`dequantize`),
- inspect: what it reports (`summary`),
- allocation: which rules it offers and, for large tensors, cheap estimates (`candidates`,
           `estimate`).
Methods do no I/O: they see arrays, rules and manifest entries only.
"""

from __future__ import annotations

import functools
import math

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, ClassVar, Sequence

import numpy as np

from ..codecs import get_codec
from ..codecs.bitpack import unpack_rows
from ..errors import DecodeError

if TYPE_CHECKING:
    from ..format.manifest import Quant, TensorEntry
    from ..recipe.rules import Rule
    from .compact import QuantizedTensor

FP16_MAX = float(np.finfo(np.float16).max)
FP16_NORMAL = float(np.finfo(np.float16).smallest_normal)  # 6.1e-5: below, precision drains away
CODE_OPTIONS = ("bits", "group_size", "prune", "prune_threshold", "ecq", "scale")


@dataclass(frozen=True)
class TableSpec:
    """A table a tensor's method needs: its name, exact shape and allowed dtypes."""

    name: str
    shape: tuple[int, ...]
    dtypes: tuple[str, ...]


def view_2d(shape: Sequence[int]) -> tuple[int, int]:
    """rows = first axis, cols = the rest; vectors and scalars are one row."""
    if len(shape) == 0:
        return (1, 1)
    if len(shape) == 1:
        return (1, int(shape[0]))
    cols = 1
    for side in shape[1:]:
        cols *= int(side)
    return (int(shape[0]), cols)


def group_rows_for(rule: "Rule", rows: int) -> int:
    """Rows sharing one table entry under `rule`: 1 per row, a group, or the whole tensor."""
    if rule.granularity == "row":
        return 1
    if rule.granularity == "group":
        return min(int(rule.group_size), rows)
    return rows


LUT_MIN_ROWS = 16  # row groups smaller than this dequantize code by code
BAND_BYTES = 128 << 10  # float32 rows decoded at once into a tile of a wider tensor


@functools.cache
def _byte_codes(depth: int) -> np.ndarray:
    """For each byte 0..255, the 8 // depth codes packed in it, most significant first."""
    per_byte = 8 // depth
    byte = np.arange(256, dtype=np.uint8)[:, None]
    shifts = (8 - depth * (np.arange(per_byte) + 1)).astype(np.uint8)
    codes = (byte >> shifts) & np.uint8((1 << depth) - 1)
    codes.setflags(write=False)
    return codes


def byte_table(values: np.ndarray, depth: int) -> np.ndarray:
    """For each byte 0..255, the float32 values of the 8 // depth codes packed in it (most
    significant first), as one element of a void dtype, so np.take of packed bytes writes
    the values of every code in a row at once. `values` may be a stack of groups' code
    values (groups x entries): then one such table per group (groups x 256)."""
    per_byte = 8 // depth
    values = np.asarray(values, dtype=np.float32)
    table = np.ascontiguousarray(values[..., _byte_codes(depth)])
    return table.view(np.dtype((np.void, 4 * per_byte))).reshape(values.shape[:-1] + (256,))


TAKE_INDICES = 1 << 17  # indices per np.take call: numpy copies them as intp first (1 MiB)

# take(table, indices, out): out[...] = table[indices], every index valid (take_rows, or a
# caller's faster gather: kformat.torch's, for QuantizedLinear)
Take = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]


def take_rows(table: np.ndarray, indices: np.ndarray, out: np.ndarray) -> np.ndarray:
    """np.take(table, indices, out=out, mode="clip"), a run of rows at a time. numpy first
    copies non-intp indices as intp, 8 bytes each: a whole tile's was a 4-8 MiB temporary
    per decode thread (16 MiB of a VGG16 load's peak); in runs it stays in cache, as fast.
    Every index must be valid (clip never clips then); it is what keeps out= unbuffered.
    Bytes into a table of 256 entries (whole packed bytes of codes, Method.dequantize_packed)
    go through the C loops where they are built (kernels_c.lookup): no wider copy of the
    indices, a fixed-size copy per entry."""
    if lookup_in_c(table, indices, out):
        return out
    if indices.ndim < 2:
        step = TAKE_INDICES
    else:
        step = max(1, TAKE_INDICES // max(1, math.prod(indices.shape[1:])))  # (none: no rows)
    for start in range(0, indices.shape[0], step):
        np.take(table, indices[start : start + step], out=out[start : start + step], mode="clip")
    return out


def lookup_in_c(table: np.ndarray, indices: np.ndarray, out: np.ndarray) -> bool:
    """kernels_c.lookup(table, indices, out) where it applies; whether it ran."""
    if (
        indices.dtype != np.uint8
        or table.shape != (256,)
        or table.dtype.itemsize not in (4, 8, 16, 32)
        or out.dtype != table.dtype
        or out.shape != indices.shape
        or not (table.flags.c_contiguous and indices.flags.c_contiguous and out.flags.c_contiguous)
    ):
        return False
    from . import kernels  # (imports this module's package: not at the top)

    loops = kernels.c_loops()
    if loops is None:
        return False
    loops.lookup(table, indices, out)
    return True


class MadeAsRead:
    """A read-only 2-D array-like whose slices are arrays made as they are read (fp16's
    RoundedLater, kmeans_codes' CodesLater): what the packer's tiles and SQNR rows each read
    once, where a whole copy would be faulted in and written only to be cut up. A subclass
    sets `dtype` and makes `self[key]`; np.asarray gives the whole."""

    dtype: ClassVar[np.dtype]

    def __init__(self, source: np.ndarray):
        self.shape, self.ndim, self.size = source.shape, source.ndim, source.size
        self.nbytes = source.size * self.dtype.itemsize

    def __getitem__(self, key) -> np.ndarray:
        raise NotImplementedError

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        whole = self[:]
        return whole if dtype is None else whole.astype(dtype)

    def __len__(self) -> int:
        return self.shape[0]


def row_groups(row0: int, rows: int, group_rows: int) -> np.ndarray:
    return np.arange(row0, row0 + rows, dtype=np.int64) // group_rows


class Method:
    """Base class of quantization methods; register instances with kformat.methods.register_method.

    `codes` methods store uint8 codes of `bits` bits (planes at a PNG depth) plus tables;
    value methods store values of `storage(dtype)`. `lossless` methods give back the source
    dtype bit-exact; the others dequantize to float32.
    """

    name: ClassVar[str]
    codes: ClassVar[bool] = True
    lossless: ClassVar[bool] = False
    # Options of a rule this method uses besides codec and tile (the rest must stay unset).
    options: ClassVar[tuple[str, ...]] = ("bits", "group_size", "prune", "prune_threshold")
    granular: ClassVar[bool] = True  # accepts granularity row/group

    # -- recipe --------------------------------------------------------------------------
    def check_rule(self, rule: "Rule") -> None:
        """Raise ValueError naming what does not fit this method."""
        if self.codes and rule.bits is None:
            raise ValueError(f"{self.name} needs bits (1 to 8)")
        extras = [o for o in CODE_OPTIONS if o not in self.options and getattr(rule, o) is not None]
        if rule.granularity != "tensor" and not self.granular:
            extras.append("granularity")
        if extras:
            raise ValueError(f"{self.name} takes no {', '.join(extras)}")
        if rule.codec is not None:
            codec = get_codec(rule.codec)
            if not (codec.supports_codes if self.codes else codec.supports_values):
                held = "codes" if self.codes else "values"
                raise ValueError(f"{self.name} stores {held}, and {rule.codec} cannot hold them")

    def default_codec(self) -> str:
        return "png" if self.codes else "raw"

    # -- pack ----------------------------------------------------------------------------
    weighted: ClassVar[bool] = False  # whether encode takes importance weights (weights=)

    def fit_work(self, view: tuple[int, int], rule: "Rule") -> float:
        """Units of codebook-fitting loops encoding a tensor of this 2-D view asks for
        (kformat.methods.kernels.expect): none for methods without such loops."""
        return 0.0

    def encode(self, name: str, w: np.ndarray, rule: "Rule") -> "QuantizedTensor":
        """The compact form of `w` (the float 2-D view, finite) under `rule`; a method with
        `weighted` also takes `weights=`, importance broadcastable to w."""
        raise NotImplementedError

    def group_encoder(self, name: str, w: np.ndarray, rule: "Rule", weights=None, codes=None):
        """encode's work as row groups that may run apart, each part's codes written into
        `codes` (uint8, w's shape), with `groups`, `batches`, `run(first, stop)` and
        `finish(parts)` (kformat.methods.kmeans_groups.GroupEncoder); None where a method
        has no such groups or this rule's depend on each other."""
        return None

    # -- format --------------------------------------------------------------------------
    def storage(self, dtype: str) -> str:
        """Element type of this method's planes for a tensor of `dtype`."""
        return "uint8"

    def table_specs(self, quant: "Quant", rows: int) -> list[TableSpec]:
        return []

    def check_table(self, name: str, table: np.ndarray) -> None:
        """Refuse a decoded table a writer would never store (raise DecodeError)."""
        if table.dtype.kind == "f" and not np.isfinite(table).all():
            # Writers never store these (NaN/Inf input is refused), so a reader never serves them.
            raise DecodeError(f"{name} holds NaN or infinite values")

    # -- load ----------------------------------------------------------------------------
    def dequantize(
        self,
        plane: np.ndarray,
        row0: int,
        group_rows: int,
        tables: dict[str, np.ndarray],
        out: np.ndarray | None = None,
    ) -> np.ndarray:
        """float32 values of a plane whose first row is row `row0` of the 2-D view."""
        if out is None:
            return plane.astype(np.float32)
        out[...] = plane
        return out

    def code_values(self, tables: dict[str, np.ndarray], group: int, entries: int) -> np.ndarray | None:
        """float32 value of each of the `entries` codes in row group `group`, exactly as
        dequantize computes them, for methods that are such a lookup (None otherwise)."""
        return None

    def dequantize_packed(
        self,
        packed: np.ndarray,
        depth: int,
        cols: int,
        row0: int,
        group_rows: int,
        tables: dict[str, np.ndarray],
        out: np.ndarray | None = None,
        take: Take = take_rows,
    ) -> np.ndarray:
        """float32 values of a plane given as packed rows at `depth` bits, every code valid.

        For lookup methods, one table per group indexed by whole packed bytes yields 8 // depth
        values per lookup, so codes are never unpacked (the hot loop of loading); `take`
        gathers the table's entries."""
        rows = packed.shape[0]
        if out is None:
            out = np.empty((rows, cols), dtype=np.float32)
        if group_rows < LUT_MIN_ROWS or self.code_values(tables, row0 // group_rows, 1 << depth) is None:
            # the method's own formula, whole (finish_lookup is for the lookup below only)
            return self.dequantize(unpack_rows(packed, cols, depth), row0, group_rows, tables, out=out)
        per_byte = 8 // depth
        direct = out.flags.c_contiguous and cols == packed.shape[1] * per_byte  # write straight into out
        # Otherwise (a tile of a wider tensor) through a band of rows small enough to stay in
        # cache: a tile-sized band is written, evicted and read again, 3x slower on fresh pages.
        band_rows = max(1, BAND_BYTES // (4 * packed.shape[1] * per_byte))
        band = None if direct else np.empty((min(rows, band_rows), packed.shape[1] * per_byte), np.float32)
        # One table per group the tile spans, made in one go (one at a time, their making was
        # an eighth of a BERT-shaped q4 tile's lookup: 22 groups of 64 rows); finish_lookup
        # (kmeans' row scales) runs on each group's rows just written, while in cache (on
        # the whole tile it was a second pass over 4 MiB, a quarter of the lookup).
        first = row0 // group_rows
        groups = range(first, (row0 + rows - 1) // group_rows + 1)
        luts = byte_table(np.stack([self.code_values(tables, g, 1 << depth) for g in groups]), depth)
        start = 0
        while start < rows:
            group = (row0 + start) // group_rows
            stop = min(rows, (group + 1) * group_rows - row0)
            lut = luts[group - first]
            if direct:  # every byte indexes the 256-entry table
                take(lut, packed[start:stop], out[start:stop].view(lut.dtype))
            for lo in range(start, stop, band_rows) if not direct else ():
                hi = min(stop, lo + band_rows)
                take(lut, packed[lo:hi], band[: hi - lo].view(lut.dtype))
                out[lo:hi] = band[: hi - lo, :cols]
            self.finish_lookup(out[start:stop], row0 + start, tables)
            start = stop
        return out

    def finish_lookup(self, values: np.ndarray, row0: int, tables: dict[str, np.ndarray]) -> np.ndarray:
        """What a method does to looked-up code values besides the lookup (kmeans: row scales)."""
        return values

    # -- inspect -------------------------------------------------------------------------
    def summary(self, entry: "TensorEntry") -> dict:
        return {"code_bits": entry.quant.bits}

    # -- bit allocation ------------------------------------------------------------------
    def candidates(self, rows: int) -> list[str]:
        """Rules (in their text form) this method offers bit allocation for a tensor of `rows` rows."""
        return []

    def warm(self, problems: list[tuple[np.ndarray, np.ndarray | None, list["Rule"]]]) -> None:
        """Before bit allocation encodes several small tensors (2-D float32, importance weights
        or None, rules) under its candidates: work their encodes share, done in one batch
        (kept where the encodes find it, e.g. kmeans_fit.remembered_seeds). None by default."""

    def estimate(
        self, w: np.ndarray, rules: list["Rule"], tile: tuple[int, int], weights: np.ndarray | None = None
    ) -> list[tuple[float, float]] | None:
        """(bytes, relative error) of each rule on a large tensor without encoding it, or None
        when the method has no estimate (allocation then encodes for real). With importance
        `weights` (broadcastable to w) the error is sum(weights * dw^2) / sum(weights * w^2)."""
        return None

    def summarize(
        self,
        w: np.ndarray,
        rules: list["Rule"],
        tile: tuple[int, int],
        weights: np.ndarray | None = None,
        name: str | None = None,
    ) -> object | None:
        """What `estimate_from` needs of a large tensor to estimate `rules`: small and picklable,
        read in large numpy passes, so that the fits (which hold the GIL) may run in another
        process (`name`: the tensor's, for what the method keeps of it for its encode). None
        (the default): `estimate` runs in place."""
        return None

    def estimate_from(
        self, items: list[tuple[object, list["Rule"]]]
    ) -> tuple[list[list[tuple[float, float]]], object]:
        """`estimate`'s result for each (summary, rules) of several tensors, in any process (work
        they share done together), and what the method's encodes in the calling process may
        reuse of it (see `reuse`)."""
        raise NotImplementedError(f"{self.name} has no summarize")

    def reuse(self, shared: object) -> None:
        """Keep what `estimate_from` handed back for this process's encodes (kmeans: seeds)."""
