"""The multiple-choice knapsack under bit allocation: one candidate per tensor, least total
error within a byte budget (an exact dynamic programme over budget units)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..errors import KFormatError
from ..recipe import Rule


@dataclass(frozen=True)
class Candidate:
    rule: Rule
    bytes: float
    error: float  # relative noise power: ||W - W'||^2 / ||W||^2


# Budget units of the programme. Each tensor's size is rounded up to a unit, so the choice
# leaves up to one unit per tensor unused: with 4096 units MiniLM's 97 tensors (its 58 norm
# vectors included) left 1% of the budget, and norms stored raw or fp16 cost one unit either way.
UNITS = 1 << 16
MIN_UNITS = 1 << 12
PICKS_BYTES = 1 << 28  # the programme's choices table (a byte per tensor and unit) stays below this


def choose(options: dict[str, list[Candidate]], budget: float, units: int = UNITS) -> dict[str, Candidate]:
    """The least total error within `budget`: an exact dynamic programme over the
    multiple-choice knapsack, with sizes rounded up to budget/units (so it never overshoots,
    and loses at most one unit per tensor)."""
    names = list(options)
    smallest = sum(min(c.bytes for c in options[n]) for n in names)
    if smallest > budget:
        raise KFormatError(
            f"the target is too small: even the smallest rule for every quantizable tensor needs"
            f" {smallest / 2**20:.3f} MiB, and {max(budget, 0) / 2**20:.3f} MiB is left after the tensors the"
            " recipe keeps as they are"
        )
    units = max(MIN_UNITS, min(units, PICKS_BYTES // max(1, len(names))))  # 4,096 tensors keep them all
    unit = budget / units
    sizes = [[math.ceil(c.bytes / unit - 1e-9) for c in options[n]] for n in names]
    least = [min(s) for s in sizes]
    # Within j units the tensors so far need at least `low` of them, and those after leave
    # at most `high`: only that band of each layer is ever read (the next layer reads j - ck
    # <= its high - its least = this high), so the rest is left infinite, not computed.
    low, high = 0, units - sum(least)
    best = np.zeros(units + 1)  # best[j]: least error of the tensors so far within j units
    picks = []
    for n, size, fewest in zip(names, sizes, least):
        low, high = low + fewest, high + fewest
        # the least error within j units with this tensor's candidate k, for every j, kept
        # as a running minimum over k: the first k on ties, as an argmin over a (k, j) table
        # would pick, and 6x faster than building that table and reducing it along k
        after = np.full(units + 1, np.inf)
        pick = np.zeros(units + 1, dtype=np.uint8 if len(options[n]) <= 256 else np.int32)
        for k, (c, ck) in enumerate(zip(options[n], size)):
            first = max(ck, low)
            if first <= high:  # (high <= units: a candidate past the budget never fits)
                with_k = best[first - ck : high + 1 - ck] + c.error
                better = with_k < after[first : high + 1]
                np.copyto(after[first : high + 1], with_k, where=better)
                np.copyto(pick[first : high + 1], k, where=better)
        picks.append(pick)
        best = after
    j = int(np.argmin(best))
    if not math.isfinite(best[j]):
        raise KFormatError("the target is too small for the quantizable tensors once sizes are rounded")
    choice = {}
    for n, pick in zip(reversed(names), reversed(picks)):
        c = options[n][int(pick[j])]
        choice[n] = c
        j -= math.ceil(c.bytes / unit - 1e-9)
    return {n: choice[n] for n in names}
