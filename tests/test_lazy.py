"""The lazy loader, the same suite on file://, memory:// and http:// (nginx), single and sharded."""

import numpy as np
import pytest

import kformat
from kformat.errors import InputError, NotFound, StorageError
from kformat.format.header import decode_header
from kformat.loading.container import OPEN_READ
from kformat.format.constants import HEADER_SIZE, MANIFEST_NAME

LAYOUTS = {"single": "model.kf", "sharded": "model/"}


@pytest.fixture(params=list(LAYOUTS))
def url(request, served):
    return served.url(LAYOUTS[request.param])


def manifest_bytes(packed, layout: str) -> int:
    path = packed.root / ("model.kf" if layout == "single" else f"model/{MANIFEST_NAME}")
    header = decode_header(path.read_bytes()[:HEADER_SIZE], str(path))
    return HEADER_SIZE + header.manifest_length


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_open_reads_the_header_and_manifest_only(served, packed, layout):
    with kformat.open(served.url(LAYOUTS[layout])) as model:
        assert model.requests == (
            1 if layout == "sharded" else 1 + (manifest_bytes(packed, layout) > OPEN_READ)
        )
        assert model.bytes_read <= max(OPEN_READ, manifest_bytes(packed, layout))
        assert list(model) == list(packed.expected)


def test_numpy_gives_the_packed_values(url, packed):
    with kformat.open(url) as model:
        assert len(model) == len(packed.expected)
        for name, expected in packed.expected.items():
            tensor = model[name]
            got = tensor.numpy()
            assert got.dtype == expected.dtype == tensor.dtype
            assert tensor.shape == expected.shape and tensor.nbytes == expected.nbytes
            assert np.array_equal(got, expected)
            assert np.array_equal(np.asarray(tensor), expected)


@pytest.mark.parametrize("columns", [None, 1, 3])
def test_matmul_is_the_product_with_the_dequantized_weight(url, packed, columns):
    rng = np.random.default_rng(1)
    with kformat.open(url) as model:
        for name in ("features.0.weight", "fc1.weight", "fc2.weight", "fc1.bias"):
            tensor = model[name]
            rows, cols = tensor.view
            x = rng.standard_normal(cols if columns is None else (cols, columns)).astype(np.float32)
            w = packed.expected[name].reshape(rows, cols).astype(np.float64)
            got = tensor.matmul(x)
            want = w @ x
            assert got.shape == want.shape and got.dtype == np.float32
            assert np.allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max()), name
            assert np.allclose(
                tensor.quantized(packed=True).matmul(x), want, rtol=1e-5, atol=1e-5 * np.abs(want).max()
            )


def test_matmul_names_the_tensor_on_a_wrong_shape(url):
    with kformat.open(url) as model:
        with pytest.raises(InputError, match=r"'fc1.weight'.*520 rows.*\(519,\)"):
            model["fc1.weight"].matmul(np.zeros(519, np.float32))
        with pytest.raises(InputError, match="1-D or 2-D"):
            model["fc1.weight"].matmul(np.zeros((520, 1, 1), np.float32))


def test_quantized_is_compact_and_exact(url, packed):
    with kformat.open(url) as model:
        fc1 = model["fc1.weight"]
        plain, bits = fc1.quantized(), fc1.quantized(packed=True)
        assert plain.method == "kmeans" and plain.bits == 4 and plain.codes.dtype == np.uint8
        assert plain.codes.shape == fc1.view and bits.codes.shape == (300, 260)
        assert bits.nbytes < plain.nbytes < fc1.nbytes / 3
        assert np.array_equal(plain.dequantize(), packed.expected["fc1.weight"])
        assert np.array_equal(bits.dequantize(), packed.expected["fc1.weight"])
        fc2 = model["fc2.weight"].quantized(packed=True)
        assert fc2.method == "linear" and fc2.scale.shape == (10,) and fc2.codebook is None
        assert np.array_equal(fc2.dequantize(), packed.expected["fc2.weight"])
        conv = model["features.0.weight"].quantized()
        assert conv.method == "fp16" and conv.values.dtype == np.float16 and conv.codes is None
        assert np.array_equal(conv.dequantize(), packed.expected["features.0.weight"])


def test_stream_yields_in_file_order_and_in_a_given_order(url, packed):
    with kformat.open(url) as model:
        assert [name for name, _ in model.stream()] == list(packed.expected)
        chosen = ["fc2.weight", "fc1.weight", "fc1.bias"]
        for name, tensor in model.stream(chosen):
            assert np.array_equal(tensor.numpy(), packed.expected[name])
        assert [name for name, _ in model.stream(chosen)] == chosen
        with pytest.raises(NotFound, match="no tensor named 'nope'"):
            list(model.stream(["fc1.weight", "nope"]))


def test_loading_one_layer_fetches_only_its_blobs(url):
    with kformat.open(url) as model:
        opened = model.bytes_read
        fc1 = model["fc1.weight"]
        fc1.numpy()
        # Blobs are 64-byte aligned, so merged ranges may include up to 63 bytes of padding each.
        blobs = len(fc1.entry.tiles) + 1
        assert fc1.stored_nbytes <= model.bytes_read - opened <= fc1.stored_nbytes + 64 * blobs


def test_a_model_is_a_read_only_mapping(url):
    with kformat.open(url) as model:
        assert "fc1.weight" in model and "nope" not in model
        assert model.get("nope") is None
        with pytest.raises(KeyError):
            model["nope"]
        with pytest.raises(NotFound, match="no tensor named 'nope'"):
            model["nope"]
        assert "LazyTensor('fc1.weight'" in repr(model["fc1.weight"])
        with pytest.raises(TypeError):
            model["fc1.weight"] = None


def test_a_closed_model_refuses_to_read(url):
    model = kformat.open(url)
    tensor = model["fc2.weight"]
    stream = model.stream()
    next(stream)
    model.close()
    assert model.closed
    with pytest.raises(StorageError, match="closed"):
        tensor.numpy()


def test_a_stream_abandoned_midway_leaves_nothing_running(url, packed):
    with kformat.open(url) as model:
        for name, tensor in model.stream():
            if name == "fc1.weight":
                break
        assert model.container._stream._prefetched == {}
        assert np.array_equal(model["fc2.weight"].numpy(), packed.expected["fc2.weight"])


def test_small_batches_stream_the_same_values(served, packed):
    with kformat.open(served.url("model.kf"), batch_bytes=1) as model:
        for name, tensor in model.stream():
            assert np.array_equal(tensor.numpy(), packed.expected[name])


def test_slicing_reads_only_the_tiles_it_needs(tmp_path):
    rng = np.random.default_rng(0)
    weights = {
        "w": rng.standard_normal((700, 900)).astype(np.float32),
        "v": rng.standard_normal(5000).astype(np.float32),
        "c": rng.standard_normal((40, 8, 3, 3)).astype(np.float32),
        "r": np.arange(20000, dtype=np.int64).reshape(100, 200),
    }
    path = tmp_path / "s.kf"
    kformat.pack(
        weights,
        path,
        kformat.Recipe(default=kformat.parse_rule("kmeans:4"), tile=(128, 256)),
        rules=["r=raw"],
    )
    full = kformat.load_all(str(path))
    keys = [
        ("w", (slice(10, 300), slice(100, 500))),
        ("w", 5),
        ("w", (slice(None), 3)),
        ("w", (-1, -1)),
        ("v", slice(100, 4000)),
        ("c", slice(3, 9)),
        ("r", (slice(10, 20), slice(5, 150))),
        ("w", (slice(0, 700, 2),)),
        ("w", np.array([1, 2])),
    ]
    with kformat.open(str(path)) as model:
        for name, key in keys:
            got, want = model[name][key], full[name][key]
            assert got.shape == want.shape and np.array_equal(got, want), (name, key)
    with kformat.open(str(path)) as model:
        w = model["w"]
        one_tile = w.entry.tiles[0].blob.length + w.entry.quant.codebook.blob.length
        before = model.bytes_read
        w[0:10, 0:100]  # inside the first 128 x 256 tile
        assert model.bytes_read - before <= one_tile + 4096  # that tile and the codebook (merged range)
        with pytest.raises(IndexError):
            w[700]
