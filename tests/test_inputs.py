"""Input formats beyond single files: Hugging Face sharded checkpoints, ONNX, GGUF."""

import json

import numpy as np
import pytest

import kformat
from kformat.errors import InputError
from kformat.sources import open_source

ml_dtypes = pytest.importorskip("ml_dtypes")
safetensors_numpy = pytest.importorskip("safetensors.numpy")


def _bf16(rng, shape):
    return rng.standard_normal(shape).astype(np.float32).astype(ml_dtypes.bfloat16)


@pytest.fixture
def hf_checkpoint(tmp_path):
    """A two-shard bf16 checkpoint as transformers' save_pretrained lays it out."""
    rng = np.random.default_rng(0)
    shards = {
        "model-00001-of-00002.safetensors": {
            "embed.weight": _bf16(rng, (64, 32)),
            "layer.0.w": _bf16(rng, (32, 32)),
        },
        "model-00002-of-00002.safetensors": {"layer.1.w": _bf16(rng, (32, 32)), "norm": _bf16(rng, (32,))},
    }
    directory = tmp_path / "ckpt"
    directory.mkdir()
    weight_map = {}
    for file, tensors in shards.items():
        safetensors_numpy.save_file(tensors, str(directory / file), metadata={"format": "pt"})
        weight_map.update({name: file for name in tensors})
    index = {"metadata": {"total_size": 12345}, "weight_map": weight_map}
    (directory / "model.safetensors.index.json").write_text(json.dumps(index))
    return directory, {k: v for t in shards.values() for k, v in t.items()}


@pytest.mark.parametrize("as_index", [False, True])
def test_hf_sharded_checkpoint_packs_raw_and_unpacks_bit_exact_bf16(tmp_path, hf_checkpoint, as_index):
    directory, tensors = hf_checkpoint
    source = directory / "model.safetensors.index.json" if as_index else directory
    report = kformat.pack(source, tmp_path / "m.kf", "raw")
    assert report.manifest.metadata["hf.total_size"] == "12345"
    assert report.manifest.metadata["format"] == "pt"
    kformat.unpack(str(tmp_path / "m.kf"), tmp_path / "out.safetensors")
    from safetensors import safe_open

    with safe_open(str(tmp_path / "out.safetensors"), framework="np") as back:
        assert sorted(back.keys()) == sorted(tensors)
        for name in tensors:
            assert back.get_slice(name).get_dtype() == "BF16"
    loaded = kformat.load_all(str(tmp_path / "m.kf"))
    for name, array in tensors.items():
        assert loaded[name].dtype == array.dtype
        assert loaded[name].tobytes() == array.tobytes()
    summary = kformat.inspect(str(source))
    assert summary["totals"]["tensors"] == 4


def test_hf_index_naming_a_shard_outside_the_directory_is_refused(hf_checkpoint):
    directory, _ = hf_checkpoint
    index_path = directory / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    index["weight_map"]["norm"] = "../elsewhere.safetensors"
    index_path.write_text(json.dumps(index))
    with pytest.raises(InputError, match="plain"):
        open_source(directory)


def test_hf_index_listing_a_missing_tensor_or_shard_is_refused(hf_checkpoint):
    directory, _ = hf_checkpoint
    index_path = directory / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    index["weight_map"]["ghost"] = "model-00001-of-00002.safetensors"
    index_path.write_text(json.dumps(index))
    with pytest.raises(InputError, match="ghost"):
        open_source(index_path)
    index["weight_map"] = {"norm": "model-00009-of-00009.safetensors"}
    index_path.write_text(json.dumps(index))
    with pytest.raises(InputError, match="missing"):
        open_source(index_path)
    index_path.write_text("{not json")
    with pytest.raises(InputError, match="JSON"):
        open_source(index_path)


def test_directory_without_checkpoint_is_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(InputError, match="not a Hugging Face checkpoint"):
        open_source(tmp_path)


# -- ONNX ---------------------------------------------------------------------------------------
onnx = pytest.importorskip("onnx")


def _onnx_model(path, weight):
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["y0"]), helper.make_node("Add", ["y0", "B"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, weight.shape[0]])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, weight.shape[1]])],
        [
            numpy_helper.from_array(weight, "W"),
            numpy_helper.from_array(np.ones(weight.shape[1], np.float32), "B"),
        ],
    )
    model = helper.make_model(graph, producer_name="kformat-test")
    onnx.save(model, str(path), save_as_external_data=True, location="model.onnx.data", size_threshold=1024)


def test_onnx_initializers_with_external_data_pack_and_compare(tmp_path):
    weight = np.random.default_rng(1).standard_normal((64, 128)).astype(np.float32)
    _onnx_model(tmp_path / "model.onnx", weight)
    assert (tmp_path / "model.onnx.data").stat().st_size >= weight.nbytes
    kformat.pack(tmp_path / "model.onnx", tmp_path / "m.kf", "raw")
    loaded = kformat.load_all(str(tmp_path / "m.kf"))
    np.testing.assert_array_equal(loaded["W"], weight)
    result = kformat.compare(tmp_path / "model.onnx", tmp_path / "m.kf")
    assert not result.problems and all(t.exact for t in result.tensors)
    assert kformat.inspect(str(tmp_path / "model.onnx"))["totals"]["container_bytes"] > weight.nbytes


def test_onnx_external_data_outside_the_model_directory_is_refused(tmp_path):
    weight = np.zeros((64, 128), np.float32)
    (tmp_path / "inner").mkdir()
    path = tmp_path / "inner" / "model.onnx"
    _onnx_model(path, weight)
    model = onnx.load(str(path), load_external_data=False)  # then point W's data outside
    for entry in model.graph.initializer[0].external_data:
        if entry.key == "location":
            entry.value = "../outside.data"
    (tmp_path / "outside.data").write_bytes(bytes(weight.nbytes))
    path.write_bytes(model.SerializeToString())
    source = open_source(tmp_path / "inner" / "model.onnx")
    with pytest.raises(InputError, match="inside the model's directory"):
        source.load("W")


def test_corrupt_onnx_is_an_input_error(tmp_path):
    (tmp_path / "bad.onnx").write_bytes(b"\xff\xff\xff\x0fnot a protobuf")
    with pytest.raises(InputError, match="ONNX"):
        open_source(tmp_path / "bad.onnx")


# -- GGUF ---------------------------------------------------------------------------------------
gguf = pytest.importorskip("gguf")


def test_gguf_float_and_quantized_tensors_and_metadata(tmp_path):
    rng = np.random.default_rng(2)
    weight = rng.standard_normal((32, 256)).astype(np.float32)
    writer = gguf.GGUFWriter(str(tmp_path / "m.gguf"), "llama")
    writer.add_string("general.name", "tiny")
    writer.add_uint32("llama.block_count", 2)
    writer.add_tensor("f32", weight)
    writer.add_tensor("f16", weight.astype(np.float16))
    q4 = gguf.quants.quantize(weight, gguf.GGMLQuantizationType.Q4_0)
    writer.add_tensor("q4", q4, raw_shape=q4.shape, raw_dtype=gguf.GGMLQuantizationType.Q4_0)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()

    report = kformat.pack(tmp_path / "m.gguf", tmp_path / "m.kf", "raw")
    assert report.manifest.metadata["gguf.general.name"] == "tiny"
    assert report.manifest.metadata["gguf.llama.block_count"] == "2"
    loaded = kformat.load_all(str(tmp_path / "m.kf"))
    np.testing.assert_array_equal(loaded["f32"], weight)
    assert loaded["f16"].dtype == np.float16
    np.testing.assert_array_equal(loaded["q4"], gguf.quants.dequantize(q4, gguf.GGMLQuantizationType.Q4_0))
    assert loaded["q4"].shape == weight.shape
    result = kformat.compare(tmp_path / "m.gguf", tmp_path / "m.kf")
    assert not result.problems and all(t.exact for t in result.tensors)


def test_truncated_gguf_is_an_input_error(tmp_path):
    (tmp_path / "bad.gguf").write_bytes(b"GGUF\x03\x00\x00\x00" + b"\xff" * 7)
    with pytest.raises(InputError, match="GGUF"):
        open_source(tmp_path / "bad.gguf")
