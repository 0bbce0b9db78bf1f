"""Apply a Rule to one tensor: its method's compact form, plus the error it makes.

Every tensor is handled through its 2-D view (rows = first axis, cols = the rest; vectors and
scalars are one row), the shape its tiles and groups are cut from.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Iterable

import numpy as np

from ..errors import QuantizationError
from ..methods import QuantizedTensor, get_method, kernels, view_2d
from ..methods.chunks import CHUNK, map_chunks, row_step
from ..methods.histogram import joined_range, known_range, range_parts
from ..methods.metrics import error_powers, sqnr_db
from .feedback import with_feedback
from .split import encode_split, worth_splitting

if TYPE_CHECKING:
    from ..recipe import Rule


def expect_fit_work(pairs: Iterable[tuple[tuple[int, int], Rule]], cores: int = 1) -> None:
    """Tell the fit loops how much codebook work the (2-D view, rule) pairs hold for each of
    `cores` (kernels.expect): a pack's decisions, or weighing's candidates."""
    work = (get_method(rule.method).fit_work(view, rule) for view, rule in pairs)
    kernels.expect(sum(work) / max(1, cores))


def expect_fits(decisions, shapes: dict[str, tuple[int, ...]], jobs: int = 1) -> None:
    """expect_fit_work of the plan's decisions, for each of `jobs` cores."""
    expect_fit_work(((view_2d(shapes[d.name]), d.rule) for d in decisions), jobs)


def check_finite(name: str, values: np.ndarray) -> tuple[float, float] | None:
    """Refuse NaN and inf with a QuantizationError naming the first; for float32 values, their
    (min, max) as histogram.value_range gives it, read in the same pass (each chunk's min and
    max: NaN where it holds one, inf where it holds one), for the caller to pass on
    (histogram.known_range); None for other dtypes."""
    flat = values.reshape(-1)
    if flat.dtype == np.float32 and flat.size:
        parts = range_parts(flat)
        if all(np.isfinite(lo) and np.isfinite(hi) for lo, hi in parts):
            return joined_range(parts)
    _refuse(name, flat)  # (raises where a value is not finite)
    return None


def _refuse(name: str, flat: np.ndarray) -> None:
    """The QuantizationError for the first NaN or inf of `flat`, if it holds one."""

    def first_bad(start: int, stop: int) -> int:
        chunk = flat[start:stop]
        with np.errstate(over="ignore", invalid="ignore"):
            if np.isfinite(np.add.reduce(chunk)):  # one pass: NaN and inf make the sum so
                return -1
        finite = np.isfinite(chunk)  # or finite values summed past the float range
        return -1 if finite.all() else start + int(np.argmin(finite))

    bad = next((i for i in map_chunks(first_bad, flat.size, CHUNK) if i >= 0), None)
    if bad is not None:
        raise QuantizationError(
            f"tensor {name!r}: value {flat[bad]} at flat index {bad} is not finite;"
            " NaN/Inf weights cannot be quantized (store the tensor raw, or fix the model)"
        )


def encode_tensor(
    name: str, array: np.ndarray, rule, importance=None, feedback: bool = False, jobs: int = 1
) -> QuantizedTensor:
    """Quantize or convert one tensor by `rule` (the planner has already checked it applies).
    The result's stats hold the SQNR against the source (inf when exact). With `importance`
    (kformat.packing.importance.Importance) a weighted method fits the weighted error, and
    with `feedback` codes are rounded with error feedback where the importance holds the
    tensor's input covariance (the final pack; bit allocation's trial encodes do without).
    With `jobs` >= 2 its row groups may be fitted in two processes (split.py; the caller asks
    for the long pole, and for every tensor where tensors are encoded on threads)."""
    method = get_method(rule.method)
    view = view_2d(array.shape)
    if method.lossless:
        values = np.ascontiguousarray(array).reshape(view)
        return QuantizedTensor(
            name=name,
            method=method.name,
            shape=tuple(array.shape),
            view=view,
            values=values,
            stats={"sqnr_db": float("inf")},
        )
    span = check_finite(name, array)  # (float32: the values' range, which the method reads again)
    w = np.ascontiguousarray(array, dtype=np.float64 if array.dtype == np.float64 else np.float32).reshape(
        view
    )
    if method.codes:
        w = w.astype(np.float32, copy=False)
    with known_range(w.reshape(-1), span):
        return _encoded(name, array, w, method, rule, importance, feedback, jobs)


def _encoded(name, array, w, method, rule, importance, feedback: bool, jobs: int) -> QuantizedTensor:
    view = w.shape
    weights = importance.weights(name, view) if importance is not None and method.weighted else None
    q = encode_split(method, name, w, rule, weights) if worth_splitting(method, view, rule, jobs) else None
    if q is None:
        q = method.encode(name, w, rule) if weights is None else method.encode(name, w, rule, weights=weights)
    if (
        feedback
        and importance is not None
        and method.codes
        and rule.prune is None
        and rule.prune_threshold is None
    ):
        q = with_feedback(q, w, *importance.covariance(name, view))
    q = replace(q, shape=tuple(array.shape))
    if "sqnr_db" not in q.stats:
        powers = map_chunks(lambda r0, r1: error_powers(w[r0:r1], q.rows(r0, r1)), view[0], row_step(view[1]))
        q.stats["sqnr_db"] = sqnr_db(sum(s for s, _ in powers), sum(n for _, n in powers))
    return q
