"""The examples' numpy VGG16: right against torch, and the same when streamed from kformat."""

import sys
from pathlib import Path

import numpy as np
import pytest

import kformat
from kformat.synthetic import small_vgg_weights

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples"))
import numpy_vgg  # noqa: E402


@pytest.fixture(scope="module")
def weights():
    return small_vgg_weights()


def test_the_plan_follows_torchvision_vgg16(weights):
    layers = numpy_vgg.plan(weights)
    pooled = [f"features.{i}.weight" for i in (2, 7, 14, 21, 28)]
    assert [layer.name for layer in layers if layer.pool_after] == pooled
    assert [layer.kind for layer in layers].count("fc") == 3 and not layers[-1].relu
    with pytest.raises(ValueError, match="not a VGG-style model"):
        numpy_vgg.plan(["fc1.weight"])


def test_numpy_forward_matches_torch(weights):
    torch = pytest.importorskip("torch")
    nn = torch.nn
    layers = numpy_vgg.plan(weights)
    modules, convs = [], [layer for layer in layers if layer.kind == "conv"]
    for layer in convs:
        w = weights[layer.name]
        conv = nn.Conv2d(w.shape[1], w.shape[0], 3, padding=1)
        conv.weight.data = torch.from_numpy(w)
        conv.bias.data = torch.from_numpy(weights[layer.name.replace("weight", "bias")])
        modules += [conv, nn.ReLU()] + ([nn.MaxPool2d(2)] if layer.pool_after else [])
    modules += [nn.AdaptiveAvgPool2d((7, 7)), nn.Flatten()]
    fcs = [layer for layer in layers if layer.kind == "fc"]
    for layer in fcs:
        w = weights[layer.name]
        fc = nn.Linear(w.shape[1], w.shape[0])
        fc.weight.data = torch.from_numpy(w)
        fc.bias.data = torch.from_numpy(weights[layer.name.replace("weight", "bias")])
        modules += [fc] + ([nn.ReLU()] if layer.relu else [])
    image = numpy_vgg.test_image(48)  # 48 -> 1x1 after five pools: adaptive pooling replicates
    with torch.no_grad():
        want = nn.Sequential(*modules)(torch.from_numpy(image)[None])[0].numpy()
    got = numpy_vgg.forward(
        image, numpy_vgg.eager_weights(weights, [layer.name for layer in layers]), weights.__getitem__, layers
    )
    assert np.allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


@pytest.mark.parametrize("layout", ["single", "sharded"])
def test_streamed_forward_equals_eager_forward(tmp_path, weights, layout):
    out = tmp_path / ("m.kf" if layout == "single" else "m")
    kformat.pack(
        weights,
        out,
        "mobile",
        rules=["classifier.0.weight=kmeans:4,tile=32x100"],
        layout=layout,
        shard_size=200_000,
    )
    eager = kformat.load_all(str(out))
    layers = numpy_vgg.plan(eager)
    names = [layer.name for layer in layers]
    image = numpy_vgg.test_image()
    want = numpy_vgg.forward(image, numpy_vgg.eager_weights(eager, names), eager.__getitem__, layers)
    with kformat.open(str(out)) as model:
        seen = []
        got = numpy_vgg.forward(
            image,
            model.stream(names),
            lambda n: model[n].numpy(),
            layers,
            on_layer=lambda k, layer: seen.append(layer.name),
        )
    assert seen == names
    assert np.allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


def test_digits_accuracy_table(tmp_path):
    """The digits example end to end (few epochs): every recipe evaluated, JSON and plot written."""
    import json
    import subprocess

    from PIL import Image

    script = Path(__file__).resolve().parent.parent / "examples" / "digits" / "digits.py"
    done = subprocess.run(
        [sys.executable, str(script), "--out", str(tmp_path), "--epochs", "5", "--target-bits", "3"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert "allocated, 3 bits/weight" in done.stdout and "kmeans2 per group" in done.stdout
    rows = {r["recipe"]: r for r in json.loads((tmp_path / "digits.json").read_text())["rows"]}
    assert rows["float32"]["accuracy"] > 0.9
    assert rows["fp16"]["agreement"] > 0.99 and rows["kmeans8"]["agreement"] > 0.99
    assert (
        rows["kmeans2"]["bytes"] < rows["kmeans4"]["bytes"] < rows["kmeans8"]["bytes"] < rows["fp16"]["bytes"]
    )
    assert rows["allocated, 3 bits/weight"]["bytes"] <= 301_066 * 3 / 8
    if (tmp_path / "digits.png").exists():  # matplotlib is the optional `plot` extra
        assert Image.open(tmp_path / "digits.png").size[0] > 300


def test_langid_accuracy_table(tmp_path):
    """The py3langid example on four languages: the shipped model's accuracy is real, fp16 is
    lossless (py3langid ships float16), and fewer bits mean fewer bytes."""
    import json
    import subprocess

    pytest.importorskip("py3langid")
    pytest.importorskip("django")
    script = Path(__file__).resolve().parent.parent / "examples" / "langid" / "langid_eval.py"
    done = subprocess.run(
        [
            sys.executable,
            str(script),
            "--out",
            str(tmp_path),
            "--languages",
            "de",
            "fr",
            "ru",
            "ja",
            "--target-bits",
            "3",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads((tmp_path / "langid.json").read_text())
    assert set(report["languages"]) == {"de", "fr", "ru", "ja"} and report["sentences"] > 1000
    rows = {r["recipe"]: r for r in report["rows"]}
    assert rows["float32"]["accuracy"] > 0.9
    assert rows["fp16 (as py3langid ships it)"]["agreement"] == 1.0
    assert rows["kmeans8"]["agreement"] > 0.98
    assert (
        rows["kmeans1"]["bytes"]
        < rows["kmeans2"]["bytes"]
        < rows["kmeans4"]["bytes"]
        < rows["kmeans8"]["bytes"]
    )
    assert rows["allocated, 3 bits/weight"]["bytes"] <= report["parameters"] * 3 / 8
