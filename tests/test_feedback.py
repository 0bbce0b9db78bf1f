"""Codes rounded with error feedback from an importance file's input covariance."""

import numpy as np
import pytest

import kformat
from kformat.errors import InputError
from kformat.packing.importance import COVARIANCE_PREFIX


def correlated_layer(seed: int = 0, rows: int = 48, cols: int = 96, samples: int = 2000):
    """A Linear weight and inputs whose features are strongly correlated (a few latent
    factors plus a little noise), as a trained network's activations are."""
    rng = np.random.default_rng(seed)
    factors = rng.standard_normal((samples, 6)) @ rng.standard_normal((6, cols))
    x = (factors + 0.1 * rng.standard_normal((samples, cols))).astype(np.float32)
    w = rng.standard_normal((rows, cols)).astype(np.float32)
    return w, x


def importance_file(path, x: np.ndarray, name: str = "fc.weight", covariance: bool = True):
    arrays = {name: np.mean(x.astype(np.float64) ** 2, axis=0).astype(np.float32)}
    if covariance:
        arrays[COVARIANCE_PREFIX + name] = (x.T.astype(np.float64) @ x / len(x)).astype(np.float32)
    np.savez(path, **arrays)
    return path


def output_error(path, w, x) -> float:
    back = kformat.load_all(str(path))["fc.weight"]
    return float(np.sum(((back - w) @ x.T) ** 2) / np.sum((w @ x.T) ** 2))


@pytest.mark.parametrize(
    "rule", ["kmeans:3", "kmeans:4,group=16,scale=row", "kmeans:4,ecq=0.5", "linear:3,row"]
)
def test_feedback_lowers_the_output_error_with_the_same_tables(tmp_path, rule):
    w, x = correlated_layer()
    errors, reports = {}, {}
    for covariance in (False, True):
        imp = importance_file(tmp_path / f"imp{covariance}.npz", x, covariance=covariance)
        out = tmp_path / f"m{covariance}.kf"
        reports[covariance] = kformat.pack({"fc.weight": w}, out, rules=[f"*={rule}"], importance=imp)
        errors[covariance] = output_error(out, w, x)
    assert errors[True] < 0.7 * errors[False], errors
    tables = [kformat.open(str(tmp_path / f"m{c}.kf"))["fc.weight"].quantized().tables for c in (False, True)]
    for name in tables[0]:  # only the codes changed
        np.testing.assert_array_equal(tables[0][name], tables[1][name])
    entropy = [reports[c].manifest.tensors[0].stats["entropy_bits"] for c in (False, True)]
    assert entropy[1] == pytest.approx(entropy[0], rel=0.1)  # entropy-constrained cells kept


def test_feedback_is_deterministic_and_skipped_where_it_cannot_apply(tmp_path):
    w, x = correlated_layer(1)
    imp = importance_file(tmp_path / "imp.npz", x)
    first = kformat.pack({"fc.weight": w}, tmp_path / "a.kf", rules=["*=kmeans:3"], importance=imp, jobs=1)
    again = kformat.pack({"fc.weight": w}, tmp_path / "b.kf", rules=["*=kmeans:3"], importance=imp, jobs=2)
    assert (tmp_path / "a.kf").read_bytes() == (tmp_path / "b.kf").read_bytes()
    assert (
        first.manifest.metadata["kformat.importance.tensors"]
        == again.manifest.metadata["kformat.importance.tensors"]
    )
    # 8-bit codes and pruned tensors keep their nearest codes: the same weights as without covariance
    for rule in ("kmeans:8", "kmeans:3,prune=0.3"):
        plain = importance_file(tmp_path / "plain.npz", x, covariance=False)
        kformat.pack({"fc.weight": w}, tmp_path / "p.kf", rules=[f"*={rule}"], importance=plain)
        kformat.pack({"fc.weight": w}, tmp_path / "c.kf", rules=[f"*={rule}"], importance=imp)
        loaded = [kformat.load_all(str(tmp_path / f"{which}.kf"))["fc.weight"] for which in "pc"]
        np.testing.assert_array_equal(*loaded, err_msg=rule)


def test_a_singular_covariance_is_damped(tmp_path):
    """Inputs that are always zero, or exact copies of each other, make E[x x^T] singular."""
    w, x = correlated_layer(2)
    x[:, :10] = 0
    x[:, 10:20] = x[:, 20:30]
    imp = importance_file(tmp_path / "imp.npz", x)
    kformat.pack({"fc.weight": w}, tmp_path / "m.kf", rules=["*=kmeans:3"], importance=imp)
    assert np.isfinite(kformat.load_all(str(tmp_path / "m.kf"))["fc.weight"]).all()


def test_bad_covariances_are_named(tmp_path):
    w, x = correlated_layer(3)
    cases = {
        "shape": np.ones((5, 5), np.float32),
        "square": np.ones((96, 95), np.float32),
        "finite": np.full((96, 96), np.inf, np.float32),
    }
    for label, matrix in cases.items():
        path = tmp_path / f"{label}.npz"
        np.savez(path, **{"fc.weight": np.ones(96, np.float32), COVARIANCE_PREFIX + "fc.weight": matrix})
        with pytest.raises(InputError, match=f"covariance of 'fc.weight'.*{label}"):
            kformat.pack({"fc.weight": w}, tmp_path / "m.kf", rules=["*=kmeans:3"], importance=path)
        assert not (tmp_path / "m.kf").exists()


def test_the_inverse_factor_of_a_large_covariance():
    """Above 256 columns the triangular inverse is built by halves: U^T U = inv(H)."""
    from kformat.packing.feedback import _inverse_factor

    rng = np.random.default_rng(4)
    a = rng.standard_normal((700, 40))
    h = a @ a.T
    damped = h + 0.01 * np.mean(np.diag(h)) * np.eye(700)
    u = _inverse_factor(h.copy())
    assert np.allclose(u, np.triu(u))
    np.testing.assert_allclose(u.T @ u, np.linalg.inv(damped), rtol=1e-6, atol=1e-8 * np.abs(u).max() ** 2)


@pytest.mark.parametrize("rule", ["kmeans:3", "kmeans:4,group=16,scale=row", "kmeans:4,ecq=0.5"])
def test_feedback_across_rows_for_layers_that_compute_x_at_w(tmp_path, rule):
    """GPT-2's Conv1D stores W as (in, out) and computes x @ W: its inputs are the rows."""
    from kformat.packing.importance import ROW_COVARIANCE_PREFIX

    w, x = correlated_layer(5, rows=48, cols=96)
    w = np.ascontiguousarray(w.T)  # (96 inputs, 48 outputs)
    errors = {}
    for across in (False, True):
        arrays = {"fc.weight": np.mean(x.astype(np.float64) ** 2, axis=0).astype(np.float32)[:, None]}
        if across:
            arrays[ROW_COVARIANCE_PREFIX + "fc.weight"] = (x.T.astype(np.float64) @ x / len(x)).astype(
                np.float32
            )
        np.savez(tmp_path / f"imp{across}.npz", **arrays)
        out = tmp_path / f"m{across}.kf"
        kformat.pack({"fc.weight": w}, out, rules=[f"*={rule}"], importance=tmp_path / f"imp{across}.npz")
        back = kformat.load_all(str(out))["fc.weight"]
        errors[across] = float(np.sum((x @ (back - w)) ** 2) / np.sum((x @ w) ** 2))
    assert errors[True] < 0.7 * errors[False], errors
