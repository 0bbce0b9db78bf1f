"""Candidates encoded for real: the exact bytes and error of each candidate rule of a
tensor small enough that encoding it under every rule is cheap (kformat.packing.weighing)."""

from __future__ import annotations

import math

import numpy as np

from ..errors import QuantizationError
from ..methods import chunks, get_method, view_2d
from ..recipe import Rule, parse_rule
from .encode import encode_tensor
from .knapsack import Candidate

# The methods whose candidates allocation weighs, in this order (ties go to the first).
ALLOCATION_METHODS = ("fp16", "kmeans")


def method_candidates(method_name: str, rows: int, calibrated: bool = False) -> list[Rule]:
    """The method's candidate rules; entropy-constrained ones only with calibration data.

    They trade 0.5 dB for bytes, a good trade where the objective knows which layers move
    the output (importance and sensitivities). Without it, on a depthwise CNN at 5 bits/weight
    they let allocation shave the sensitive layers: 70% of top-1 predictions kept against 88%."""
    rules = [parse_rule(text) for text in get_method(method_name).candidates(rows)]
    return rules if calibrated else [r for r in rules if r.ecq is None]


def candidate_rules(rows: int, calibrated: bool = False) -> list[Rule]:
    return [rule for name in ALLOCATION_METHODS for rule in method_candidates(name, rows, calibrated)]


def _plane_bytes(q, rule: Rule, tile: tuple[int, int]) -> list[int]:
    """Bytes of each tile blob `q` is written as under `rule`."""
    from ..codecs import get_codec
    from .encoded import tile_blob, tile_grid

    codec = get_codec(rule.plane_codec)
    return [len(tile_blob(q, codec, rect)) for rect in tile_grid(q.view, tile)]


def _stored_bytes(q, blobs: list[int]) -> float:
    """The blobs and tables of an encoded tensor, plus average alignment padding for each."""
    tables = [t.nbytes for t in q.tables.values()]
    return float(sum(blobs) + sum(tables) + 32 * (len(blobs) + len(tables)))


def _relative_error(q) -> float:
    """The unweighted relative error an encode measured (its SQNR), 0 when exact."""
    sqnr = q.stats.get("sqnr_db", math.inf)
    return 0.0 if sqnr == math.inf else 10 ** (-sqnr / 10)


def exact_candidates(name: str, array: np.ndarray, tile: tuple[int, int], importance=None) -> list[Candidate]:
    """Every candidate encoded for real: exact bytes (blobs plus average alignment padding)
    and exact error (importance-weighted with importance). Used for tensors small enough that
    this is cheap."""
    w = np.asarray(array, dtype=np.float32)
    view = view_2d(w.shape)
    weights = None if importance is None else importance.weights(name, view)
    found, refused = [], []
    for rule in candidate_rules(view[0], importance is not None):
        try:
            q = encode_tensor(name, w, rule, importance)
        except QuantizationError as exc:  # a rule that cannot hold these weights is not a candidate
            refused.append(exc)
            continue
        blobs = chunks.submit(_plane_bytes, q, rule, tile)  # beside the next encode
        error = _relative_error(q)
        if weights is not None and error > 0:
            flat, back = w.reshape(view).astype(np.float64), q.dequantize().reshape(view)
            full = np.broadcast_to(weights, view)
            error = float(np.sum(full * (flat - back) ** 2) / (np.sum(full * flat * flat) or 1.0))
        found.append((rule, q, blobs, error))
    out = [Candidate(rule, _stored_bytes(q, blobs.result()), error) for rule, q, blobs, error in found]
    if refused and not out:  # no rule can hold it: say why
        raise refused[0]
    return out


def small_candidates(name: str, array: np.ndarray, rule: Rule, tile: tuple[int, int]) -> list[Candidate]:
    """A small tensor kept raw by the recipe, as it is (no error) and as fp16 (same codec)
    unless fp16 cannot hold it: exact bytes and relative error."""
    w = np.asarray(array)
    out = []
    for option in (rule, Rule(method="fp16", codec=rule.codec)):
        try:
            q = encode_tensor(name, w, option)
        except QuantizationError:  # past float16's range, or every value below it: raw only
            continue
        out.append(Candidate(option, _stored_bytes(q, _plane_bytes(q, option, tile)), _relative_error(q)))
    return out
