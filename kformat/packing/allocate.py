"""Bit allocation: choose a rule per layer to meet a size target with the least error.

Every candidate rule of every tensor the recipe would quantize is weighed first (its bytes
and error: kformat.packing.weighing). The choice minimises

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
import time
from dataclasses import dataclass
from pathlib import Path

from ..errors import KFormatError
from ..methods import chunks, kmeans_fit
from ..recipe import Recipe, Rule
from ..progress import log
from ..sources import TensorSource
from .atomic import promote, remove_path, temp_prefix, write_errors
from .knapsack import Candidate, choose
from .reuse import Earlier
from .weighing import estimate

CLOSE_ENOUGH = 0.002  # stop once the container is within 0.2% below the target
AIM_BELOW = CLOSE_ENOUGH / 2  # the first round's budget, as a fraction of the target, below it
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


def _shifted(options: dict[str, list[Candidate]], offsets: dict[str, float]) -> dict[str, list[Candidate]]:
    """Candidates with each tensor's measured size error (real - estimated) added."""
    return {
        n: [Candidate(c.rule, max(1.0, c.bytes + offsets.get(n, 0.0)), c.error) for c in cs]
        for n, cs in options.items()
    }


def _best_uniform(options: dict[str, list[Candidate]], budget: float) -> dict[str, Candidate] | None:
    """The same rule everywhere (per tensor where a tensor lacks it), least error that fits;
    small tensors that may only go fp16 (weighing.small_candidates) take their smallest.
    Rules are tried in the order they first appear (the first wins a tie)."""
    by_tensor = []  # per tensor: its first candidate by rule, by (method, bits), or its smallest
    for cs in options.values():
        same: dict = {}
        kind: dict = {}
        for c in cs:
            same.setdefault(c.rule, c)
            kind.setdefault((c.rule.method, c.rule.bits), c)
        floats = all(c.rule.method in ("raw", "fp16") for c in cs)
        smallest = min(cs, key=lambda c: c.bytes) if floats else None
        by_tensor.append((same, kind, smallest))
    best = None
    for rule in dict.fromkeys(c.rule for cs in options.values() for c in cs):
        choice = {}
        for name, (same, kind, smallest) in zip(options, by_tensor):
            c = same.get(rule) or kind.get((rule.method, rule.bits)) or smallest
            if c is None:
                break
            choice[name] = c
        else:
            size = sum(c.bytes for c in choice.values())
            error = sum(c.error for c in choice.values())
            if size <= budget and (best is None or error < best[0]):
                best = (error, choice)
    return None if best is None else best[1]


def allocate(
    options: dict[str, list[Candidate]], fixed: float, target_bytes: int, margin: float = 0.0
) -> Allocation:
    """The least-error choice whose estimated bytes fit `margin` bytes below the target."""
    budget = target_bytes - fixed - margin
    choice = choose(options, budget)
    uniform = _best_uniform(options, budget)  # never do worse than one rule for all
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


@kmeans_fit.remembered_seeds()  # each round's fits find the seeds weighing computed
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
    from the estimates, aimed AIM_BELOW under the target; (2) when (1) misses the target or
    undershoots it, the allocation again with the estimates corrected by what (1) measured;
    when one of them came out over the target (the manifest's entries differ in size by
    rule: a few dozen bytes) and neither is within CLOSE_ENOUGH below it, the corrected
    allocation again with the overshoot and CLOSE_ENOUGH taken off the budget; (3) the best
    single rule for all tensors that the corrected estimates say fits (or nearly), and the
    best without group codebooks, each only when its estimated error is within
    UNIFORM_SLACK of the best fitting round's. A round reads back the tensors an earlier
    round packed by the same rule (kformat.packing.reuse). Of the containers that fit, the
    one with the least *measured* weighted error is renamed into place (so the result is
    never worse than a uniform choice that was tried), the others removed. Every round's
    fits find the seeds weighing computed (kmeans_fit.remembered_seeds).
    With importance, rounds are compared by their candidates' importance-weighted errors (the
    manifest's SQNRs are unweighted). Returns (report, allocation, bytes).
    """
    from ..format.constants import DEFAULT_SHARD_SIZE
    from .writer import default_jobs, pack as write

    output = Path(output)
    started = time.perf_counter()
    workers = default_jobs(jobs) if scheduler is None else 1
    with chunks.threads(workers):  # large passes on all cores, large tensors' fits in processes
        options, fixed = estimate(source, recipe, importance, progress, workers)
    log.info(
        "allocation: %d candidates of %d tensors weighed in %.1f s",
        sum(map(len, options.values())),
        len(options),
        time.perf_counter() - started,
    )
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
        # aimed a little below the target: estimates are a few tenths of a percent off either
        # way, and a first round just over it costs a second round
        first = allocate(options, fixed, target_bytes, AIM_BELOW * target_bytes)
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
        over = [size for size in sizes if size > target_bytes]
        close = [item for item in fitting if -item[1] >= target_bytes * (1 - CLOSE_ENOUGH)]
        if over and not close:  # just over, and what fits is short: with the overshoot taken off
            margin = (min(over) - target_bytes) + CLOSE_ENOUGH * target_bytes
            run(allocate(corrected, fixed, target_bytes, margin), "margin")
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
