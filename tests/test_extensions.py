"""The extension points: a quantization method and a plane codec registered from outside the
package round-trip through pack, inspect, verify, publish and the lazy loader, without any
kformat module knowing them; a reader without them refuses the file and names them."""

from __future__ import annotations

import zlib

import numpy as np
import pytest

import craft
import kformat
from kformat.codecs import Codec, register_codec, unregister_codec
from kformat.errors import DecodeError, VersionError
from kformat.methods import Method, QuantizedTensor, TableSpec, register_method, unregister_method


class Sign(Method):
    """1-bit sign codes with one float32 magnitude per row: w ~ sign(w) * mean(|w| of the row)."""

    name = "sign"
    options = ("bits",)
    granular = False

    def check_rule(self, rule) -> None:
        super().check_rule(rule)
        if rule.bits != 1:
            raise ValueError("sign codes are 1 bit")

    def encode(self, name, w, rule) -> QuantizedTensor:
        magnitude = np.abs(w).mean(axis=1).astype(np.float32)
        codes = (w >= 0).astype(np.uint8)
        return QuantizedTensor(
            name=name,
            method=self.name,
            shape=w.shape,
            view=w.shape,
            bits=1,
            group_rows=1,
            codes=codes,
            tables={"magnitude": magnitude},
        )

    def table_specs(self, quant, rows):
        return [TableSpec("magnitude", (rows,), ("float32",))]

    def dequantize(self, plane, row0, group_rows, tables, out=None):
        m = tables["magnitude"][row0 : row0 + plane.shape[0], None]
        value = np.where(plane.astype(bool), m, -m).astype(np.float32)
        if out is None:
            return value
        out[...] = value
        return out


class Deflate(Codec):
    """Values or packed codes through zlib, with its inflation bound declared."""

    name = "deflate"
    max_inflation = 1032

    def encode_codes(self, codes, depth, entries):
        from kformat.codecs.bitpack import pack_rows

        return zlib.compress(pack_rows(codes, depth).tobytes())

    def decode_codes(self, data, rows, cols, depth, entries):
        from kformat.codecs.bitpack import row_bytes, unpack_rows

        raw = zlib.decompressobj().decompress(data, rows * row_bytes(cols, depth))
        packed = np.frombuffer(raw, np.uint8).reshape(rows, row_bytes(cols, depth))
        return unpack_rows(packed, cols, depth)

    def encode_values(self, values):
        return zlib.compress(np.ascontiguousarray(values, values.dtype.newbyteorder("<")).tobytes())

    def decode_values(self, data, rows, cols, dtype):
        raw = zlib.decompressobj().decompress(data, rows * cols * np.dtype(dtype).itemsize)
        if len(raw) != rows * cols * np.dtype(dtype).itemsize:
            raise DecodeError("deflate plane is short")
        return np.frombuffer(raw, np.dtype(dtype).newbyteorder("<")).reshape(rows, cols)


@pytest.fixture
def plugins():
    register_method(Sign())
    register_codec(Deflate())
    yield
    unregister_method("sign")
    unregister_codec("deflate")


def expected_sign(w: np.ndarray) -> np.ndarray:
    w2 = w.reshape(w.shape[0], -1)
    m = np.abs(w2).mean(axis=1, dtype=np.float32)[:, None]
    return np.where(w2 >= 0, m, -m).reshape(w.shape)


def test_a_registered_method_and_codec_round_trip(plugins, model, tmp_path):
    out = tmp_path / "m.kf"
    report = kformat.pack(model, out, "fp16", rules=["fc*.weight=sign:1,codec=deflate", "features.*=sign:1"])
    manifest = report.manifest
    assert manifest.must_understand == ["codec:deflate", "method:sign"]
    fc1 = next(t for t in manifest.tensors if t.name == "fc1.weight")
    assert fc1.quant.method == "sign" and set(fc1.quant.tables) == {"magnitude"} and fc1.codec == "deflate"
    assert fc1.depth == 1

    loaded = kformat.load_all(str(out))
    for name in ("fc1.weight", "fc2.weight", "features.0.weight"):
        np.testing.assert_allclose(loaded[name], expected_sign(model[name]), rtol=1e-6)
    assert kformat.verify(str(out)) == []
    summary = kformat.inspect(str(out))
    assert {t["name"]: t["code_bits"] for t in summary["tensors"]}["fc1.weight"] == 1

    with kformat.open(str(out)) as lazy:
        q = lazy["fc1.weight"].quantized(packed=True)
        assert q.method == "sign" and set(q.tables) == {"magnitude"}
        x = np.random.default_rng(0).standard_normal(520).astype(np.float32)
        np.testing.assert_allclose(lazy["fc1.weight"].matmul(x), q.matmul(x), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(q.dequantize(), loaded["fc1.weight"])

    site = tmp_path / "site"
    kformat.pack(str(out), site, layout="sharded")
    assert kformat.load_all(str(site))["fc1.weight"].tobytes() == loaded["fc1.weight"].tobytes()


def test_a_reader_without_the_plugin_refuses_the_file_and_names_it(plugins, model, tmp_path):
    out = tmp_path / "m.kf"
    kformat.pack(model, out, "fp16", rules=["fc1.weight=sign:1"])
    unregister_method("sign")
    with pytest.raises(VersionError, match="method:sign"):
        kformat.open(str(out))
    # Without the must_understand entry, the method itself is still refused by name.
    parts = craft.split(out.read_bytes())
    parts.manifest["must_understand"] = []
    stripped = tmp_path / "stripped.kf"
    stripped.write_bytes(craft.assemble(parts))
    with pytest.raises(VersionError, match="unknown quantization method 'sign'"):
        kformat.open(str(stripped))


def test_rules_name_unknown_methods_and_options(plugins):
    with pytest.raises(kformat.RecipeError, match="sign codes are 1 bit"):
        kformat.parse_rule("sign:2")
    with pytest.raises(kformat.RecipeError, match="sign takes no granularity"):
        kformat.parse_rule("sign:1,row")
    with pytest.raises(kformat.RecipeError, match="unknown method 'nope'"):
        kformat.parse_rule("nope:2")


def test_a_codec_cannot_be_registered_without_an_inflation_bound():
    class Unbounded(Codec):
        name = "unbounded"

    with pytest.raises(ValueError, match="max_inflation"):
        register_codec(Unbounded())
    Unbounded.max_inflation = 0
    with pytest.raises(ValueError, match="max_inflation"):
        register_codec(Unbounded())
    assert "unbounded" not in kformat.codecs.CODECS


def test_the_inflation_bound_of_a_registered_codec_is_enforced(plugins, model, tmp_path):
    out = tmp_path / "m.kf"
    kformat.pack(model, out, "fp16", rules=["fc1.weight=kmeans:4,codec=deflate"])
    parts = craft.split(out.read_bytes())
    fc1 = parts.tensor("fc1.weight")
    fc1["tiles"][0]["blob"]["length"] = 8  # a 300x520 plane claimed from 8 bytes
    forged = tmp_path / "forged.kf"
    forged.write_bytes(craft.assemble(parts))
    with pytest.raises(kformat.LimitError, match="more than 1032:1"):
        kformat.open(str(forged))
