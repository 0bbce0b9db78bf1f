"""Mutated golden vectors give the right tensors or a KFormatError, never anything else.

The mutations and the oracle live in tools/fuzz.py, whose long run (`make fuzz`) tries many
more inputs; here hypothesis draws a fixed, derandomized sample, and one small vector is
truncated at every offset.
"""

from __future__ import annotations

import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fuzz

GOLDEN = fuzz.load_golden()
BY_NAME = {g.name: g for g in GOLDEN}
FAST = settings(
    max_examples=150, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)


@FAST
@given(
    name=st.sampled_from(sorted(BY_NAME)),
    positions=st.lists(st.integers(0, 1 << 30), min_size=1, max_size=4),
    bits=st.lists(st.integers(0, 7), min_size=4, max_size=4),
)
def test_bit_flips(name, positions, bits):
    golden = BY_NAME[name]
    data = bytearray(golden.data)
    for pos, bit in zip(positions, bits):
        data[pos % len(data)] ^= 1 << bit
    fuzz.outcome(bytes(data), golden.tensors)


@FAST
@given(
    seed=st.integers(0, 1 << 32),
    kind=st.sampled_from(["forged_blob", "forged_manifest", "forged_structure", "splice", "cut_or_repeat"]),
)
def test_forgeries_and_splices(seed, kind):
    rng = random.Random(seed)
    if kind == "splice":
        a, b = rng.sample(GOLDEN, 2)
        data, expected = fuzz.splice(a, b, rng)
    elif kind == "cut_or_repeat":
        golden = rng.choice(GOLDEN)
        data, expected = fuzz.cut_or_repeat(golden.data, rng), golden.tensors
    else:
        golden = rng.choice(GOLDEN)
        data, expected = getattr(fuzz, kind)(golden, rng), None
    fuzz.outcome(data, expected)


def test_truncation_at_every_offset():
    golden = min(GOLDEN, key=lambda g: len(g.data))
    outcomes = {fuzz.outcome(golden.data[:n], golden.tensors) for n in range(len(golden.data))}
    assert "ok" not in outcomes  # every byte up to the last blob's end is needed
    assert fuzz.outcome(golden.data, golden.tensors) == "ok"


def test_the_oracle_catches_wrong_tensors():
    """A reader that returned other weights would be caught: the oracle is not vacuous."""
    a, b = BY_NAME["kmeans1"], BY_NAME["kmeans8"]
    with pytest.raises(fuzz.Escape):
        fuzz.outcome(a.data, b.tensors)
