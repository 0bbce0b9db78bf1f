"""Scaled codebooks (kmeans ...,scale=row): one codebook shared by rows of very different
ranges, as depthwise convolutions have."""

import numpy as np
import pytest

import kformat
from kformat.methods import get_method
from kformat.recipe import parse_rule

KMEANS = get_method("kmeans")


def depthwise_like(rng, channels=96, taps=9):
    """Per-channel kernels whose ranges differ by orders of magnitude."""
    return (rng.standard_normal((channels, taps)) * np.exp(rng.standard_normal((channels, 1)) * 1.5)).astype(
        np.float32
    )


def per_row_sqnr(w, y):
    return 10 * np.log10((w.astype(np.float64) ** 2).sum(1) / ((w - y) ** 2).sum(1))


@pytest.mark.parametrize("bits", [3, 4, 8])
def test_scaled_codebook_keeps_every_channel(bits):
    w = depthwise_like(np.random.default_rng(bits))
    plain = KMEANS.encode("w", w, parse_rule(f"kmeans:{bits}")).dequantize()
    scaled = KMEANS.encode("w", w, parse_rule(f"kmeans:{bits},scale=row")).dequantize()
    # the worst channel: small kernels no longer collapse onto one or two centroids
    assert per_row_sqnr(w, scaled).min() > per_row_sqnr(w, plain).min() + 10
    assert np.median(per_row_sqnr(w, scaled)) > np.median(per_row_sqnr(w, plain))


# group 8: row groups too small for the byte lookup, where the scale was once applied twice
@pytest.mark.parametrize("group", [32, 8])
def test_scaled_round_trip_through_every_reader(tmp_path, group):
    rng = np.random.default_rng(0)
    dw = depthwise_like(rng, channels=256)
    tensors = {"dw.weight": dw.reshape(256, 1, 3, 3), "fc.weight": rng.standard_normal((40, 300))}
    rule = f"kmeans:4,group={group},scale=row"
    report = kformat.pack(tensors, tmp_path / "m.kf", rules=[f"*={rule}"])
    assert "scaled-codebooks" in report.manifest.must_understand
    entry = next(t for t in report.manifest.tensors if t.name == "dw.weight")
    assert entry.rule == rule and entry.quant.scale.shape == [256]
    expected = KMEANS.encode("dw.weight", dw, parse_rule(rule)).dequantize()
    loaded = kformat.load_all(str(tmp_path / "m.kf"))["dw.weight"]
    np.testing.assert_array_equal(loaded.reshape(256, 9), expected)
    with kformat.open(str(tmp_path / "m.kf")) as model:
        lazy = model["dw.weight"]
        np.testing.assert_array_equal(lazy.numpy().reshape(256, 9), expected)
        np.testing.assert_array_equal(lazy[10:20].reshape(10, 9), expected[10:20])
        q = lazy.quantized(packed=True)
        np.testing.assert_array_equal(q.dequantize().reshape(256, 9), expected)
        x = rng.standard_normal(300).astype(np.float32)
        np.testing.assert_allclose(model["fc.weight"].matmul(x), model["fc.weight"].numpy() @ x, rtol=1e-5)
    assert kformat.verify(str(tmp_path / "m.kf")) == []
    summary = kformat.inspect(str(tmp_path / "m.kf"))
    assert next(t for t in summary["tensors"] if t["name"] == "dw.weight")["sqnr_db"] > 15


def test_scaled_quantized_linear_matches_dequantized(tmp_path):
    torch = pytest.importorskip("torch")
    kt = pytest.importorskip("kformat.torch")
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 8))
    with torch.no_grad():
        model[0].weight.mul_(torch.exp(torch.randn(32, 1) * 2))  # rows of very different ranges
    kt.save(model, tmp_path / "m.kf", rules=["*.weight=kmeans:4,scale=row"])
    dense = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 8))
    kt.load_state_dict(dense, str(tmp_path / "m.kf"))
    compact = kt.load_quantized(
        torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 8)),
        str(tmp_path / "m.kf"),
    )
    x = torch.randn(5, 64)
    torch.testing.assert_close(compact(x), dense(x), rtol=1e-5, atol=1e-5)


def test_scale_is_a_kmeans_option_only():
    with pytest.raises(kformat.RecipeError, match="scale"):
        kformat.parse_rule("linear:8,scale=row")
    with pytest.raises(kformat.RecipeError):
        kformat.parse_rule("kmeans:4,scale=column")
