"""The committed spec must match the code: JSON Schema and golden vectors."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest

import kformat
from kformat.io import DictSource
from kformat.reader import Container
from kformat.recipe import recipe_from_dict
from kformat.writer import pack

ROOT = Path(__file__).resolve().parent.parent
VECTORS = ROOT / "spec" / "vectors"
sys.path.insert(0, str(ROOT / "tools"))

import gen_schema  # noqa: E402
import gen_vectors  # noqa: E402


def test_committed_json_schema_matches_the_models():
    for filename, text in gen_schema.render().items():
        committed = (ROOT / "spec" / "schema" / filename).read_text()
        assert committed == text, f"spec/schema/{filename} drifted from the models: run `make schema`"


def test_every_listed_vector_is_committed():
    for name, (_recipe, layout) in gen_vectors.VECTORS.items():
        path = VECTORS / (name if layout == "sharded" else f"{name}.kf")
        assert path.exists(), f"missing golden vector {path}"


@pytest.fixture(scope="module")
def expected():
    with np.load(VECTORS / "expected.npz") as data:
        return {k: data[k] for k in data.files}


@pytest.mark.parametrize("name", list(gen_vectors.VECTORS))
def test_golden_vector_decodes_exactly(name, expected):
    layout = gen_vectors.VECTORS[name][1]
    path = VECTORS / (name if layout == "sharded" else f"{name}.kf")
    decoded = kformat.load_all(str(path))
    wanted = {k.split("/", 1)[1]: v for k, v in expected.items() if k.startswith(name + "/")}
    assert set(decoded) == set(wanted)
    for tensor, array in wanted.items():
        assert decoded[tensor].dtype == array.dtype, tensor
        assert decoded[tensor].tobytes() == array.tobytes(), f"{name}/{tensor} decodes differently"
    assert kformat.verify(str(path)) == []


@pytest.mark.parametrize("name", list(gen_vectors.VECTORS))
def test_encoder_still_produces_the_golden_values(name, expected, tmp_path):
    """Re-pack the source: the quantizer must still produce the same tensors."""
    recipe, layout = gen_vectors.VECTORS[name]
    with np.load(VECTORS / "source.npz") as data:
        source = {k: data[k] for k in data.files}
    out = tmp_path / "v"
    pack(DictSource(source), out, recipe_from_dict(recipe), layout=layout, shard_size=2048)
    golden = Container.open(str(VECTORS / (name if layout == "sharded" else f"{name}.kf")))
    fresh = Container.open(str(out))
    assert [t.rule for t in fresh.manifest.tensors] == [t.rule for t in golden.manifest.tensors]
    for tensor in source:
        assert fresh.read_tensor(tensor).tobytes() == expected[f"{name}/{tensor}"].tobytes()


def test_vector_manifest_is_plain_msgpack():
    import msgpack

    data = (VECTORS / "kmeans4.kf").read_bytes()
    length = int.from_bytes(data[16:24], "little")
    doc = msgpack.unpackb(data[64 : 64 + length])
    assert doc["format"] == "kformat" and doc["version"] == [1, 0]
    json.dumps(doc)  # JSON-compatible: no binary fields
