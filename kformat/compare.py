"""How far a packed model's weights are from the original: per tensor and in total.

    kformat compare model.safetensors model.kf [--json]

For every tensor both sides hold: SQNR in dB, cosine similarity, largest absolute error and
relative Frobenius error ||W - W'|| / ||W||, streamed in row chunks in float64. Tensors only
one side holds, or whose shapes differ, are listed rather than silently skipped.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .errors import InputError
from .loading.lazy import LazyModel
from .methods.metrics import sqnr_db
from .sources import TensorSource, open_source, source_aliases

CHUNK = 1 << 22


@dataclass
class TensorError:
    name: str
    shape: list[int]
    params: int
    sqnr_db: float
    cosine: float
    max_abs_error: float
    rel_fro_error: float
    exact: bool


@dataclass
class Comparison:
    tensors: list[TensorError]
    only_in_original: list[str] = field(default_factory=list)
    only_in_packed: list[str] = field(default_factory=list)
    shape_mismatch: list[str] = field(default_factory=list)
    totals: dict = field(default_factory=dict)

    @property
    def problems(self) -> list[str]:
        """What makes the two sides disagree beyond quantization error (none: they correspond)."""
        found = []
        if not self.tensors:
            found.append("no tensor in common")
        if self.only_in_original:
            found.append(f"{len(self.only_in_original)} tensor(s) only in the original")
        if self.only_in_packed:
            found.append(f"{len(self.only_in_packed)} tensor(s) only in the packed model")
        if self.shape_mismatch:
            found.append(f"{len(self.shape_mismatch)} tensor(s) of different shapes")
        return found

    def to_dict(self) -> dict:
        def clean(value):
            if isinstance(value, float) and not math.isfinite(value):
                return None if math.isnan(value) else ("inf" if value > 0 else "-inf")
            if isinstance(value, dict):
                return {k: clean(v) for k, v in value.items()}
            if isinstance(value, list):
                return [clean(v) for v in value]
            return value

        return clean(asdict(self))


class _Sums:
    """Running float64 sums of one pair of tensors (or of all of them)."""

    def __init__(self) -> None:
        self.xx = self.yy = self.xy = self.dd = 0.0
        self.max_abs = 0.0
        self.params = 0

    def add(self, x: np.ndarray, y: np.ndarray) -> None:
        x = x.reshape(-1).astype(np.float64)
        y = y.reshape(-1).astype(np.float64)
        d = x - y
        self.xx += float(x @ x)
        self.yy += float(y @ y)
        self.xy += float(x @ y)
        self.dd += float(d @ d)
        if d.size:
            self.max_abs = max(self.max_abs, float(np.abs(d).max()))
        self.params += x.size

    def merge(self, other: "_Sums") -> None:
        self.xx += other.xx
        self.yy += other.yy
        self.xy += other.xy
        self.dd += other.dd
        self.max_abs = max(self.max_abs, other.max_abs)
        self.params += other.params

    @property
    def cosine(self) -> float:
        if self.xx == 0 or self.yy == 0:
            return 1.0 if self.xx == self.yy else 0.0
        return self.xy / math.sqrt(self.xx * self.yy)

    @property
    def rel_fro(self) -> float:
        return math.sqrt(self.dd / self.xx) if self.xx else (0.0 if self.dd == 0 else math.inf)


def _source(path: str, storage_options: dict) -> tuple[TensorSource | LazyModel, bool]:
    """A model file as a TensorSource, or a kformat container (any URL) as a LazyModel."""
    from .packing.relayout import is_container

    if is_container(path):
        return LazyModel.open(path, **storage_options), True
    return open_source(path), False


def compare(original: str | Path, packed: str | Path, **storage_options) -> Comparison:
    """Compare every tensor of `packed` (a kformat URL) with `original` (a model file or URL)."""
    source, source_is_container = _source(str(original), storage_options)
    model = LazyModel.open(str(packed), **storage_options)
    try:
        if source_is_container:
            names = {name: (tuple(t.shape), t.source_dtype) for name, t in source.items()}
            load = lambda name: source[name].numpy()  # noqa: E731
        else:
            names = {t.name: (tuple(t.shape), t.dtype) for t in source.tensors()}
            tied = {a: n for a, n in source_aliases(source).items() if a not in names and n in names}
            names.update({a: names[n] for a, n in tied.items()})  # stored once in the source
            load = lambda name: source.load(tied.get(name, name))  # noqa: E731
        result = Comparison(tensors=[])
        result.only_in_original = [n for n in names if n not in model]
        result.only_in_packed = [n for n in model if n not in names]
        total = _Sums()
        for name, tensor in model.items():
            if name not in names:
                continue
            if names[name][0] != tensor.shape:
                result.shape_mismatch.append(
                    f"{name}: original {list(names[name][0])}, packed {list(tensor.shape)}"
                )
                continue
            x, y = np.asarray(load(name)), tensor.numpy()
            if x.dtype.kind not in "biuf":
                raise InputError(
                    f"{original}: tensor {name!r} has dtype {x.dtype}; only numeric tensors compare"
                )
            sums = _Sums()
            flat_x, flat_y = x.reshape(-1), y.reshape(-1)
            for start in range(0, flat_x.size, CHUNK):
                sums.add(flat_x[start : start + CHUNK], flat_y[start : start + CHUNK])
            if x.dtype.kind == "f":
                total.merge(sums)
            result.tensors.append(
                TensorError(
                    name=name,
                    shape=list(tensor.shape),
                    params=int(x.size),
                    sqnr_db=sqnr_db(sums.xx, sums.dd),
                    cosine=sums.cosine,
                    max_abs_error=sums.max_abs,
                    rel_fro_error=sums.rel_fro,
                    exact=bool(sums.dd == 0 and np.array_equal(x, y)),
                )
            )
        worst = min((t for t in result.tensors if not t.exact), key=lambda t: t.sqnr_db, default=None)
        compared = total.params > 0
        result.totals = {
            "tensors": len(result.tensors),
            "params": sum(t.params for t in result.tensors),
            "exact_tensors": sum(t.exact for t in result.tensors),
            "float_params": total.params,
            "sqnr_db": sqnr_db(total.xx, total.dd) if compared else None,
            "cosine": total.cosine if compared else None,
            "max_abs_error": total.max_abs if compared else None,
            "rel_fro_error": total.rel_fro if compared else None,
            "worst_tensor": worst.name if worst else None,
            "worst_sqnr_db": worst.sqnr_db if worst else None,
        }
        return result
    finally:
        model.close()
        if source_is_container:
            source.close()


def format_comparison(result: Comparison) -> str:
    lines = [
        f"{'tensor':32s} {'params':>11s} {'SQNR dB':>8s} {'cosine':>10s} {'max |err|':>10s} {'rel fro':>9s}"
    ]

    def row(name, params, sqnr, cosine, max_abs, rel):
        sq = "exact" if sqnr == math.inf else f"{sqnr:8.2f}"
        return f"{name[:32]:32s} {params:11,d} {sq:>8s} {cosine:10.6f} {max_abs:10.3g} {rel:9.3g}"

    for t in result.tensors:
        lines.append(row(t.name, t.params, t.sqnr_db, t.cosine, t.max_abs_error, t.rel_fro_error))
    tot = result.totals
    if tot["float_params"]:
        lines.append(
            row(
                "TOTAL (float tensors)",
                tot["float_params"],
                tot["sqnr_db"],
                tot["cosine"],
                tot["max_abs_error"],
                tot["rel_fro_error"],
            )
        )
    elif not result.tensors:
        lines.append("no tensor in common: nothing was compared")
    if tot["worst_tensor"]:
        lines.append(
            f"lowest SQNR: {tot['worst_tensor']} at {tot['worst_sqnr_db']:.2f} dB;"
            f" {tot['exact_tensors']} of {tot['tensors']} tensors exact"
        )
    for label, items in (
        ("only in the original", result.only_in_original),
        ("only in the packed model", result.only_in_packed),
        ("shapes differ", result.shape_mismatch),
    ):
        if items:
            lines.append(f"{label}: {', '.join(items)}")
    return "\n".join(lines)
