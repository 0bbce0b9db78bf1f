"""kformat.torch: save, layer-by-layer load_state_dict, compact QuantizedLinear layers."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import kformat  # noqa: E402
import kformat.torch as kt  # noqa: E402
from kformat.errors import InputError  # noqa: E402


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3)
        self.bn = torch.nn.BatchNorm1d(200)
        self.head = torch.nn.Sequential(
            torch.nn.Linear(8 * 36, 200), torch.nn.ReLU(), torch.nn.Linear(200, 10)
        )

    def forward(self, x):
        x = torch.relu(self.conv(x)).flatten(1)
        return self.head[2](self.head[1](self.bn(self.head[0](x))))


@pytest.fixture
def net():
    torch.manual_seed(0)
    model = Net().eval()
    model.bn.running_mean.uniform_(-0.1, 0.1)
    model.bn.num_batches_tracked.fill_(3)
    return model


def state_arrays(module):
    return {k: v.detach().numpy().copy() for k, v in module.state_dict().items()}


@pytest.mark.parametrize("recipe", ["raw", "fp16"])
def test_save_then_unpack_gives_the_state_dict_back(tmp_path, net, recipe):
    kt.save(net, tmp_path / "m.kf", recipe=recipe)
    back = kformat.load_all(str(tmp_path / "m.kf"))
    for name, value in state_arrays(net).items():
        expected = (
            value
            if recipe == "raw" or value.dtype != np.float32 or value.size < 1024
            else value.astype(np.float16).astype(np.float32)
        )
        assert back[name].dtype == expected.dtype and np.array_equal(back[name], expected), name


@pytest.mark.parametrize("layout", ["single", "sharded"])
def test_load_state_dict_fills_a_meta_module(tmp_path, net, layout):
    out = tmp_path / ("m.kf" if layout == "single" else "m")
    kt.save(
        net.state_dict(), out, recipe="mobile", rules=["head.0.weight=kmeans:4,tile=64x100"], layout=layout
    )
    with torch.device("meta"):
        fresh = Net().eval()
    assert kt.load_state_dict(fresh, str(out)) == ([], [])
    expected = kformat.load_all(str(out))
    for name, value in fresh.state_dict().items():
        assert not value.is_meta and np.array_equal(value.numpy(), expected[name]), name
    assert isinstance(fresh.head[0].weight, torch.nn.Parameter)


def test_load_state_dict_into_an_existing_module_keeps_its_tensors(tmp_path, net):
    kt.save(net, tmp_path / "m.kf", recipe="kmeans8")
    other = Net()
    weight = other.head[0].weight
    kt.load_state_dict(other, str(tmp_path / "m.kf"))
    assert other.head[0].weight is weight  # filled in place, tile by tile
    assert np.array_equal(weight.detach().numpy(), kformat.load_all(str(tmp_path / "m.kf"))["head.0.weight"])


def test_load_state_dict_into_a_half_module_converts_every_tensor(tmp_path, net):
    """Parameters that cannot take float32 tiles (float16 here) get the decoded values
    copied in, mixed with tensors in file order that decode straight into their storage."""
    kt.save(net, tmp_path / "m.kf", recipe="mobile")
    half = Net().half()
    half.head[0].float()  # one layer float32: decoded straight into its storage
    kt.load_state_dict(half, str(tmp_path / "m.kf"))
    expected = kformat.load_all(str(tmp_path / "m.kf"))
    for name, value in half.state_dict().items():
        want = torch.from_numpy(np.asarray(expected[name], order="C")).to(value.dtype)
        assert torch.equal(value, want), name
    assert half.head[0].weight.dtype == torch.float32 and half.head[2].weight.dtype == torch.float16


def test_mismatched_modules_are_named(tmp_path, net):
    kt.save(net, tmp_path / "m.kf", recipe="fp16")
    small = torch.nn.Sequential(torch.nn.Linear(4, 4))
    with pytest.raises(
        InputError, match=r"missing from the file: 0.weight, 0.bias; not in the module: conv.weight"
    ):
        kt.load_state_dict(small, str(tmp_path / "m.kf"))
    missing, unexpected = kt.load_state_dict(small, str(tmp_path / "m.kf"), strict=False)
    assert missing == ["0.weight", "0.bias"] and "conv.weight" in unexpected
    wrong = Net()
    wrong.head[2] = torch.nn.Linear(200, 11)
    with pytest.raises(
        InputError, match=r"'head.2.weight': the module wants shape \[11, 200\], the file has \[10, 200\]"
    ):
        kt.load_state_dict(wrong, str(tmp_path / "m.kf"))


@pytest.mark.parametrize("packed", [True, False])
def test_quantized_linear_layers_match_the_dequantized_model(tmp_path, net, packed):
    kt.save(net, tmp_path / "m.kf", recipe="mobile", rules=["head.2.weight=linear:8,row"])
    dense = Net().eval()
    kt.load_state_dict(dense, str(tmp_path / "m.kf"))
    with torch.device("meta"):
        compact = Net().eval()
    kt.load_quantized(compact, str(tmp_path / "m.kf"), packed=packed)
    assert isinstance(compact.head[0], kt.QuantizedLinear) and isinstance(compact.head[2], kt.QuantizedLinear)
    assert compact.head[0].codes.dtype == torch.uint8
    assert compact.head[0].codes.shape == ((200, 144) if packed else (200, 288))  # 4-bit codes
    assert "kmeans:4" in repr(compact.head[0])
    compact_bytes = sum(b.nbytes for b in compact.head[0].buffers())
    assert compact_bytes < dense.head[0].weight.nbytes / (7 if packed else 3.5)
    x = torch.randn(5, 3, 8, 8)
    with torch.no_grad():
        want, got = dense(x), compact(x)
    assert torch.allclose(got, want, rtol=1e-5, atol=1e-5 * want.abs().max().item())
    with pytest.raises(RuntimeError, match="no_grad"):
        compact.head[0](torch.randn(2, 288, requires_grad=True))


def test_load_state_dict_over_http(nginx, packed):
    class Small(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1 = torch.nn.Linear(520, 300)
            self.fc2 = torch.nn.Linear(300, 10)

    with torch.device("meta"):
        module = Small()
    missing, unexpected = kt.load_state_dict(module, nginx.url("model/"), strict=False)
    assert missing == [] and set(unexpected) == {
        "features.0.weight",
        "features.0.bias",
        "bn.num_batches_tracked",
    }
    assert np.array_equal(module.fc1.weight.detach().numpy(), packed.expected["fc1.weight"])


@pytest.mark.parametrize(
    "rule", ["kmeans:4", "linear:8,row", "kmeans:3,group=100,scale=row", "kmeans:8,group=300", "kmeans:2"]
)
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_a_quantized_linear_of_many_bands_on_torch_s_threads(tmp_path, threads, rule):
    """A layer of several bands is cut in one part per torch thread, each dequantized band by
    band and multiplied by torch: the output of the dequantized model, for any thread count."""
    head = torch.nn.Sequential(torch.nn.Linear(4096, 700))  # 4 MiB bands of 256 rows: three
    torch.nn.init.normal_(head[0].weight, std=0.02)
    kt.save(head, tmp_path / "m.kf", rules=[f"0.weight={rule}", "0.bias=fp16"])
    dense = torch.nn.Sequential(torch.nn.Linear(4096, 700))
    kt.load_state_dict(dense, str(tmp_path / "m.kf"))
    with torch.device("meta"):
        compact = torch.nn.Sequential(torch.nn.Linear(4096, 700))
    kt.load_quantized(compact, str(tmp_path / "m.kf"))
    assert isinstance(compact[0], kt.QuantizedLinear)
    x = torch.randn(6, 4096)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.no_grad():
            want, got = dense(x), compact(x)
    finally:
        torch.set_num_threads(before)
    assert got.shape == want.shape and got.is_contiguous()
    assert torch.allclose(got, want, rtol=1e-5, atol=1e-5 * want.abs().max().item())


@pytest.mark.parametrize("width", [1, 2, 4])
@pytest.mark.parametrize("writeable", [True, False])
@pytest.mark.parametrize("run", [1 << 19, 1000])
def test_torch_s_gather_gives_np_take_s_bits(width, writeable, run, monkeypatch):
    """QuantizedLinear's whole-byte lookups gather through torch.index_select (4- and 8-byte
    entries, as integers; the indices in runs) or np.take (other widths, read-only indices):
    the same bits either way, NaN payloads included."""
    from kformat import torch_linear
    from kformat.methods.base import take_rows
    from kformat.torch_linear import torch_take

    monkeypatch.setattr(torch_linear, "GATHER_INDICES", run)  # 1000: four runs of the 3737
    if writeable and width < 4:  # torch's own gather, never np.take's
        monkeypatch.setattr(torch_linear, "take_rows", None)

    rng = np.random.default_rng(width)
    bits = rng.integers(0, 2**32, 256 * width, dtype=np.uint32)
    bits[:width] = 0x7FA00001  # a signalling NaN's pattern, which a float move could quieten
    table = bits.view(np.dtype((np.void, 4 * width)))
    indices = rng.integers(0, 256, (37, 101), dtype=np.uint8)
    indices.setflags(write=writeable)
    want = take_rows(table, indices, np.empty(indices.shape, table.dtype))
    got = torch_take(torch)(table, indices, np.empty(indices.shape, table.dtype))
    assert got.tobytes() == want.tobytes()


@pytest.mark.parametrize(
    "rule",
    [
        "kmeans:4",
        "kmeans:4,group=64,scale=row",
        "kmeans:4,ecq=0.25",
        "kmeans:8",
        "kmeans:8,group=64,scale=row",
    ],
)
@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("cols", [4096, 1001])  # (an odd width: a half byte ends each row)
def test_a_single_input_row_is_multiplied_from_the_packed_codes(tmp_path, rule, threads, cols, monkeypatch):
    """Batch 1 through 4- and 8-bit codes: the C loops' product straight from the codes
    (where built, on AVX2 or AVX-512), the dequantized model's output to float32 rounding;
    with the C loops passed over, the bands as before."""
    from kformat import torch_linear
    from kformat.methods import kernels

    head = torch.nn.Sequential(torch.nn.Linear(cols, 700))
    torch.nn.init.normal_(head[0].weight, std=0.02)
    kt.save(head, tmp_path / "m.kf", rules=[f"0.weight={rule}", "0.bias=fp16"])
    dense = torch.nn.Sequential(torch.nn.Linear(cols, 700))
    kt.load_state_dict(dense, str(tmp_path / "m.kf"))
    with torch.device("meta"):
        compact = torch.nn.Sequential(torch.nn.Linear(cols, 700))
    kt.load_quantized(compact, str(tmp_path / "m.kf"))
    x = torch.randn(1, cols)
    direct = []
    original = torch_linear.packed_matvec
    monkeypatch.setattr(torch_linear, "packed_matvec", lambda *a: direct.append(original(*a)) or direct[-1])
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.no_grad():
            want, got = dense(x), compact(x)
            monkeypatch.setenv("KFORMAT_C_KERNELS", "0")
            banded = compact(x)
    finally:
        torch.set_num_threads(before)
    assert got.shape == want.shape == (1, 700)
    assert torch.allclose(got, want, rtol=1e-5, atol=1e-5 * want.abs().max().item())
    assert torch.allclose(banded, want, rtol=1e-5, atol=1e-5 * want.abs().max().item())
    assert direct[-1] is None  # (passed over)
    monkeypatch.delenv("KFORMAT_C_KERNELS")
    if kernels.c_loops() is None:
        pytest.skip("the C loops were not built")
    from kformat.methods import kernels_c  # (AVX2 and FMA on this processor, or the bands)

    needs = 2 if rule.startswith("kmeans:8") else 1  # (8-bit codes: AVX-512, 4-bit: AVX2)
    assert (direct[0] is not None) == (kernels_c.set_vectors(2) >= needs)
