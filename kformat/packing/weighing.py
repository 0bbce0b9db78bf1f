"""What each candidate rule of a tensor costs: its bytes and its error, for bit allocation.

For every tensor a recipe would quantize (floating point, rank >= 2, at least `min_elements`),
candidates are k-means codebooks of 1, 2, 3, 4, 5, 6 and 8 bits per tensor, 2-4 bits with one
codebook per group of 64 rows, and fp16; with importance also entropy-constrained ones of 3-6
bits (ecq=0.5: 0.5 dB below the plain fit for 5-8% fewer bytes, a better trade than a plain
fit of fewer levels where the objective knows which layers move the output).
Tensors up to EXACT_MAX elements are encoded under every candidate, so their sizes and errors
are exact (a batch of them at a time, the seeds of their codebooks computed together: many
small programmes cost more in numpy calls than one batched one; the batch's tensors are then
weighed on the chunk pool's threads); larger ones are estimated
from a value histogram: the error by assigning histogram bins to the fitted centroids, the
size from the code entropy times the planes' overhead over it, measured by coding and
compressing a probe of the tensor (kmeans_allocation._plane_overhead: within 0.3% on VGG16,
where a constant 1.02 was 1.3% high), plus codebooks and per-tile overhead. The histograms
are read here (kformat.packing.estimated) and the fits, which hold the GIL, run in worker
processes with `jobs` > 1 (kformat.packing.processes: VGG16's weighing at two jobs 1.6 s,
was 3.0 s in threads). With
importance, errors are importance-weighted and each tensor's is scaled by its measured
sensitivity.

Float tensors the recipe keeps raw only for being smaller than `min_elements` (norms, biases,
a small network's first kernels) are candidates too, raw or fp16 and never codes: on a
depthwise CNN of 120k parameters they are a third of the file in float32, and storing them
fp16 under a 4.5 bits/weight target took its top-1 predictions kept from 40% to 97%.
"""

from __future__ import annotations

import functools
import math
from contextlib import ExitStack
from typing import Callable

import numpy as np

from ..errors import KFormatError, QuantizationError
from ..methods import chunks, get_method, kernels, kmeans_fit, view_2d
from ..methods.metrics import TILE_OVERHEAD, manifest_entry_bytes
from ..progress import Tracker
from ..recipe import Recipe, Rule, is_float_dtype, plan, tile_for
from ..sources import TensorSource, find_aliases
from .encode import check_finite, expect_fit_work
from .estimated import Batch, adopt, estimated_candidates, summarized, weighed_in_worker, weighed_where_read
from .exact import ALLOCATION_METHODS, candidate_rules, exact_candidates, method_candidates, small_candidates
from .knapsack import Candidate
from .processes import InHand, run, worker_processes

__all__ = ["candidate_rules", "estimate", "estimated_candidates", "exact_candidates", "method_candidates"]

# Tensors up to this many elements are encoded for real under every candidate. It was 2^20:
# the real all-MiniLM-L6-v2's matrices (0.15-0.6M elements) then all went that way, and at
# 2^16 its --target-bits 4.5, 3.5 and 3.5 with importance packed in 0.79x, 0.65x and 0.72x
# the time to the same embeddings (mean cosine 0.9923, 0.9667, 0.9872 against 0.9873); the
# BERT-shaped model in 0.80x, VGG16 0.90x, to the same SQNR (the digits example's allocations
# about 1% larger, at the same accuracy: a little more of the target used).
EXACT_MAX = 1 << 16
WARM_BATCH = 16  # small tensors whose shared work (k-means seeds) is done together
IN_FLIGHT = 2  # tasks outstanding per job: each may hold a batch of small tensors (16 x 4 MB)
LARGE_BATCH = 3  # large tensors fitted together (their seeds in one programme per width)
FIRST_ORDER_ERROR = 0.1  # relative error (10 dB) beyond which a candidate's error is grown


def candidates(name: str, array: np.ndarray, tile: tuple[int, int], importance=None) -> list[Candidate]:
    """(bytes, relative error) of every candidate rule for one tensor: exact for tensors up to
    EXACT_MAX elements, estimated by each method (from a histogram, for k-means) above that.
    With importance the error is each layer's importance-weighted relative error."""
    if array.size <= EXACT_MAX:
        return exact_candidates(name, array, tile, importance)
    return estimated_candidates(name, array, tile, importance)


def _expect_fits(names: list[str], views: dict, calibrated: bool, cores: int, wait: bool) -> None:
    """Weighing fits every candidate codebook of every tensor: ask for the fit kernels by that
    much work per core (kernels.expect; the plan's own rules are fp16, no fits). With worker
    processes, wait for them before the fork, so that each inherits them: forked first, each
    ran numpy loops until WARM_AFTER and then loaded the kernels on its own. --target-bits 4.5:
    all-MiniLM-L6-v2-shaped (37,168 units) at one job 2.86 s with the kernels from the start
    against 3.98 s (one pack in a fresh process), at two 2.36 s against 2.94 s (whole commands,
    paired); VGG16 (11,936) at one job 2.41 s against 2.68 s (whole, paired). At two jobs,
    waiting for the full load (0.37 s) before the fork took VGG16 1.08x the time: hence work
    per core, against kernels.load_for_work() (5,968 there: loaded where the load is lean, as
    from the command line, which took 0.90x the time; not otherwise)."""
    expect_fit_work(
        ((views[name], rule) for name in names for rule in candidate_rules(views[name][0], calibrated)), cores
    )
    if wait:
        kernels.compiled()  # (waits only for a load expect started)


def _fixed_bytes(shape, dtype: np.dtype, rule: Rule) -> float:
    """Bytes of a tensor the recipe keeps by its own rule: its values, or its codes and a table."""
    n = int(np.prod(shape, dtype=np.int64))
    method = get_method(rule.method)
    if not method.codes:
        return np.dtype(method.storage(np.dtype(dtype).name)).itemsize * n + TILE_OVERHEAD
    bits = int(rule.bits)
    return n * bits / 8 + (1 << bits) * 4 + TILE_OVERHEAD


def _eligible(d, info, recipe: Recipe) -> bool:
    """Whether allocation chooses this tensor's rule: under the recipe's default rule (a tensor
    an explicit rule names keeps that rule), floating point, rank >= 2, large enough."""
    return (
        d.reason.startswith("default")
        and is_float_dtype(info.dtype)
        and len(info.shape) >= 2
        and math.prod(info.shape) >= recipe.min_elements
        and d.rule.method != "raw"
    )


def _shrinkable(d, info, recipe: Recipe) -> bool:
    """Whether a size target may store this tensor fp16 instead of raw: under the recipe's
    default rule (itself lossy), floating point wider than 16 bits, and raw only for being
    smaller than `min_elements` (norms, biases, a small network's first kernels)."""
    return (
        d.reason.startswith("default")
        and d.rule.method == "raw"
        and not get_method(recipe.default.method).lossless
        and is_float_dtype(info.dtype)
        and np.dtype(info.dtype).itemsize > 2
        and math.prod(info.shape) < recipe.min_elements
    )


def _warm(arrays: dict[str, np.ndarray], importance) -> None:
    """Let each method prepare, in batches, the work the candidates of these tensors share
    (the k-means seeds of every width: kmeans_fit.remembered_seeds)."""
    loaded = []
    for name, array in arrays.items():
        view = view_2d(array.shape)
        w = np.ascontiguousarray(array, dtype=np.float32).reshape(view)  # as encode_tensor has it
        check_finite(name, w)  # as every candidate's encode would (an inf broke the histogram)
        loaded.append((w, None if importance is None else importance.weights(name, view)))
    for method_name in ALLOCATION_METHODS:
        problems = [
            (w, weights, method_candidates(method_name, w.shape[0], importance is not None))
            for w, weights in loaded
        ]
        get_method(method_name).warm(problems)


def _weigh_batch(arrays: dict[str, np.ndarray], tiles: dict, importance):
    """Every candidate of a batch of small tensors, encoded (in a worker process), and the
    seeds and histograms it kept, for this process's encodes of the chosen rules (_kept)."""
    with kmeans_fit.remembered_seeds():
        _warm(arrays, importance)
        found = {n: candidates(n, a, tiles[n], importance) for n, a in arrays.items()}
        return found, kmeans_fit.seeds_kept(), kmeans_fit.histograms_kept()


def _kept(result: Callable) -> Callable[[], dict[str, list[Candidate]]]:
    """The candidates of a task weighed elsewhere (_weigh_batch, weighed_where_read), once the
    seeds and whole tensors' histograms it kept are kept here."""

    def found() -> dict[str, list[Candidate]]:
        candidates_of, seeds, histograms = result()
        kmeans_fit.keep_seeds(seeds)
        kmeans_fit.keep_histograms(histograms)
        return candidates_of

    return found


def estimate(
    source: TensorSource, recipe: Recipe, importance=None, progress=None, jobs: int = 1
) -> tuple[dict[str, list[Candidate]], float]:
    """Candidates of every tensor the recipe would quantize, and the estimated fixed bytes
    (header, manifest, and the tensors kept by the recipe's own rule).

    With `jobs` > 1 the GIL-bound work runs in `jobs` worker processes as well as here
    (kformat.packing.processes): every large tensor is read, summarized and fitted in a
    worker, LARGE_BATCH at a time (from a source that is not forkable, read and summarized
    here, its summary sent), while the tensors encoded under every candidate
    (up to EXACT_MAX elements) go WARM_BATCH at a time, their shared work done for the batch
    first, one batch in (workers + 1) here (its encodes on the chunk pool's threads) and the
    others in workers. At most IN_FLIGHT tasks per job are outstanding. `progress` hears of
    each tensor weighed ("weighing NAME")."""
    aliases = find_aliases(source)  # stored once: not a second candidate
    infos = {t.name: t for t in source.tensors() if t.name not in aliases}
    decisions, _ = plan(recipe, [(t.name, t.shape, t.dtype) for t in infos.values()])
    chosen = {d.name for d in decisions if _eligible(d, infos[d.name], recipe)}
    shrinkable = {d.name for d in decisions if _shrinkable(d, infos[d.name], recipe)}
    small = [d.name for d in decisions if d.name in chosen and math.prod(infos[d.name].shape) <= EXACT_MAX]
    large = [d.name for d in decisions if d.name in chosen and d.name not in small]
    batches = {small[i]: small[i : i + WARM_BATCH] for i in range(0, len(small), WARM_BATCH)}  # by first
    found: dict[str, list[Candidate]] = {}
    views = {d.name: view_2d(infos[d.name].shape) for d in decisions}
    tiles = {d.name: tile_for(views[d.name], d.rule.tile, recipe.tile) for d in decisions}
    entries = sum(manifest_entry_bytes(d.name, views[d.name], tiles[d.name]) for d in decisions)
    fixed = 64.0 + 1024.0 + entries  # header, the manifest's fixed part, its entries
    sizes = {n: math.prod(infos[n].shape) * np.dtype(infos[n].dtype).itemsize for n in chosen}
    tracker = Tracker(progress, len(chosen), sum(sizes.values()))

    pending: list[Callable[[], dict[str, list[Candidate]]]] = []  # in worker processes, oldest first

    def settle(result: Callable[[], dict[str, list[Candidate]]]) -> None:
        for name, candidates_of in result().items():
            found[name] = candidates_of
            tracker.finish_item(sizes[name])

    def later(result: Callable[[], dict[str, list[Candidate]]]) -> None:
        if len(pending) >= IN_FLIGHT * max(1, jobs):
            settle(pending.pop(0))
        pending.append(result)

    def load(names: list[str]) -> dict[str, np.ndarray]:
        for name in names:
            tracker.start(f"weighing {name}")
        return {n: np.asarray(source.load(n)) for n in names}  # sources are read from this thread only

    workers = min(jobs, len(large) + len(batches)) if jobs > 1 else 0
    _expect_fits(sorted(chosen), views, importance is not None, max(1, jobs), wait=workers > 0)
    in_hand = InHand(workers)  # the processes' tasks, as busy workers for the chunk helpers
    # forked before any thread of ours works
    with worker_processes(workers, adopt, source, importance) as processes:
        # of every (workers + 1) batches of small tensors, one is weighed here, the others in workers
        shared = [] if processes is None else [f for i, f in enumerate(batches) if i % (workers + 1)]
        for first in shared:
            batch_of = load(batches[first])
            later(_kept(run(processes, _weigh_batch, batch_of, tiles, importance, in_hand=in_hand)))
        if processes is not None and getattr(source, "forkable", False):  # read where weighed
            here = functools.partial(weighed_where_read, source, importance=importance)
            for start in range(0, len(large), LARGE_BATCH):
                names = large[start : start + LARGE_BATCH]
                for name in names:
                    tracker.start(f"weighing {name}")
                tiles_of = {n: tiles[n] for n in names}
                later(_kept(run(processes, weighed_in_worker, names, tiles_of, in_hand=in_hand, here=here)))
        else:
            batch = Batch()  # large tensors summarized here, fitted together (in a worker, with a pool)
            for name in large:
                batch.add(name, summarized(name, load([name])[name], tiles[name], importance))
                if len(batch) == LARGE_BATCH or name == large[-1]:
                    later(batch.submit(processes, in_hand))
                    batch = Batch()
        with ExitStack() as seeds:
            for d in decisions:
                if d.name in shrinkable:
                    found[d.name] = small_candidates(d.name, source.load(d.name), d.rule, tiles[d.name])
                elif d.name not in chosen:
                    fixed += _fixed_bytes(infos[d.name].shape, infos[d.name].dtype, d.rule)
                elif d.name in batches and d.name not in shared:  # a batch weighed here
                    seeds.close()  # the last batch's seeds go
                    seeds.enter_context(kmeans_fit.remembered_seeds())
                    arrays = load(batches[d.name])
                    _warm(arrays, importance)
                    weighed = {
                        n: chunks.submit(candidates, n, a, tiles[n], importance) for n, a in arrays.items()
                    }
                    settle(lambda: {n: future.result() for n, future in weighed.items()})
        for result in pending:
            settle(result)
    tracker.close()
    if not chosen:
        raise KFormatError(
            "nothing to allocate: no tensor under the recipe's default rule is floating point, rank >= 2"
            " and >= min_elements (tensors explicit rules name keep their rule)"
        )
    options = {}
    for d in decisions:  # in the model's order
        if d.name not in found:
            continue
        if found[d.name] and not any(math.isfinite(c.error) for c in found[d.name]):
            raise QuantizationError(
                f"tensor {d.name!r}: no rule allocation weighs can hold its values (float16, and"
                " codebooks in float16: past ±65504, or every value below float16's range); give"
                f" it a rule of its own, e.g. --rule '{d.name}=raw'"
            )
        options[d.name] = found[d.name]
        if importance is not None and d.name in chosen:  # output error per unit of the layer's
            weight = importance.sensitivity(d.name)  # ... to first order
            options[d.name] = [
                Candidate(c.rule, c.bytes, _beyond_first_order(c.error) * weight) for c in found[d.name]
            ]
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
