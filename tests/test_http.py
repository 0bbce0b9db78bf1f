"""Remote loading against real servers: nginx (byte counts from its access log, headers of
the shipped configuration) and Python's http.server (ignoring Range, failing, resetting)."""

import json
import urllib.request

import numpy as np
import pytest

import kformat
from http_servers import serve
from kformat.cli import main
from kformat.errors import IntegrityError, NotFound, StorageError
from kformat.format.header import decode_header
from kformat.loading.container import OPEN_READ
from kformat.format.constants import HEADER_SIZE

SLACK = 64  # blobs are 64-byte aligned: a merged range may carry up to 63 bytes of padding per blob


def header_and_manifest(path) -> int:
    return HEADER_SIZE + decode_header(path.read_bytes()[:HEADER_SIZE], str(path)).manifest_length


def test_opening_a_single_file_reads_only_its_start(nginx, packed):
    mark = nginx.mark()
    with kformat.open(nginx.url("model.kf")):
        pass
    log = nginx.requests_since(mark)
    assert [(e.uri, e.status, e.range) for e in log][:1] == [("/model.kf", 206, f"bytes=0-{OPEN_READ - 1}")]
    assert len(log) <= 2
    assert sum(e.body_bytes for e in log) <= max(OPEN_READ, header_and_manifest(packed.root / "model.kf"))


def test_opening_a_sharded_directory_reads_its_manifest_once(nginx, packed):
    mark = nginx.mark()
    with kformat.open(nginx.url("model/")):
        pass
    log = nginx.requests_since(mark)
    assert [(e.uri, e.status) for e in log] == [("/model/manifest.kf", 206)]
    assert log[0].body_bytes == (packed.root / "model" / "manifest.kf").stat().st_size


@pytest.mark.parametrize("name", ["model.kf", "model/"])
def test_loading_one_layer_transfers_its_blobs_and_the_manifest(nginx, packed, name):
    mark = nginx.mark()
    with kformat.open(nginx.url(name)) as model:
        fc1 = model["fc1.weight"]
        assert np.array_equal(fc1.numpy(), packed.expected["fc1.weight"])
        blobs = len(fc1.entry.tiles) + 1
    log = nginx.requests_since(mark)
    manifest = header_and_manifest(packed.root / ("model.kf" if name == "model.kf" else "model/manifest.kf"))
    sent = sum(e.body_bytes for e in log)
    assert all(e.status == 206 and e.range.startswith("bytes=") for e in log)
    assert sent <= fc1.stored_nbytes + max(manifest, OPEN_READ) + SLACK * blobs
    assert fc1.stored_nbytes < sent  # the layer really came over the wire


def test_streaming_a_layer_by_matmul_transfers_the_same_bytes(nginx, packed):
    x = np.ones(520, np.float32)
    with kformat.open(nginx.url("model/")) as model:
        mark = nginx.mark()
        y = model["fc1.weight"].matmul(x)
        log = nginx.requests_since(mark)
        stored = model["fc1.weight"].stored_nbytes
    assert stored <= sum(e.body_bytes for e in log) <= stored + SLACK * 26
    assert np.allclose(y, packed.expected["fc1.weight"] @ x, rtol=1e-5, atol=1e-5)


def test_the_example_nginx_configuration_serves_model_bytes_untouched(nginx, packed):
    with kformat.open(str(packed.root / "model")) as model:
        shard = model.manifest.shards[0].name
    request = urllib.request.Request(
        nginx.url(f"model/shards/{shard}"), headers={"Accept-Encoding": "gzip", "Range": "bytes=0-99"}
    )
    with urllib.request.urlopen(request) as reply:
        assert reply.status == 206 and len(reply.read()) == 100
        assert "Content-Encoding" not in reply.headers
        cache = reply.headers["Cache-Control"]
        assert "immutable" in cache and "no-transform" in cache and "max-age=31536000" in cache
        assert reply.headers["Content-Type"] == "application/octet-stream"
    request = urllib.request.Request(nginx.url("model.kf"), headers={"Accept-Encoding": "gzip"})
    with urllib.request.urlopen(request) as reply:
        assert "Content-Encoding" not in reply.headers
        assert (
            "no-transform" in reply.headers["Cache-Control"]
            and "immutable" not in reply.headers["Cache-Control"]
        )
        assert reply.read() == (packed.root / "model.kf").read_bytes()


def test_a_directory_url_without_a_slash_still_opens(nginx, packed):
    with kformat.open(nginx.url("model")) as model:
        assert np.array_equal(model["fc2.weight"].numpy(), packed.expected["fc2.weight"])


def test_a_missing_shard_is_named(nginx):
    with kformat.open(nginx.url("missing/")) as model:
        with pytest.raises(
            NotFound,
            match=r"missing/shards/[0-9a-f]{64}\.kfs: not found.*shard the manifest lists is missing",
        ):
            model["fc1.weight"].numpy()


def test_a_corrupted_shard_names_the_tile(nginx):
    with kformat.open(nginx.url("corrupt/")) as model:
        with pytest.raises(
            IntegrityError, match=r"tensor 'fc1.weight' tile 0 \(rows 0..64, cols 0..128\): hash mismatch"
        ):
            model["fc1.weight"].matmul(np.ones(520, np.float32))
        assert model["fc2.weight"].numpy().shape == (10, 300)  # other layers still load


def test_inspect_and_verify_accept_urls(nginx, capsys):
    assert main(["inspect", nginx.url("model/"), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert {t["name"] for t in summary["tensors"]} >= {"fc1.weight", "fc2.weight"}
    assert main(["verify", nginx.url("model.kf")]) == 0
    assert "OK" in capsys.readouterr().out
    assert main(["verify", nginx.url("corrupt/")]) == 1
    out = capsys.readouterr().out
    assert "fc1.weight" in out and "tile 0" in out and "hash mismatch" in out
    assert main(["verify", nginx.url("missing/")]) == 1
    assert "not found" in capsys.readouterr().out


# -- http.server: servers that misbehave --------------------------------------------------------


def test_a_server_ignoring_range_is_reported_with_the_way_out(packed):
    with serve(packed.root, honour_range=False) as server:
        with pytest.raises(StorageError, match=r"ignores HTTP Range.*simplecache::"):
            with kformat.open(f"{server.url}/model.kf") as model:
                model["fc1.weight"].numpy()


def test_simplecache_is_the_documented_fallback_for_such_servers(packed, tmp_path):
    with serve(packed.root, honour_range=False) as server:
        url = f"simplecache::{server.url}/model.kf"
        with kformat.open(url, simplecache={"cache_storage": str(tmp_path / "cache")}) as model:
            opened = server.hits["/model.kf"]  # fsspec's exists() is a GET too, hence not 1
            for name, tensor in model.stream():
                assert np.array_equal(tensor.numpy(), packed.expected[name])
        assert server.hits["/model.kf"] == opened  # downloaded once on open, then read locally


@pytest.mark.parametrize("failure", ["503", "reset"])
def test_a_server_failing_twice_is_retried(packed, failure):
    with serve(packed.root, failures=2, failure=failure) as server:
        with kformat.open(f"{server.url}/model.kf") as model:
            assert np.array_equal(model["fc1.weight"].numpy(), packed.expected["fc1.weight"])
        assert server.hits["/model.kf"] >= 4  # 2 failed + open + tiles


def test_a_server_that_keeps_failing_is_reported(packed):
    with serve(packed.root, failures=100) as server:
        with pytest.raises(StorageError, match=r"reading http://127\.0\.0\.1:\d+/model\.kf failed.*503"):
            kformat.open(f"{server.url}/model.kf")
        assert server.hits["/model.kf"] == 4  # the first try and three retries


def test_a_missing_file_is_not_retried(packed):
    with serve(packed.root) as server:
        with pytest.raises(NotFound, match="nothing.kf: not found"):
            kformat.open(f"{server.url}/nothing.kf")
        assert server.hits["/nothing.kf"] == 1


# -- hostile servers: nothing buffered past the request, a deadline on every read ----------------


def test_a_compressed_reply_is_refused(packed):
    with serve(packed.root, failures=10**6, failure="gzip") as server:
        with pytest.raises(StorageError, match="Content-Encoding: gzip"):
            kformat.open(f"{server.url}/model.kf")


def test_a_server_flooding_past_the_range_is_cut_off_after_the_request(packed):
    """A 200 with an endless body: the reader hangs up once the reply exceeds the 16 KiB it
    asked for, so only socket buffers' worth is ever sent (it used to buffer the whole body)."""
    with serve(packed.root, failures=10**6, failure="flood") as server:
        with pytest.raises(StorageError, match="ignores HTTP Range"):
            kformat.open(f"{server.url}/model.kf")
        sent = server.sent
    assert sent < 32 << 20, sent


def test_a_dripping_server_fails_at_the_deadline(packed):
    import time

    with serve(packed.root) as server:
        with kformat.open(f"{server.url}/model.kf", deadline=2.0) as model:
            server.failures, server.failure = 10**6, "drip"
            began = time.monotonic()
            with pytest.raises(StorageError, match=r"took longer than 2 s"):
                model["fc1.weight"].numpy()
            assert time.monotonic() - began < 20


def test_the_default_deadline_grows_with_the_bytes_asked():
    from kformat.loading import http

    assert http.DEADLINE_BASE_SECONDS < 60 and http.DEADLINE_MIN_RATE >= 32 << 10
    with pytest.raises(StorageError, match="unknown HTTP storage option"):
        kformat.open("http://127.0.0.1:9/model.kf", anon=True)
