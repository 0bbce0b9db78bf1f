"""Allocation's rounds read back tensors an earlier round packed by the same rule: the
output is byte-identical to encoding them again, and they are not encoded again."""

import numpy as np
import pytest

from kformat.packing import local, writer
from kformat.packing.reuse import Earlier
from kformat.recipe import parse_rule
from kformat.recipe.recipe import load_recipe
from kformat.sources import DictSource


def model():
    rng = np.random.default_rng(5)
    return {
        "a.weight": (rng.standard_normal((96, 200)) * 0.05).astype(np.float32),
        "b.weight": rng.laplace(size=(130, 70)).astype(np.float32),
        "c.weight": (rng.standard_normal((40, 33)) * np.exp(rng.standard_normal((40, 1)))).astype(np.float32),
        "c.bias": rng.standard_normal(40).astype(np.float32),
    }


def assigned(rules: dict[str, str]):
    return {name: (parse_rule(text), "allocated") for name, text in rules.items()}


FIRST = {"a.weight": "kmeans:4", "b.weight": "kmeans:3,group=64", "c.weight": "kmeans:5,scale=row"}
SECOND = {**FIRST, "b.weight": "kmeans:6"}


@pytest.mark.parametrize("layout", ["single", "sharded"])
def test_a_round_that_reads_back_writes_the_same_bytes_and_encodes_only_what_changed(
    tmp_path, monkeypatch, layout
):
    source, recipe = DictSource(model()), load_recipe("fp16")

    def pack(path, rules, earlier=None):
        writer.pack(
            source,
            path,
            recipe,
            layout=layout,
            shard_size=20_000,
            jobs=2,
            assigned=assigned(rules),
            earlier=earlier,
        )

    pack(tmp_path / "first", FIRST)
    pack(tmp_path / "fresh", SECOND)
    encoded = []
    real = local.encode_blobs
    monkeypatch.setattr(
        local, "encode_blobs", lambda name, *a, **k: encoded.append(name) or real(name, *a, **k)
    )
    with Earlier() as earlier:
        earlier.add(tmp_path / "first")
        pack(tmp_path / "reused", SECOND, earlier)
    assert encoded == ["b.weight"]  # the one tensor whose rule changed
    assert contents(tmp_path / "reused") == contents(tmp_path / "fresh")


def contents(path):
    """Every file's bytes, by its path inside the output (a single file: one entry)."""
    if path.is_file():
        return {"": path.read_bytes()}
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}
