"""kformat compare: per-tensor error measures, on paths and URLs."""

import json
import math

import numpy as np
import pytest

import kformat
from kformat.cli import main
from kformat.compare import compare


@pytest.fixture
def files(tmp_path, model):
    np.savez(tmp_path / "m.npz", **model)
    kformat.pack(str(tmp_path / "m.npz"), tmp_path / "m.kf", "mobile")
    return tmp_path / "m.npz", tmp_path / "m.kf"


def test_measures_match_a_direct_computation(files, model):
    original, packed = files
    result = compare(original, packed)
    restored = kformat.load_all(str(packed))
    by_name = {t.name: t for t in result.tensors}
    x = model["fc1.weight"].astype(np.float64)
    y = restored["fc1.weight"].astype(np.float64)
    fc1 = by_name["fc1.weight"]
    assert fc1.sqnr_db == pytest.approx(10 * np.log10((x**2).sum() / ((x - y) ** 2).sum()), rel=1e-9)
    assert fc1.cosine == pytest.approx((x * y).sum() / np.sqrt((x**2).sum() * (y**2).sum()), rel=1e-12)
    assert fc1.max_abs_error == pytest.approx(np.abs(x - y).max())
    assert fc1.rel_fro_error == pytest.approx(np.linalg.norm(x - y) / np.linalg.norm(x))
    assert 15 < fc1.sqnr_db < 25 and not fc1.exact
    assert by_name["bn.num_batches_tracked"].exact and by_name["fc1.bias"].exact
    assert by_name["bn.num_batches_tracked"].sqnr_db == math.inf
    tot = result.totals
    assert tot["tensors"] == len(model) and tot["worst_tensor"] == "fc1.weight"
    assert tot["float_params"] == sum(a.size for a in model.values() if a.dtype.kind == "f")


def test_missing_and_mismatched_tensors_are_listed(tmp_path, model):
    np.savez(
        tmp_path / "a.npz",
        **{**model, "extra": np.ones(3, np.float32), "fc2.weight": np.ones((10, 299), np.float32)},
    )
    kformat.pack(model, tmp_path / "m.kf", "fp16")
    result = compare(tmp_path / "a.npz", tmp_path / "m.kf")
    assert result.only_in_original == ["extra"]
    assert result.shape_mismatch == ["fc2.weight: original [10, 299], packed [10, 300]"]


def test_cli_text_json_and_urls(files, nginx, capsys, packed):
    original, kf = files
    assert main(["compare", str(original), str(kf)]) == 0
    text = capsys.readouterr().out
    assert "fc1.weight" in text and "TOTAL" in text and "lowest SQNR: fc1.weight" in text
    assert main(["compare", str(original), str(kf), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["totals"]["worst_tensor"] == "fc1.weight"
    assert any(t["sqnr_db"] == "inf" for t in data["tensors"])
    # a URL on both sides: the served model against itself is exact everywhere
    assert main(["compare", nginx.url("model.kf"), nginx.url("model/"), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["totals"]["exact_tensors"] == data["totals"]["tensors"] == len(packed.expected)


def test_a_missing_original_is_a_clear_error(tmp_path, files, capsys):
    assert main(["compare", str(tmp_path / "nope.npz"), str(files[1])]) == 2
    assert "nope.npz" in capsys.readouterr().err
