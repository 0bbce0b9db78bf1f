"""The compiled fit loops, C's (kernels_c) and numba's (kernels_numba), give exactly what
the numpy loops give: the same floats, the same first minima, so a pack's bytes do not depend
on whether the extension was built or numba is installed."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import kformat
from c_kernels import built_or_skip
from kformat.methods import kernels, kmeans_dp, kmeans_fit
from kformat.methods.kmeans_pieces import seed_in_pieces

BACKENDS = ["c", "numba"]


def use(backend: str) -> None:
    """Make `backend` the compiled loops kernels.compiled() hands out (KFORMAT_NUMBA=1)."""
    if backend == "numba":
        pytest.importorskip("numba")
        os.environ["KFORMAT_C_KERNELS"] = "0"
    else:
        os.environ.pop("KFORMAT_C_KERNELS", None)
        built_or_skip()


def numpy_only(function, *args, backend: str = "c"):
    """function(*args) with the numpy loops (KFORMAT_NUMBA=0), then with `backend`'s
    compiled ones (KFORMAT_NUMBA=1: loaded at once)."""
    use(backend)
    os.environ["KFORMAT_NUMBA"] = "0"
    try:
        assert kernels.compiled() is None
        plain = function(*args)
    finally:
        os.environ["KFORMAT_NUMBA"] = "1"
    try:
        compiled = kernels.compiled()
        assert compiled is not None and compiled.__name__.endswith(f"kernels_{backend}")
        return plain, function(*args)
    finally:
        del os.environ["KFORMAT_NUMBA"]
        os.environ.pop("KFORMAT_C_KERNELS", None)


def _problem(rng: np.random.Generator, size: int, ties: bool) -> tuple[np.ndarray, np.ndarray]:
    points = np.sort(rng.standard_t(3, size))
    if ties:  # repeated values and zero weights: ties between splits, empty cells
        points = np.sort(np.round(points, 1))
    weights = rng.integers(0, 4, size).astype(np.float64) if ties else rng.random(size) + 0.1
    weights[rng.integers(size)] += 1.0  # (a histogram's counts never all vanish)
    return points, weights


def _equal(a, b) -> None:
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b), strict=True)


@pytest.mark.parametrize("backend", BACKENDS)
@settings(max_examples=40)
@given(seed=st.integers(0, 2**32 - 1), ties=st.booleans(), k=st.sampled_from([2, 3, 5, 16, 40]))
def test_programme_layers_equal(backend, seed, ties, k):
    rng = np.random.default_rng(seed)
    problems = [_problem(rng, int(rng.integers(1, 300)), ties) for _ in range(int(rng.integers(1, 5)))]

    def run():
        programme = kmeans_dp.Programme(problems)
        programme.extend(max(2, k // 2), np.arange(0, len(problems), 2))  # a subset, then all
        programme.extend(k)
        return programme

    plain, fast = numpy_only(run, backend=backend)
    for a, b in zip(plain.errors, fast.errors, strict=True):
        _equal(a, b)
    for a, b in zip(plain.splits, fast.splits, strict=True):
        _equal(a, b)
    _equal(plain.layer, fast.layer)


@pytest.mark.parametrize("backend", BACKENDS)
@settings(max_examples=20)
@given(seed=st.integers(0, 2**32 - 1), size=st.integers(2, 700), ties=st.booleans())
def test_dense_programme_equals_compiled(backend, seed, size, ties):
    """One small problem takes the dense path in numpy; the compiled loop finds the same."""
    points, weights = _problem(np.random.default_rng(seed), size, ties)
    plain, fast = numpy_only(kmeans_dp.optimal_centroids, points, weights, 16, backend=backend)
    _equal(plain, fast)


@pytest.mark.parametrize("backend", BACKENDS)
@settings(max_examples=10)
@given(seed=st.integers(0, 2**32 - 1), k=st.sampled_from([64, 256]))
def test_seeds_in_pieces_equal(backend, seed, k):
    rng = np.random.default_rng(seed)
    problems = [_problem(rng, 4096, ties=False), _problem(rng, 3000, ties=True)]
    plain, fast = numpy_only(seed_in_pieces, problems, k, backend=backend)
    for a, b in zip(plain, fast, strict=True):
        _equal(a, b)


@pytest.mark.parametrize("backend", BACKENDS)
@settings(max_examples=40)
@given(seed=st.integers(0, 2**32 - 1), ties=st.booleans(), k=st.sampled_from([2, 4, 16, 256]))
def test_lloyd_equal(backend, seed, ties, k):
    rng = np.random.default_rng(seed)
    points, weights = _problem(rng, int(rng.integers(2, 5000)), ties)
    start = rng.choice(points, size=min(k, points.size))  # duplicates and empty cells included
    plain, fast = numpy_only(kmeans_fit.lloyd, points, weights, start, backend=backend)
    _equal(plain, fast)


@pytest.mark.parametrize("backend", BACKENDS)
@settings(max_examples=40)
@given(seed=st.integers(0, 2**32 - 1), ties=st.booleans(), k=st.sampled_from([2, 4, 16, 256]))
def test_entropy_constrained_equal(backend, seed, ties, k):
    """Up to rate weights where lines lose their cells: the compiled loop hands those back."""
    rng = np.random.default_rng(seed)
    points, weights = _problem(rng, int(rng.integers(k + 1, 5000)), ties)
    plain_fit = kmeans_fit.lloyd(points, weights, np.quantile(points, np.linspace(0, 1, k)))
    mse = float(np.average((points - np.median(points)) ** 2, weights=weights + 1e-9))
    for lam in (0.0, 0.01 * mse, mse, 8 * mse):
        plain, fast = numpy_only(kmeans_fit._ec_lloyd, points, weights, plain_fit, lam, backend=backend)
        for a, b in zip(plain, fast, strict=True):
            _equal(a, b)


def test_switches(monkeypatch):
    """KFORMAT_NUMBA=0 keeps the numpy loops (and the one-programme lock); =1 the kernels."""
    monkeypatch.setenv("KFORMAT_NUMBA", "1")
    assert kernels.compiled() is not None
    assert kmeans_dp.one_at_a_time() is not kmeans_dp.ONE_AT_A_TIME
    monkeypatch.setenv("KFORMAT_NUMBA", "0")
    assert kernels.compiled() is None
    assert kmeans_dp.one_at_a_time() is kmeans_dp.ONE_AT_A_TIME


def _fresh(code: str, *args: str, **extra: str) -> str:
    """`code` in a fresh process, numba's loading as without the C loops unless `extra` says."""
    env = {k: v for k, v in os.environ.items() if k not in ("KFORMAT_NUMBA", "KFORMAT_NUMBA_LEAN")}
    env.update({"KFORMAT_C_KERNELS": "0", **extra})
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_kernels_load_once_numpy_loops_have_taken_long_enough():
    """By default a process loads numba only after WARM_AFTER seconds of numpy fit loops (a
    short pack never pays for it), in the background, and then uses it."""
    code = """if True:
        import sys, numpy as np
        from kformat.methods import kernels, kmeans_fit
        points = np.sort(np.random.default_rng(0).standard_normal(4000)); weights = np.ones(4000)
        kmeans_fit.lloyd(points, weights, points[::100].copy())
        print("numba" in sys.modules, kernels.compiled() is None)
        kernels.WARM_AFTER = 0.0
        kmeans_fit.lloyd(points, weights, points[::100].copy())
        kernels._loader.join()
        print(kernels.compiled() is not None)
    """
    assert _fresh(code).split() == ["False", "True", "True"]


def test_a_plan_with_much_fit_work_loads_the_kernels_at_its_start(tmp_path):
    """A pack whose plan holds LOAD_FOR_WORK units of fit loops per core starts loading the
    kernels at once, and its fits wait for them; a small one leaves them to WARM_AFTER. At
    two jobs the same plan is half as much a core: no load (the load is waited for before
    the worker processes fork, while the loops would run on both cores)."""
    code = """if True:
        import sys, numpy as np, kformat
        from kformat.methods import kernels
        from kformat.recipe import recipe_from_dict
        jobs, cores = int(sys.argv[2]), int(sys.argv[3])
        small = {"w": np.random.default_rng(0).standard_normal((64, 64)).astype(np.float32)}
        kformat.pack(small, sys.argv[1], "kmeans4", jobs=jobs)
        print(kernels._loader is not None)
        rows = -(-int(kernels.load_for_work()) * cores // 16) * 64  # groups of 64 rows, 16 entries each
        big = {"w": np.random.default_rng(0).standard_normal((rows, 4)).astype(np.float32)}
        recipe = recipe_from_dict({"name": "g", "default": "kmeans:4,group=64"})
        kformat.pack(big, sys.argv[1], recipe, jobs=jobs)
        print(kernels._loader is not None, kernels.compiled() is not None)  # the fits waited
    """
    path = str(tmp_path / "m.kf")
    assert _fresh(code, path, "1", "1").split() == ["False", "True", "True"]
    assert _fresh(code, path, "1", "1", KFORMAT_NUMBA_LEAN="1").split() == ["False", "True", "True"]
    assert _fresh(code, path, "2", "1").split() == ["False", "False", "False"]  # half a load's work each
    assert _fresh(code, path, "2", "2").split() == ["False", "True", "True"]


def test_the_command_line_loads_numba_without_scipy_and_cffi(tmp_path):
    """Where scipy and cffi are installed, numba imports them while it loads (0.12 s), for
    linear algebra and cffi calls the kernels never use: a process of kformat's own
    (cli.run) loads it as if they were missing, and the kernels are the same. Only numba's
    own imports are refused: another import of them meanwhile, or afterwards, goes on. A
    library caller's process keeps numba's default."""
    pytest.importorskip("scipy")
    pytest.importorskip("cffi")
    code = """if True:
        import sys
        from kformat.methods import kernels
        kernels.expect(kernels.LOAD_FOR_WORK)
        loaded = kernels.compiled()
        print(loaded is not None, "scipy" in sys.modules, "cffi" in sys.modules)
        with kernels._lean_numba():
            import cffi  # (not numba's import)
        import scipy.linalg
        print(scipy.linalg.det([[2.0]]), cffi.FFI is not None)
    """
    assert _fresh(code).split() == ["True", "True", "True", "2.0", "True"]
    assert _fresh(code, KFORMAT_NUMBA_LEAN="1").split() == ["True", "False", "False", "2.0", "True"]
    np.savez(tmp_path / "w.npz", w=np.random.default_rng(0).standard_normal((256, 64)).astype(np.float32))
    command = """if True:
        import atexit, os, sys
        flags = ("KFORMAT_NUMBA_LEAN", "KFORMAT_KEEP_FREED")
        atexit.register(lambda: print("scipy" in sys.modules, *(os.environ[f] for f in flags)))
        from kformat.cli import run
        sys.argv = ["kformat", "pack", sys.argv[1], "-o", sys.argv[2], "--recipe", "kmeans8", "--quiet"]
        run()
    """
    out = _fresh(command, str(tmp_path / "w.npz"), str(tmp_path / "m.kf"), KFORMAT_NUMBA="1")
    assert out.split() == ["False", "1", "1"]  # (and freed memory kept: processes.keep_freed_memory_if_asked)


def test_a_lean_load_is_worth_it_for_less_work(monkeypatch):
    """Where numba's load will be lean (0.26 s, not 0.37) a pack loads it for less fit work."""
    monkeypatch.delenv("KFORMAT_NUMBA_LEAN", raising=False)
    monkeypatch.delitem(sys.modules, "scipy", raising=False)
    assert kernels.load_for_work() == kernels.LOAD_FOR_WORK
    monkeypatch.setenv("KFORMAT_NUMBA_LEAN", "1")
    assert kernels.load_for_work() == kernels.LOAD_FOR_WORK_LEAN < kernels.LOAD_FOR_WORK


def test_fit_work_counts_groups_times_entries():
    from kformat.methods import get_method
    from kformat.recipe.rules import parse_rule

    kmeans, linear = get_method("kmeans"), get_method("linear")
    assert kmeans.fit_work((4096, 25088), parse_rule("kmeans:8")) == 256
    assert kmeans.fit_work((30522, 768), parse_rule("kmeans:4,group=64")) == 477 * 16
    assert kmeans.fit_work((768, 768), parse_rule("kmeans:8,ecq=0.5")) == 1.5 * 256
    assert linear.fit_work((768, 768), parse_rule("linear:8,row")) == 0


def test_a_load_does_not_import_numba_or_pillow(tmp_path):
    """numba (60 MiB of RSS) is for packing, Pillow (2.2 MiB) for PNG rows kformat never
    writes: loading a k-means file imports neither."""
    weights = np.random.default_rng(0).standard_normal((64, 64)).astype(np.float32)
    kformat.pack({"w": weights}, tmp_path / "m.kf", "kmeans4")
    code = (
        "import sys, kformat; kformat.load_all(sys.argv[1]); kformat.verify(sys.argv[1]);"
        "print('numba' in sys.modules, 'PIL' in sys.modules)"
    )
    assert _fresh(code, str(tmp_path / "m.kf")) == "False False"


@pytest.mark.parametrize("backend", BACKENDS)
@settings(max_examples=30)
@given(seed=st.integers(0, 2**32 - 1), bins=st.sampled_from([1, 7, 256, 65536]), weighted=st.booleans())
def test_bincount_equal(backend, seed, bins, weighted):
    """The histograms' counts and weighted sums, compiled or numpy's: the same numbers."""
    rng = np.random.default_rng(seed)
    index = rng.integers(0, bins, int(rng.integers(0, 5000))).astype(np.int32)
    weights = rng.standard_t(2, index.size) if weighted else None
    plain, compiled = numpy_only(kernels.bincount, index, weights, bins, backend=backend)
    _equal(plain, compiled)
    _equal(plain, np.bincount(index, weights, minlength=bins))


@pytest.mark.parametrize("backend", BACKENDS)
@settings(max_examples=30)
@given(seed=st.integers(0, 2**32 - 1), size=st.sampled_from([1, 2, 9, 1000, 49_152]), ties=st.booleans())
def test_prefix_sums_equal(backend, seed, size, ties):
    """The cell sums' prefixes, compiled or numpy's cumsum: the same floats to the bit (both
    add in order, each product rounded before it is added: no fused multiply-add)."""
    points, weights = _problem(np.random.default_rng(seed), size, ties)

    def sums(points, weights):
        out = np.zeros((points.size + 1, 2))
        kernels.prefix_sums(points, weights, out)
        return out

    plain, compiled = numpy_only(sums, points, weights, backend=backend)
    _equal(plain, compiled)
    _equal(plain[1:, 1], np.cumsum(weights * points))


@pytest.mark.parametrize("backend", BACKENDS)
def test_bincount_of_a_bad_index_is_numpy_s_error(backend):
    use(backend)
    os.environ["KFORMAT_NUMBA"] = "1"
    try:
        with pytest.raises(ValueError):
            kernels.bincount(np.array([0, -1, 2], dtype=np.int32), None, 4)
        assert kernels.bincount(np.array([0, 5], dtype=np.int32), None, 4).size == 6  # as numpy
    finally:
        del os.environ["KFORMAT_NUMBA"]
        os.environ.pop("KFORMAT_C_KERNELS", None)


def test_code_lengths_are_the_c_librarys_log2_rounded_with_and_without_numba():
    """numpy's SIMD log2 differs from the C library's (numba's) in the last bit of about 0.2%
    of values; rounded to 1/1024 bit, and taken from the C library near a rounding midpoint,
    the lengths are the same bits either way (a last bit had moved a cell edge, and the
    entropy-constrained fits of 1 in 400 random problems came out differently)."""
    import math

    pytest.importorskip("numba")
    from numba import njit

    from kformat.methods import fit_loops, kernels_numba  # noqa: F401 (registers the helpers)

    rng = np.random.default_rng(0)
    shares = np.concatenate([rng.random(200_000), rng.random(1000) * 1e-12, [1.0, 0.5, 2.0**-30]])
    midpoints = 2.0 ** -((np.arange(1, 2000) + 0.5) / fit_loops.LENGTH_STEPS)  # on a midpoint, or next to it
    shares = np.concatenate([shares, midpoints, np.nextafter(midpoints, 1.0), np.nextafter(midpoints, 0.0)])
    expected = np.array([np.round(-math.log2(p) * fit_loops.LENGTH_STEPS) for p in shares])
    expected /= fit_loops.LENGTH_STEPS
    _equal(fit_loops.code_lengths(shares), expected)
    _equal(njit(lambda s: fit_loops.code_lengths(s))(shares), expected)


def test_bit_allocation_asks_for_the_kernels_by_the_candidates_it_fits(tmp_path):
    """--target-bits fits every candidate codebook of every tensor while its plan's own rules
    are fp16: the weighing asks for the kernels by its candidates' work (per core), a small
    model's too little for them."""
    code = """if True:
        import sys, numpy as np, kformat
        from kformat.methods import kernels
        rng = np.random.default_rng(0)
        count = int(sys.argv[2])
        model = {f"w{i}": rng.standard_normal((64, 64)).astype(np.float32) for i in range(count)}
        kformat.pack(model, sys.argv[1], "fp16", target_bits=4, jobs=1)
        print(kernels._loader is not None)
    """
    assert _fresh(code, str(tmp_path / "small.kf"), "2") == "False"  # 2 x 382 units
    assert _fresh(code, str(tmp_path / "many.kf"), "28") == "True"  # 28 x 382 units


def test_the_c_loops_are_there_from_the_start_without_numba(tmp_path):
    """Where the extension was built, a process's fits use it from the first (nothing to
    load, no threshold of work), and numba is never imported."""
    use("c")
    code = """if True:
        import sys, numpy as np, kformat
        from kformat.methods import kernels
        from kformat.recipe import recipe_from_dict
        big = {"w": np.random.default_rng(0).standard_normal((64 * 400, 4)).astype(np.float32)}
        kformat.pack(big, sys.argv[1], recipe_from_dict({"name": "g", "default": "kmeans:4,group=64"}))
        print(kernels.compiled().__name__, kernels.settled(), "numba" in sys.modules)
    """
    out = _fresh(code, str(tmp_path / "m.kf"), KFORMAT_C_KERNELS="")
    assert out.split() == ["kformat.methods.kernels_c", "True", "False"]


def test_the_c_loops_refuse_buffers_too_short():
    """Lengths are checked again in C: a wrong call is a ValueError, never a stray write."""
    use("c")
    from kformat.methods import _kernels

    points, w_wp = np.linspace(0, 1, 10), np.zeros((11, 2))
    with pytest.raises(ValueError, match="w_wp"):
        _kernels.lloyd(points, w_wp[:5], points[:3].copy(), 5, 1e-9, np.empty(3))
    with pytest.raises(ValueError, match="out"):
        _kernels.lloyd(points, w_wp, points[:3].copy(), 5, 1e-9, np.empty(2))
    with pytest.raises(ValueError, match="outside the layer"):
        layer = np.zeros(11)
        _kernels.dp_extend(
            layer,
            layer,
            layer,
            layer,
            np.array([5]),
            np.array([9]),
            np.array([0]),
            2,
            3,
            np.zeros(1, np.int64),
            False,
            np.empty(11),
            np.zeros((2, 11), np.int64),
            np.full((2, 1), np.inf),
        )
    with pytest.raises(ValueError, match="out"):
        _kernels.prefix_sums(points, points, np.zeros((10, 2)))
