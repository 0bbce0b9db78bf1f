"""The committed spec must match the code: JSON Schema, and golden vectors that the writer
still produces byte for byte (decoding them is tests/test_conformance.py's job)."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest

import kformat

ROOT = Path(__file__).resolve().parent.parent
SUITE = ROOT / "spec" / "conformance"
VECTORS = SUITE / "vectors"
sys.path.insert(0, str(ROOT / "tools"))

import gen_schema  # noqa: E402
import gen_vectors  # noqa: E402


def test_committed_json_schema_matches_the_models():
    for filename, text in gen_schema.render().items():
        committed = (ROOT / "spec" / "schema" / filename).read_text()
        assert committed == text, f"spec/schema/{filename} drifted from the models: run `make schema`"


def test_every_listed_vector_is_committed():
    for name in gen_vectors.VECTORS:
        path = SUITE / gen_vectors.vector_path(name)
        assert path.exists(), f"missing golden vector {path}"


def _files(path):
    if path.is_dir():
        return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}
    return {"": path.read_bytes()}


@pytest.mark.parametrize("name", list(gen_vectors.VECTORS))
def test_encoder_still_writes_the_golden_bytes(name, tmp_path, monkeypatch):
    """Re-pack the source with the vector's recipe: every byte of every file must be the same,
    so any change of quantizer, codec, manifest layout or writer shows up here."""
    monkeypatch.setattr(gen_vectors, "SUITE", tmp_path)
    with np.load(VECTORS / "source.npz") as data:
        source = {k: data[k] for k in data.files}
    fresh = gen_vectors.write(name, source)
    golden = SUITE / gen_vectors.vector_path(name)
    assert _files(fresh) == _files(golden), f"{name}: the writer no longer produces the golden bytes"
    assert kformat.verify(str(golden)) == []


def test_vector_manifest_is_plain_msgpack():
    import msgpack

    data = (VECTORS / "kmeans4.kf").read_bytes()
    length = int.from_bytes(data[16:24], "little")
    doc = msgpack.unpackb(data[64 : 64 + length])
    assert doc["format"] == "kformat" and doc["version"] == [1, 0]
    json.dumps(doc)  # JSON-compatible: no binary fields
