"""Bit allocation: choose a rule per layer to meet a size target with the least error.

For every tensor a recipe would quantize (floating point, rank >= 2, at least `min_elements`),
candidates are k-means codebooks of 1, 2, 3, 4, 5, 6 and 8 bits per tensor, 2-4 bits with one
codebook per group of 64 rows, and fp16; with importance also entropy-constrained ones of 3-6
bits (ecq=0.5: 0.5 dB below the plain fit for 5-8% fewer bytes, a better trade than a plain
fit of fewer levels where the objective knows which layers move the output).
Tensors up to EXACT_MAX elements are encoded under every candidate, so their sizes and errors
are exact; larger ones are estimated from a value
histogram: the error by assigning histogram bins to the fitted centroids, the size from the
code entropy (PNG planes land within about 1% of it) plus codebooks and per-tile overhead.
The choice minimises

    sum over tensors of  s_i * noise_i / signal_i

where s_i is the tensor's sensitivity when an importance file measured it (how much a unit of
its relative error moves the model's output; kformat.torch.calibrate), and 1 otherwise: the
documented proxy without calibration data is that a relative error in any layer perturbs the
output about equally, whatever the layer's size (weighting by size would starve small layers,
which cost little to keep). With importance, noise and signal are importance-weighted. All
within the byte budget, by an exact dynamic programme over the multiple-choice knapsack.
The real packs are then measured (see pack_to_target) and the best one that fits is kept.
Tensors the recipe does not quantize, and tensors an explicit rule names (a recipe's rules
or --rule), keep their rule and count as fixed bytes: allocation chooses for the tensors
under the recipe's default rule only.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import KFormatError, QuantizationError
from ..methods import chunks, get_method, view_2d
from ..methods.metrics import TILE_OVERHEAD
from ..recipe import Recipe, Rule, is_float_dtype, parse_rule, plan
from ..progress import log
from ..sources import TensorSource, find_aliases
from .atomic import promote, remove_path, temp_prefix, write_errors
from .encode import encode_tensor
from .knapsack import Candidate, choose
from .reuse import Earlier

# The methods whose candidates allocation weighs, in this order (ties go to the first).
ALLOCATION_METHODS = ("fp16", "kmeans")
EXACT_MAX = 1 << 20  # tensors up to this many elements are encoded for real under every candidate
FIRST_ORDER_ERROR = 0.1  # relative error (10 dB) beyond which a candidate's error is grown
CLOSE_ENOUGH = 0.002  # stop once the container is within 0.2% below the target
# A uniform round is packed only when its estimated error is within this factor of the best
# fitting round's: the estimates are within a few percent, so one further off cannot win.
UNIFORM_SLACK = 1.25


@dataclass
class Allocation:
    target_bytes: int
    rules: dict[str, Rule]  # tensor name -> chosen rule
    estimated_bytes: float
    estimated_error: float
    fixed_bytes: float

    def describe(self) -> dict:
        """What the manifest records (each tensor's rule is in its own entry)."""
        return {
            "target_bytes": self.target_bytes,
            "estimated_bytes": round(self.estimated_bytes),
            "weighted_error": round(self.estimated_error, 6),
            "tensors": len(self.rules),
        }


def method_candidates(method_name: str, rows: int, calibrated: bool = False) -> list[Rule]:
    """The method's candidate rules; entropy-constrained ones only with calibration data.

    They trade 0.5 dB for bytes, a good trade where the objective knows which layers move
    the output (importance and sensitivities). Without it, on a depthwise CNN at 5 bits/weight
    they let allocation shave the sensitive layers: 70% of top-1 predictions kept against 88%."""
    rules = [parse_rule(text) for text in get_method(method_name).candidates(rows)]
    return rules if calibrated else [r for r in rules if r.ecq is None]


def candidate_rules(rows: int, calibrated: bool = False) -> list[Rule]:
    return [rule for name in ALLOCATION_METHODS for rule in method_candidates(name, rows, calibrated)]


def exact_candidates(name: str, array: np.ndarray, tile: tuple[int, int], importance=None) -> list[Candidate]:
    """Every candidate encoded for real: exact bytes (blobs plus average alignment padding)
    and exact error (importance-weighted with importance). Used for tensors small enough that
    this is cheap."""
    from ..codecs import get_codec
    from .writer import tile_blob, tile_grid

    w = np.asarray(array, dtype=np.float32)
    view = view_2d(w.shape)
    weights = None if importance is None else importance.weights(name, view)
    out, refused = [], []
    for rule in candidate_rules(view[0], importance is not None):
        try:
            q = encode_tensor(name, w, rule, importance)
        except QuantizationError as exc:  # a rule that cannot hold these weights is not a candidate
            refused.append(exc)
            continue
        codec = get_codec(rule.plane_codec)
        blobs = [len(tile_blob(q, codec, rect)) for rect in tile_grid(q.view, tile)]
        tables = [t.nbytes for t in q.tables.values()]
        size = sum(blobs) + sum(tables) + 32 * (len(blobs) + len(tables))
        sqnr = q.stats.get("sqnr_db", math.inf)
        error = 0.0 if sqnr == math.inf else 10 ** (-sqnr / 10)
        if weights is not None and error > 0:
            flat, back = w.reshape(view).astype(np.float64), q.dequantize().reshape(view)
            full = np.broadcast_to(weights, view)
            error = float(np.sum(full * (flat - back) ** 2) / (np.sum(full * flat * flat) or 1.0))
        out.append(Candidate(rule, float(size), error))
    if refused and not out:  # no rule can hold it: say why
        raise refused[0]
    return out


def candidates(name: str, array: np.ndarray, tile: tuple[int, int], importance=None) -> list[Candidate]:
    """(bytes, relative error) of every candidate rule for one tensor: exact for tensors up to
    EXACT_MAX elements, estimated by each method (from a histogram, for k-means) above that.
    With importance the error is each layer's importance-weighted relative error."""
    if array.size <= EXACT_MAX:
        return exact_candidates(name, array, tile, importance)
    w = np.asarray(array, dtype=np.float32).reshape(view_2d(array.shape))
    weights = None if importance is None else importance.weights(name, w.shape)
    out = []
    for method_name in ALLOCATION_METHODS:
        method = get_method(method_name)
        rules = method_candidates(method_name, w.shape[0], importance is not None)
        if not rules:
            estimates = []
        elif weights is None:
            estimates = method.estimate(w, rules, tile)
        else:
            estimates = method.estimate(w, rules, tile, weights=weights)
        if estimates is None:  # no estimate: encode for real
            out += [c for c in exact_candidates(name, w, tile, importance) if c.rule.method == method_name]
            continue
        out += [Candidate(rule, size, error) for rule, (size, error) in zip(rules, estimates)]
    return out


def _fixed_bytes(shape, dtype: np.dtype, rule: Rule) -> float:
    """Bytes of a tensor the recipe keeps by its own rule: its values, or its codes and a table."""
    n = int(np.prod(shape, dtype=np.int64))
    method = get_method(rule.method)
    if not method.codes:
        return np.dtype(method.storage(np.dtype(dtype).name)).itemsize * n + TILE_OVERHEAD
    bits = int(rule.bits)
    return n * bits / 8 + (1 << bits) * 4 + TILE_OVERHEAD


def estimate(
    source: TensorSource, recipe: Recipe, importance=None
) -> tuple[dict[str, list[Candidate]], float]:
    """Candidates of every tensor the recipe would quantize, and the estimated fixed bytes
    (header, manifest, and the tensors kept by the recipe's own rule)."""
    aliases = find_aliases(source)  # stored once: not a second candidate
    infos = {t.name: t for t in source.tensors() if t.name not in aliases}
    decisions, _ = plan(recipe, [(t.name, t.shape, t.dtype) for t in infos.values()])
    options: dict[str, list[Candidate]] = {}
    fixed = 64.0 + 1024.0  # header and the manifest's fixed part
    for d in decisions:
        info = infos[d.name]
        n = int(np.prod(info.shape, dtype=np.int64))
        eligible = (
            d.reason.startswith("default")  # a tensor an explicit rule names keeps that rule
            and is_float_dtype(info.dtype)
            and len(info.shape) >= 2
            and n >= recipe.min_elements
            and d.rule.method != "raw"
        )
        fixed += 300  # manifest entry
        if eligible:
            found = candidates(d.name, source.load(d.name), tuple(d.rule.tile or recipe.tile), importance)
            if importance is not None:  # output error per unit of the layer's, to first order
                weight = importance.sensitivity(d.name)
                found = [Candidate(c.rule, c.bytes, _beyond_first_order(c.error) * weight) for c in found]
            options[d.name] = found
        else:
            fixed += _fixed_bytes(info.shape, info.dtype, d.rule)
    if not options:
        raise KFormatError(
            "nothing to allocate: no tensor under the recipe's default rule is floating point, rank >= 2"
            " and >= min_elements (tensors explicit rules name keep their rule)"
        )
    return options, fixed


def _beyond_first_order(error: float) -> float:
    """A relative error past FIRST_ORDER_ERROR, grown by (error / FIRST_ORDER_ERROR)^2 (with
    importance, where errors are weighed by measured sensitivities).

    Sensitivities are measured with small noise; a layer whose output is a tenth noise or
    more is past where they hold (a depthwise CNN's last pointwise layer, measured 1/40 of
    the median, was given 1 bit at 4.6 dB and the model kept 91% of its predictions)."""
    if error <= FIRST_ORDER_ERROR:
        return error
    return error * (error / FIRST_ORDER_ERROR) ** 2


def _shifted(options: dict[str, list[Candidate]], offsets: dict[str, float]) -> dict[str, list[Candidate]]:
    """Candidates with each tensor's measured size error (real - estimated) added."""
    return {
        n: [Candidate(c.rule, max(1.0, c.bytes + offsets.get(n, 0.0)), c.error) for c in cs]
        for n, cs in options.items()
    }


def _best_uniform(options: dict[str, list[Candidate]], budget: float) -> dict[str, Candidate] | None:
    """The same rule everywhere (per tensor where a tensor lacks it), least error that fits."""
    best = None
    for rule in {c.rule for cs in options.values() for c in cs}:
        choice = {}
        for name, cs in options.items():
            same = [c for c in cs if c.rule == rule]
            fallback = [c for c in cs if c.rule.method == rule.method and c.rule.bits == rule.bits]
            if not (same or fallback):
                break
            choice[name] = (same or fallback)[0]
        else:
            size = sum(c.bytes for c in choice.values())
            error = sum(c.error for c in choice.values())
            if size <= budget and (best is None or error < best[0]):
                best = (error, choice)
    return None if best is None else best[1]


def allocate(options: dict[str, list[Candidate]], fixed: float, target_bytes: int) -> Allocation:
    choice = choose(options, target_bytes - fixed)
    uniform = _best_uniform(options, target_bytes - fixed)  # never do worse than one rule for all
    if uniform is not None and sum(c.error for c in uniform.values()) < sum(c.error for c in choice.values()):
        choice = uniform
    return Allocation(
        target_bytes=int(target_bytes),
        rules={name: c.rule for name, c in choice.items()},
        estimated_bytes=fixed + sum(c.bytes for c in choice.values()),
        estimated_error=sum(c.error for c in choice.values()),
        fixed_bytes=fixed,
    )


def container_size(path: Path) -> int:
    path = Path(path)
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size


def measured_error(manifest) -> float:
    """The plain objective on a packed container: the sum of each tensor's relative error,
    from the SQNR its manifest entry records."""
    total = 0.0
    for t in manifest.tensors:
        sqnr = t.stats.get("sqnr_db")
        if sqnr is not None and t.quant.method != "raw":
            total += 10 ** (-sqnr / 10)
    return total


def pack_to_target(
    source: TensorSource,
    output,
    recipe: Recipe,
    target_bytes: int,
    *,
    layout="single",
    shard_size=None,
    metadata=None,
    progress=None,
    jobs=None,
    importance=None,
    scheduler=None,
    staging=None,
):
    """Pack with allocated rules so that the container is at most `target_bytes`.

    Rounds, each packed to a temporary sibling of `output` and measured: (1) the allocation
    from the estimates; (2) when (1) misses the target or undershoots it, the allocation again
    with the estimates corrected by what (1) measured; (3) the best single rule for all
    tensors that the corrected estimates say fits (or nearly), and the best without group
    codebooks, each only when its estimated error is within UNIFORM_SLACK of the best fitting
    round's. A round reads back the tensors an earlier round packed by the same rule
    (kformat.packing.reuse). Of the containers that fit, the one with
    the least *measured* weighted error is renamed into place (so the result is never worse
    than a uniform choice that was tried), the others removed.
    With importance, rounds are compared by their candidates' importance-weighted errors (the
    manifest's SQNRs are unweighted). Returns (report, allocation, bytes).
    """
    from ..format.constants import DEFAULT_SHARD_SIZE
    from .writer import default_jobs, pack as write

    output = Path(output)
    with chunks.threads(default_jobs(jobs) if scheduler is None else 1):  # large passes on all cores
        options, fixed = estimate(source, recipe, importance)
    tried: list[Path] = []
    earlier = Earlier()  # each round's container: later rounds read back what they share
    fitting = []  # (measured error, -bytes, path, report, allocation)
    sizes: list[int] = []

    def run(alloc: Allocation, label: str):
        info = dict(metadata or {})
        info["kformat.allocation"] = json.dumps({**alloc.describe(), "round": label}, sort_keys=True)
        note = "allocated"  # the target and figures are in metadata["kformat.allocation"]
        temp = output.with_name(f"{temp_prefix(output)}alloc{len(tried)}")
        tried.append(temp)
        report = write(
            source,
            temp,
            recipe,
            layout=layout,
            shard_size=shard_size or DEFAULT_SHARD_SIZE,
            metadata=info,
            progress=progress,
            jobs=jobs,
            assigned={n: (r, note) for n, r in alloc.rules.items()},
            importance=importance,
            scheduler=scheduler,
            staging=staging,
            earlier=earlier,
        )
        earlier.add(temp)
        actual = container_size(temp)
        sizes.append(actual)
        log.info("allocation (%s round): %d bytes for a target of %d", label, actual, target_bytes)
        if actual <= target_bytes:
            # The manifest's SQNRs are unweighted: with importance, judge each round by the
            # importance-weighted errors its rules were chosen on (exact up to EXACT_MAX).
            error = measured_error(report.manifest) if importance is None else alloc.estimated_error
            fitting.append((error, -actual, len(tried), temp, report, alloc))
        return report, actual

    try:
        first = allocate(options, fixed, target_bytes)
        report, actual = run(first, "estimated")
        real = {t.name: t.stored_bytes for t in report.manifest.tensors}
        chosen = {n: next(c for c in cs if c.rule == first.rules[n]) for n, cs in options.items()}
        offsets = {n: real[n] - chosen[n].bytes for n in options}
        corrected = _shifted(options, offsets)
        fixed = actual - sum(real[n] for n in options)
        if not (target_bytes * (1 - CLOSE_ENOUGH) <= actual <= target_bytes):
            second = allocate(corrected, fixed, target_bytes)
            if second.rules != first.rules:
                run(second, "corrected")
        # Estimates may be off by a fraction of a percent: near the edge, let the real size
        # decide between the best single rule for all, and the best without group codebooks.
        window = (target_bytes - fixed) * (1 + 2 * CLOSE_ENOUGH)
        tried_rules = [first.rules]
        for plain in (False, True):
            pool = (
                corrected
                if not plain
                else {n: [c for c in cs if c.rule.granularity != "group"] for n, cs in corrected.items()}
            )
            uniform = _best_uniform(pool, window)
            if uniform is None:
                continue
            rules = {n: c.rule for n, c in uniform.items()}
            if rules in tried_rules:
                continue
            tried_rules.append(rules)
            error = sum(c.error for c in uniform.values())
            if fitting and error > UNIFORM_SLACK * min(item[5].estimated_error for item in fitting):
                log.info("allocation: no uniform round (estimated error %.3g, far above)", error)
                continue
            run(
                Allocation(
                    int(target_bytes), rules, fixed + sum(c.bytes for c in uniform.values()), error, fixed
                ),
                "uniform",
            )
        if not fitting:  # all just over: once more with the overshoot and a margin taken off
            margin = (min(sizes) - target_bytes) + CLOSE_ENOUGH * target_bytes
            run(allocate(corrected, fixed + margin, target_bytes), "margin")
        if not fitting:
            raise KFormatError(
                f"could not meet the target of {target_bytes:,} bytes (the closest try came to"
                f" {min(sizes):,});"
                " the estimates are off for this model: try a slightly smaller target"
            )
        _, minus_bytes, _, temp, report, alloc = min(fitting, key=lambda item: item[:3])
        with write_errors(output):
            promote(temp, output)
        report.output = output
        return report, alloc, -minus_bytes
    finally:
        earlier.close()
        for temp in tried:
            remove_path(temp)
