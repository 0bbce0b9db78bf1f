"""The floatz codec and the `lossless` preset: bit-exact for every dtype, smaller than a
byte shuffle where exponents straddle bytes, and strict about its frames."""

import numpy as np
import pytest
import pyzstd
from hypothesis import given, settings
from hypothesis import strategies as st

import kformat
from kformat.codecs import get_codec
from kformat.errors import DecodeError
from kformat.format.dtypes import HAVE_ML_DTYPES, numpy_dtype

FLOATZ = get_codec("floatz")
DTYPES = ["float16", "float32", "float64", "int8", "int32", "uint16", "bool"]
if HAVE_ML_DTYPES:
    DTYPES += ["bfloat16", "float8_e4m3fn", "float8_e5m2"]


@settings(max_examples=200, deadline=None)
@given(
    dtype=st.sampled_from(DTYPES),
    rows=st.integers(1, 9),
    cols=st.integers(1, 40),
    seed=st.integers(0, 2**32 - 1),
)
def test_any_bit_pattern_round_trips(dtype, rows, cols, seed):
    dtype = numpy_dtype(dtype)
    bits = np.random.default_rng(seed).integers(0, 256, rows * cols * dtype.itemsize, dtype=np.uint8)
    values = bits.view(dtype).reshape(rows, cols) if dtype != np.bool_ else (bits > 127).reshape(rows, cols)
    back = FLOATZ.decode_values(FLOATZ.encode_values(values), rows, cols, dtype)
    assert back.dtype == dtype.newbyteorder("<") and back.tobytes() == values.tobytes()  # NaN payloads too


@pytest.mark.parametrize("dtype", ["bfloat16", "float32", "float16"])
def test_weights_compress_below_a_byte_shuffle(dtype):
    if dtype == "bfloat16" and not HAVE_ML_DTYPES:
        pytest.skip("needs ml_dtypes")
    weights = (np.random.default_rng(0).standard_normal((256, 1024)) * 0.02).astype(numpy_dtype(dtype))
    floatz = len(FLOATZ.encode_values(weights)) / weights.nbytes
    shuffled = len(get_codec("zstd").encode_values(weights)) / weights.nbytes
    # exponent entropy of Gaussian weights is ~2.6 bits: bf16 (8 + 2.6) / 16 = 0.66
    limit = {"bfloat16": 0.69, "float32": 0.85, "float16": 0.86}[dtype]
    assert floatz < limit and floatz <= shuffled + 0.002, (floatz, shuffled)


def test_frames_are_checked():
    values = np.arange(64, dtype=np.float32).reshape(8, 8)
    blob = FLOATZ.encode_values(values)
    with pytest.raises(DecodeError, match="after its last frame"):
        FLOATZ.decode_values(blob + pyzstd.compress(b"x"), 8, 8, values.dtype)
    with pytest.raises(DecodeError, match="not a complete zstd frame"):
        FLOATZ.decode_values(blob[: len(blob) // 2], 8, 8, values.dtype)
    with pytest.raises(DecodeError):
        FLOATZ.decode_values(blob, 8, 16, values.dtype)  # planes of 64 bytes, 128 promised
    with pytest.raises(DecodeError, match="cannot hold a code plane"):
        FLOATZ.encode_codes(np.zeros((2, 2), np.uint8), 4, 16)


def test_lossless_preset_is_bit_exact_in_every_dtype(tmp_path):
    rng = np.random.default_rng(1)
    tensors = {
        "w32": rng.standard_normal((300, 70)).astype(np.float32),
        "w16": rng.standard_normal((40, 33)).astype(np.float16),
        "w64": rng.standard_normal(17),
        "ids": np.arange(-5, 5, dtype=np.int64),
        "mask": rng.random((3, 3)) > 0.5,
        "scalar": np.float32(3.5).reshape(()),
        "special": np.array([np.nan, -np.inf, np.inf, -0.0, 1e-45, 3e38], np.float32),
    }
    if HAVE_ML_DTYPES:
        tensors["wbf"] = tensors["w32"].astype(numpy_dtype("bfloat16"))
    report = kformat.pack(tensors, tmp_path / "m.kf", "lossless")
    assert {t.codec for t in report.manifest.tensors} == {"floatz"}
    back = kformat.load_all(str(tmp_path / "m.kf"))
    for name, array in tensors.items():
        assert back[name].dtype == array.dtype and back[name].shape == array.shape
        assert back[name].tobytes() == array.tobytes(), name
    assert kformat.verify(str(tmp_path / "m.kf")) == []
