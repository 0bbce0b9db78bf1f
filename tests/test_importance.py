"""Importance from calibration data (kformat.torch.calibrate) and importance-weighted k-means."""

import hashlib

import numpy as np
import pytest

import kformat
from kformat.cli import main
from kformat.errors import InputError
from kformat.recipe import Recipe

torch = pytest.importorskip("torch")
kt = pytest.importorskip("kformat.torch")


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Embedding(50, 8)
        self.conv = torch.nn.Conv1d(8, 16, 3, padding=1)
        self.depthwise = torch.nn.Conv1d(16, 16, 3, padding=1, groups=16)
        self.fc = torch.nn.Linear(16, 4)

    def forward(self, ids, scale=1.0):
        x = self.embed(ids).transpose(1, 2) * scale
        x = self.depthwise(self.conv(x))
        return self.fc(x.mean(2))


def test_calibrate_records_each_layer_in_state_dict_names(tmp_path):
    torch.manual_seed(0)
    net = Net()
    ids = torch.randint(0, 10, (4, 6))  # rows 10..49 never looked up
    batches = [(ids,), {"ids": ids, "scale": 2.0}]
    found = kt.calibrate(net, batches, tmp_path / "imp.npz")
    stored = np.load(tmp_path / "imp.npz")
    layers = sorted(["embed.weight", "conv.weight", "depthwise.weight", "fc.weight"])
    assert sorted(n for n in stored.files if not n.startswith("__")) == sorted(found) == layers
    assert sorted(stored["__sensitivity_names__"]) == layers and np.all(stored["__sensitivity__"] > 0)
    assert found["embed.weight"].shape == (50, 1) and found["embed.weight"][10:].sum() == 0
    assert found["embed.weight"][:10].sum() == 2 * ids.numel() / 2  # counts per batch, averaged
    assert found["conv.weight"].shape == (8 * 3,)  # input channels x taps, the 2-D view's columns
    assert found["depthwise.weight"].shape == (16, 3)  # each row sees its own channel
    assert found["fc.weight"].shape == (16,)
    x = net.embed(ids).transpose(1, 2)
    expected = (x.square().mean((0, 2)) + (2 * x).square().mean((0, 2))) / 2
    np.testing.assert_allclose(found["conv.weight"][::3], expected.detach().numpy(), rtol=1e-5)


def loud_columns_that_do_not_matter(path, seed: int, rows: int, first: int, loudness: float, weight: float):
    """A 256-column fc.weight whose columns from `first` on are `loudness` times louder and
    matter `weight` as much, and its importance file at `path`."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((rows, 256)).astype(np.float32)
    w[:, first:] *= loudness
    importance = np.ones(256, np.float32)
    importance[first:] = weight
    np.savez(path, **{"fc.weight": importance})
    return w, importance


def test_importance_weights_the_fit_and_is_recorded(tmp_path):
    w, _ = loud_columns_that_do_not_matter(tmp_path / "imp.npz", 0, 64, 128, 8, 1e-4)
    plain = kformat.pack({"fc.weight": w}, tmp_path / "plain.kf", rules=["*=kmeans:3"])
    weighted = kformat.pack(
        {"fc.weight": w}, tmp_path / "weighted.kf", rules=["*=kmeans:3"], importance=tmp_path / "imp.npz"
    )

    def quiet_error(path):
        back = kformat.load_all(str(path))["fc.weight"]
        return float(np.sum((back[:, :128] - w[:, :128]) ** 2))

    assert quiet_error(tmp_path / "weighted.kf") < quiet_error(tmp_path / "plain.kf") / 4
    digest = hashlib.sha256((tmp_path / "imp.npz").read_bytes()).hexdigest()
    assert weighted.manifest.metadata["kformat.importance"] == f"sha256:{digest}"
    assert weighted.manifest.metadata["kformat.importance.tensors"] == "1"
    assert "kformat.importance" not in plain.manifest.metadata
    assert (
        main(["pack", str(tmp_path / "plain.kf"), "-o", str(tmp_path / "x.kf"), "--importance", "imp.npz"])
        == 2
    )


def test_importance_clips_linear_ranges_to_the_weighted_error(tmp_path):
    """Outliers in columns that do not matter stretch a linear code's range; with importance
    each row's range is clipped instead, and the columns that matter keep their resolution."""
    w, importance = loud_columns_that_do_not_matter(tmp_path / "imp.npz", 1, 32, 200, 6, 1e-3)
    errors = {}
    for label, extra in (("plain", {}), ("weighted", {"importance": tmp_path / "imp.npz"})):
        kformat.pack({"fc.weight": w}, tmp_path / f"{label}.kf", rules=["*=linear:4,row"], **extra)
        back = kformat.load_all(str(tmp_path / f"{label}.kf"))["fc.weight"]
        errors[label] = float(np.sum(importance * (back - w) ** 2))
    assert errors["weighted"] < errors["plain"] / 2


def test_bad_importance_files_are_named(tmp_path):
    w = {"fc.weight": np.ones((8, 128), np.float32)}
    np.savez(tmp_path / "shape.npz", **{"fc.weight": np.ones(7, np.float32)})
    with pytest.raises(InputError, match="fc.weight.*shape"):
        kformat.pack(w, tmp_path / "m.kf", "kmeans4", importance=tmp_path / "shape.npz")
    np.savez(tmp_path / "nan.npz", **{"fc.weight": np.full(128, np.nan, np.float32)})
    with pytest.raises(InputError, match="finite"):
        kformat.pack(w, tmp_path / "m.kf", "kmeans4", importance=tmp_path / "nan.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(InputError, match="importance file"):
        kformat.pack(w, tmp_path / "m.kf", "kmeans4", importance=tmp_path / "junk.npz")
    assert not (tmp_path / "m.kf").exists()


def test_allocation_weighs_candidates_by_importance(tmp_path):
    from kformat.packing.weighing import candidates
    from kformat.packing.importance import Importance

    w, weights = loud_columns_that_do_not_matter(tmp_path / "imp.npz", 1, 64, 128, 8, 1e-4)
    importance = Importance({"fc.weight": weights})
    plain = {c.rule.to_text(): c.error for c in candidates("fc.weight", w, (256, 4096))}
    weighted = {c.rule.to_text(): c.error for c in candidates("fc.weight", w, (256, 4096), importance)}
    # with importance, entropy-constrained candidates join (allocation can tell which layers they may shave)
    assert set(plain) == {r for r in weighted if ",ecq=" not in r} and set(weighted) > set(plain)
    # k-means errors change when the quiet columns are what counts (fp16's relative error is
    # the same everywhere)
    kmeans = [r for r in plain if r.startswith("kmeans")]
    assert sum(abs(np.log(weighted[r] / plain[r])) for r in kmeans) > 1.0
    report = kformat.pack(
        {"fc.weight": w}, tmp_path / "m.kf", "fp16", target_bits=3, importance=tmp_path / "imp.npz"
    )
    assert report.manifest.metadata["kformat.importance.tensors"] == "1"
    assert container_size_ok(tmp_path / "m.kf", w.size * 3 / 8)


def container_size_ok(path, limit):
    from kformat.packing.allocate import container_size

    return container_size(path) <= limit


class Branches(torch.nn.Module):
    """Two layers side by side, one of which barely reaches the output."""

    def __init__(self):
        super().__init__()
        self.loud = torch.nn.Linear(128, 128)
        self.quiet = torch.nn.Linear(128, 128)

    def forward(self, x):
        return self.loud(x) + 0.01 * self.quiet(x)


def test_sensitivity_measures_what_reaches_the_output_and_steers_allocation(tmp_path):
    from kformat.packing.importance import Importance

    torch.manual_seed(0)
    net = Branches()
    batches = [torch.randn(32, 128) for _ in range(3)]
    kt.calibrate(net, batches, tmp_path / "imp.npz")
    importance = Importance.load(tmp_path / "imp.npz")
    loud, quiet = importance.sensitivities["loud.weight"], importance.sensitivities["quiet.weight"]
    assert 0.2 < loud < 5 and quiet < loud * 1e-3  # 0.01 in amplitude is 1e-4 in power
    assert importance.sensitivity("quiet.weight") > quiet  # what allocation weighs: floored
    assert importance.sensitivity("unmeasured") == pytest.approx(np.median([loud, quiet]))
    state = {k: v.detach().numpy() for k, v in net.state_dict().items() if k.endswith("weight")}
    report = kformat.pack(state, tmp_path / "m.kf", "fp16", target_bits=2.5, importance=tmp_path / "imp.npz")
    bits = {t.name: t.quant.bits or 16 for t in report.manifest.tensors}
    assert bits["loud.weight"] > bits["quiet.weight"]  # the bits go where they reach the output
    kt.calibrate(net, batches, tmp_path / "plain.npz", sensitivity=False)
    assert "__sensitivity__" not in np.load(tmp_path / "plain.npz").files
    assert Importance.load(tmp_path / "plain.npz").sensitivity("loud.weight") == 1.0


def test_calibrate_records_input_covariances_by_default(tmp_path):
    torch.manual_seed(0)
    net = Net()
    ids = torch.randint(0, 10, (4, 6))
    kt.calibrate(net, [(ids,), (ids, 2.0)], tmp_path / "plain.npz", sensitivity=False, covariance=False)
    assert not [n for n in np.load(tmp_path / "plain.npz").files if n.startswith("__covariance__")]
    found = kt.calibrate(net, [(ids,), (ids, 2.0)], tmp_path / "cov.npz", sensitivity=False)  # the default
    stored = np.load(tmp_path / "cov.npz")
    covariances = sorted(n for n in stored.files if n.startswith("__covariance__"))
    assert covariances == ["__covariance__/conv.weight", "__covariance__/fc.weight"]  # not depthwise
    with torch.no_grad():
        x = [net.depthwise(net.conv(net.embed(ids).transpose(1, 2) * s)).mean(2) for s in (1.0, 2.0)]
    expected = ((x[0].T @ x[0]) + x[1].T @ x[1]).numpy() / 8  # the fc inputs of two batches of 4
    covariance = stored["__covariance__/fc.weight"]
    np.testing.assert_allclose(covariance, expected, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(np.diag(covariance), found["fc.weight"], rtol=1e-4)  # the importance
    with torch.no_grad():  # the conv's: of its input patches, channel-major as the weight's columns
        inputs = [net.embed(ids).transpose(1, 2) * s for s in (1.0, 2.0)]
        patches = [torch.nn.functional.unfold(i[:, :, None, :], (1, 3), padding=(0, 1)) for i in inputs]
        rows = torch.cat([p.transpose(1, 2).reshape(-1, 24) for p in patches]).double()
    expected = (rows.T @ rows / rows.shape[0]).numpy()
    np.testing.assert_allclose(stored["__covariance__/conv.weight"], expected, rtol=1e-4, atol=1e-6)
    column = net.conv.weight.detach().reshape(16, 24)[:, 4]  # channel 1, tap 1 (the centre)
    assert net.conv.weight[:, 1, 1].equal(column)
    w = {"fc.weight": net.fc.weight.detach().numpy()}
    recipe = Recipe(name="tiny", min_elements=1, default="kmeans:2")
    report = kformat.pack(w, tmp_path / "m.kf", recipe, importance=tmp_path / "cov.npz")
    assert report.manifest.metadata["kformat.importance.tensors"] == "1"
    assert np.isfinite(kformat.load_all(str(tmp_path / "m.kf"))["fc.weight"]).all()


def test_covariances_are_recorded_within_a_budget(tmp_path, monkeypatch):
    """By default the smallest layers first, until the budget's floats are spent; True ignores it."""
    import kformat.torch_calibrate as calibration

    torch.manual_seed(0)
    net, ids = Net(), torch.randint(0, 10, (4, 6))
    monkeypatch.setattr(calibration, "COVARIANCE_BUDGET", 16**2 + 23**2)  # fc (16) fits, conv (24) not

    def covariances(path, **options):
        kt.calibrate(net, [(ids,)], path, sensitivity=False, **options)
        return sorted(n for n in np.load(path).files if n.startswith("__covariance__"))

    assert covariances(tmp_path / "a.npz") == ["__covariance__/fc.weight"]
    assert covariances(tmp_path / "b.npz", covariance=True) == [
        "__covariance__/conv.weight",
        "__covariance__/fc.weight",
    ]


def test_covariances_summed_in_pieces_are_the_same(tmp_path, monkeypatch):
    """Patches unfolded an image at a time and products of a few samples each: same matrices."""
    import kformat.torch_calibrate as calibration

    torch.manual_seed(0)
    net, ids = Net(), torch.randint(0, 10, (4, 6))
    kt.calibrate(net, [(ids,)], tmp_path / "whole.npz", sensitivity=False)
    monkeypatch.setattr(calibration, "PATCH_BYTES", 1)
    monkeypatch.setattr(calibration, "PRODUCT_ROWS", 5)
    kt.calibrate(net, [(ids,)], tmp_path / "pieces.npz", sensitivity=False)
    whole, pieces = np.load(tmp_path / "whole.npz"), np.load(tmp_path / "pieces.npz")
    for name in ("__covariance__/conv.weight", "__covariance__/fc.weight"):
        np.testing.assert_allclose(pieces[name], whole[name], rtol=1e-5, atol=1e-7)


def test_calibrate_takes_gpt2_conv1d_as_a_transposed_linear(tmp_path):
    pytorch_utils = pytest.importorskip("transformers.pytorch_utils")

    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.c_fc = pytorch_utils.Conv1D(24, 8)  # nf=24 outputs, nx=8 inputs: weight (8, 24)
            self.c_proj = pytorch_utils.Conv1D(8, 24)

        def forward(self, x):
            return self.c_proj(torch.relu(self.c_fc(x)))

    torch.manual_seed(0)
    block, x = Block(), torch.randn(5, 7, 8)
    found = kt.calibrate(block, [x], tmp_path / "imp.npz")
    stored = np.load(tmp_path / "imp.npz")
    assert found["c_fc.weight"].shape == (8, 1) and found["c_proj.weight"].shape == (24, 1)  # per row
    np.testing.assert_allclose(
        found["c_fc.weight"][:, 0], x.reshape(-1, 8).square().mean(0).numpy(), rtol=1e-5
    )
    rows = x.reshape(-1, 8).double()
    np.testing.assert_allclose(
        stored["__row_covariance__/c_fc.weight"], (rows.T @ rows / 35).numpy(), rtol=1e-5, atol=1e-7
    )
    assert sorted(stored["__sensitivity_names__"]) == ["c_fc.weight", "c_proj.weight"]


def test_calibrate_takes_an_unbatched_convolution_input_as_one_sample(tmp_path):
    """Conv2d accepts (channels, height, width): its importance and covariance are those of
    the same input with a batch dimension of one (channels were once read from the height)."""
    torch.manual_seed(2)
    conv = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1))
    image = torch.randn(3, 7, 5)
    unbatched = kt.calibrate(conv, [(image,)], tmp_path / "one.npz", sensitivity=False)
    batched = kt.calibrate(conv, [(image[None],)], tmp_path / "batch.npz", sensitivity=False)
    assert unbatched["0.weight"].shape == (3 * 9,)
    np.testing.assert_allclose(unbatched["0.weight"], batched["0.weight"], rtol=1e-6)
    one, batch = np.load(tmp_path / "one.npz"), np.load(tmp_path / "batch.npz")
    np.testing.assert_allclose(one["__covariance__/0.weight"], batch["__covariance__/0.weight"], rtol=1e-6)
