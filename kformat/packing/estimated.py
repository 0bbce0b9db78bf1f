"""Large tensors' candidates, estimated instead of encoded (kformat.packing.weighing).

Each method reads a small summary of the tensor here, in large numpy passes that release
the GIL (k-means: its histograms and a probe of its values), and fits the summaries of a
batch of tensors together: thousands of small numpy calls that hold the GIL, fewer when
the batch's seeds are computed in one programme per width, and in a worker process when
there is a pool (kformat.packing.processes). The estimates are pure functions of the
summaries: the same numbers wherever they are fitted.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from ..methods import get_method, kmeans_fit, view_2d
from ..methods.histogram import known_range
from ..sources import TensorSource
from .encode import check_finite
from .exact import ALLOCATION_METHODS, exact_candidates, method_candidates
from .knapsack import Candidate
from .processes import run

# A part of a tensor's candidates: found here, or (method, rules, summary) to be fitted.
Part = list[Candidate] | tuple[str, list, object]


def summarized(name: str, array: np.ndarray, tile: tuple[int, int], importance=None) -> list[Part]:
    """A large tensor's candidates, per method: estimated here when the method has no summary,
    encoded for real when it has no estimate, else its summary to fit."""
    w = np.asarray(array, dtype=np.float32).reshape(view_2d(array.shape))
    span = check_finite(name, w)  # as every candidate's encode would (a NaN broke the histogram)
    with known_range(w.reshape(-1), span):  # (read once)
        return _parts(name, w, tile, importance)


def _parts(name: str, w: np.ndarray, tile: tuple[int, int], importance) -> list[Part]:
    weights = None if importance is None else importance.weights(name, w.shape)
    parts: list[Part] = []
    for method_name in ALLOCATION_METHODS:
        method = get_method(method_name)
        rules = method_candidates(method_name, w.shape[0], importance is not None)
        if not rules:
            continue
        summary = method.summarize(w, rules, tile, weights, name)
        if summary is not None:
            parts.append((method_name, rules, summary))
            continue
        estimates = method.estimate(w, rules, tile, weights)
        if estimates is None:  # no estimate: encode for real
            parts.append(
                [c for c in exact_candidates(name, w, tile, importance) if c.rule.method == method_name]
            )
        else:
            parts.append([Candidate(rule, size, error) for rule, (size, error) in zip(rules, estimates)])
    return parts


def _fit(method_name: str, items: list[tuple[object, list]]):
    """The estimates of several summaries (in a worker process) and what they share."""
    return get_method(method_name).estimate_from(items)


class Batch:
    """Large tensors summarized here whose summaries are fitted together, one task per method."""

    def __init__(self) -> None:
        self.tensors: list[tuple[str, list[Part]]] = []

    def __len__(self) -> int:
        return len(self.tensors)

    def add(self, name: str, parts: list[Part]) -> None:
        self.tensors.append((name, parts))

    def submit(self, processes=None, in_hand=None) -> Callable[[], dict[str, list[Candidate]]]:
        """Fit the batch (in a worker when there is a pool); a callable that returns every
        tensor's candidates and keeps here what the fits share (Method.reuse)."""
        items: dict[str, list] = {}
        for _, parts in self.tensors:
            for part in parts:
                if isinstance(part, tuple):
                    method_name, rules, summary = part
                    items.setdefault(method_name, []).append((summary, rules))
        tasks = {m: run(processes, _fit, m, batch, in_hand=in_hand) for m, batch in items.items()}
        tensors = self.tensors

        def result() -> dict[str, list[Candidate]]:
            fitted = {}
            for method_name, task in tasks.items():
                estimates, shared = task()
                get_method(method_name).reuse(shared)
                fitted[method_name] = iter(estimates)
            out = {}
            for name, parts in tensors:
                out[name] = []
                for part in parts:
                    if isinstance(part, list):
                        out[name] += part
                    else:
                        rules = part[1]
                        found = next(fitted[part[0]])
                        out[name] += [
                            Candidate(rule, size, error) for rule, (size, error) in zip(rules, found)
                        ]
            return out

        return result


_source: TensorSource | None = None  # a worker's source and importance (adopt, at its start)
_importance = None


def adopt(source: TensorSource, importance) -> None:
    """A worker process's first step: the source it reads large tensors from (inherited)."""
    global _source, _importance
    _source, _importance = source, importance


def weighed_in_worker(names: list[str], tiles: dict):
    """weighed_where_read in a worker process, from the source it adopted."""
    return weighed_where_read(_source, names, tiles, _importance)


def weighed_where_read(source: TensorSource, names: list[str], tiles: dict, importance):
    """Large tensors read, summarized and fitted in one process: their candidates, and the
    seeds and whole tensors' histograms the fits kept, for the encodes of the process that
    asked (kmeans_fit.keep_seeds, keep_histograms). In a worker that reads the tensors
    itself (a forkable source), no summary crosses a pipe: an all-MiniLM-L6-v2-shaped
    model's were 122 MB pickled, read and unpickled, beside their making in the parent."""
    with kmeans_fit.remembered_seeds():
        batch = Batch()
        for name in names:
            batch.add(name, summarized(name, np.asarray(source.load(name)), tiles[name], importance))
        found = batch.submit()()
        return found, kmeans_fit.seeds_kept(), kmeans_fit.histograms_kept()


def estimated_candidates(
    name: str, array: np.ndarray, tile: tuple[int, int], importance=None
) -> list[Candidate]:
    """A large tensor's candidates, estimated in this process."""
    batch = Batch()
    batch.add(name, summarized(name, array, tile, importance))
    return batch.submit()()[name]
