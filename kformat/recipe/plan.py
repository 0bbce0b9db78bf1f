"""Planning: the rule each tensor of a source gets under a recipe, and why."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..codecs import get_codec
from ..format.dtypes import is_float
from ..methods import get_method
from .presets import PRESETS
from .recipe import Recipe, load_recipe
from .rules import Rule


@dataclass(frozen=True)
class Decision:
    """What the planner chose for one tensor, and why."""

    name: str
    rule: Rule
    reason: str  # which entry matched, or why the rule was replaced


def is_float_dtype(dtype: np.dtype) -> bool:
    return is_float(dtype)


def plan(
    recipe: Recipe, tensors: list[tuple[str, tuple[int, ...], np.dtype]]
) -> tuple[list[Decision], list[str]]:
    """Choose a rule for every tensor (in file order); also list entries that matched nothing."""
    seen = [0] * len(recipe.rules)
    used = [False] * len(recipe.rules)
    largest = {}  # entry index -> the name of the largest tensor it selects (first on ties)
    for i, entry in enumerate(recipe.rules):
        if entry.largest:
            sizes = [
                (math.prod(shape), -k, name)
                for k, (name, shape, _) in enumerate(tensors)
                if entry.selects(name, tuple(shape))
            ]
            largest[i] = max(sizes)[2] if sizes else None
    decisions = []
    for name, shape, dtype in tensors:
        chosen, reason = recipe.default, "default"
        for i, entry in enumerate(recipe.rules):
            if not entry.selects(name, tuple(shape)):
                continue
            position = seen[i]
            seen[i] += 1
            if entry.nth is not None and entry.nth != position:
                continue
            if entry.largest and largest[i] != name:
                continue
            chosen, reason = entry.rule, f"rules[{i}] ({entry.match})"
            used[i] = True
            break
        decisions.append(_eligible(name, shape, dtype, chosen, reason, recipe))
    generic = _generic(recipe)
    unmatched = [
        f"rules[{i}] (match={e.match!r}"
        + (f", ndim={e.ndim}" if e.ndim is not None else "")
        + (f", role={e.role}" if e.role is not None else "")
        + (f", nth={e.nth}" if e.nth is not None else "")
        + (", largest" if e.largest else "")
        + ") matched no tensor"
        for i, (e, u) in enumerate(zip(recipe.rules, used))
        if not u and e not in generic
    ]
    return decisions, unmatched


def _generic(recipe: Recipe) -> list:
    """The entries `recipe` has from the preset it is named after: written for any
    architecture (q4's depthwise and embedding rules on VGG16, its conv rule on a
    transformer), they match nothing on many models, which is no mistake to warn of."""
    return load_recipe(recipe.name).rules if recipe.name in PRESETS else []


def _eligible(name, shape, dtype, rule: Rule, reason: str, recipe: Recipe) -> Decision:
    """Replace a lossy rule where it does not apply (integers, tiny tensors, vectors)."""
    size = int(np.prod(shape, dtype=np.int64))
    keep_codec = rule.codec is not None and get_codec(rule.codec).supports_values
    raw = Rule(method="raw", codec=rule.codec if keep_codec else None)
    method = get_method(rule.method)
    if method.lossless:
        return Decision(name, rule, reason)
    if not is_float_dtype(dtype):
        return Decision(name, raw, f"{reason}; stored raw: {np.dtype(dtype).name} is not floating point")
    if size < recipe.min_elements:
        return Decision(
            name, raw, f"{reason}; stored raw: {size} elements < min_elements {recipe.min_elements}"
        )
    if not method.codes and method.storage(np.dtype(dtype).name) == np.dtype(dtype).name:
        return Decision(name, raw, f"{reason}; stored raw: already {np.dtype(dtype).name}")
    if rule.quantized and len(shape) < 2:
        fp16 = Rule(method="fp16") if np.dtype(dtype) != np.float16 else raw
        return Decision(name, fp16, f"{reason}; {fp16.method}: {rule.method} applies to rank >= 2 only")
    return Decision(name, rule, reason)
