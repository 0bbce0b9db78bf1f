"""Faults: killed packs and readers, servers that drop, stall or fail, concurrent readers.

Every fault ends in the right tensors or a clear KFormatError, within bounded time, and
leaves nothing behind that trips the next run.
"""

from __future__ import annotations

import hashlib
import signal
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

import kformat
from kformat.errors import StorageError
from kformat.loading.container import Container
from kformat.packing.atomic import TEMP_MARK
from http_servers import serve

KFORMAT = [sys.executable, "-m", "kformat.cli"]


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# -- a pack killed at any moment ------------------------------------------------------------------


@pytest.fixture(scope="module")
def big_source(tmp_path_factory) -> Path:
    """About 24 MB of float32: packing takes long enough to be killed at many moments."""
    rng = np.random.default_rng(3)
    path = tmp_path_factory.mktemp("src") / "model.npz"
    np.savez(path, **{f"fc{i}.weight": rng.standard_normal((1024, 2048), dtype=np.float32) for i in range(3)})
    return path


def _pack_command(source: Path, out: Path, sharded: bool) -> list[str]:
    return [
        *KFORMAT,
        "pack",
        str(source),
        "-o",
        str(out),
        "-r",
        "kmeans4",
        "-q",
        *(["--sharded"] if sharded else []),
    ]


def _litter(directory: Path, name: str) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.startswith(f".{name}"))


@pytest.mark.parametrize("sharded", [False, True], ids=["single", "sharded"])
def test_a_killed_pack_leaves_no_output_and_nothing_the_next_pack_trips_on(big_source, tmp_path, sharded):
    before = digest(big_source)
    out = tmp_path / ("model" if sharded else "model.kf")
    started = time.perf_counter()
    subprocess.run(_pack_command(big_source, tmp_path / "reference", sharded), check=True)
    full = time.perf_counter() - started
    killed_with_litter = 0
    for fraction in (0.15, 0.35, 0.55, 0.75, 0.9):
        process = subprocess.Popen(_pack_command(big_source, out, sharded))
        # Kill at a fraction of the pack itself, counted from its first temporary: the
        # interpreter's start-up is most of a run now, and kills timed from the launch
        # could all land before the pack began writing.
        began = time.perf_counter()
        while process.poll() is None and time.perf_counter() - began < full:
            if any(f"{TEMP_MARK}{process.pid}-" in name for name in _litter(tmp_path, out.name)):
                break
            time.sleep(0.002)
        time.sleep(max(0.0, full - (time.perf_counter() - began)) * fraction)
        process.send_signal(signal.SIGKILL)
        process.wait()
        if out.exists():  # the kill came after the rename: then the output is complete
            assert not Container.open(str(out)).verify()
            break
        killed_with_litter += bool(_litter(tmp_path, out.name))
    assert killed_with_litter, "no kill landed while the pack was writing; the test proves nothing"
    subprocess.run(_pack_command(big_source, out, sharded), check=True)
    assert _litter(tmp_path, out.name) == []  # the dead packs' temporaries were swept
    with kformat.open(str(out)) as packed, kformat.open(str(tmp_path / "reference")) as reference:
        for name in reference:
            assert np.array_equal(packed[name].numpy(), reference[name].numpy())
    assert digest(big_source) == before


def test_the_sweep_spares_temporaries_of_live_writers(tmp_path):
    from kformat.packing.atomic import sweep_stale, temp_prefix

    target = tmp_path / "model.kf"
    mine = tmp_path / (temp_prefix(target) + "abc.tmp")  # this process is alive
    mine.write_bytes(b"x")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    theirs = tmp_path / f".model.kf.kformat-{dead.pid}-xyz.tmp"
    theirs.write_bytes(b"y")
    assert sweep_stale(tmp_path, "model.kf") == [theirs]
    assert mine.exists() and not theirs.exists()


# -- a reader killed mid-stream -------------------------------------------------------------------

READER = """
import sys, kformat
with kformat.open(sys.argv[1], simplecache={"cache_storage": sys.argv[2]}) as model:
    for name, tensor in model.stream():
        tensor.numpy()
        print(name, flush=True)
"""


def test_a_reader_killed_mid_download_leaves_the_cache_usable(packed, tmp_path):
    """fsspec's simplecache writes the download straight to its cache name, so a killed reader
    leaves a partial file there; kformat finds it short, drops it and reads again."""
    cache = tmp_path / "cache"
    with serve(packed.root, failures=1000, failure="slow") as server:
        url = f"simplecache::{server.url}/model.kf"
        reader = subprocess.Popen([sys.executable, "-c", READER, url, str(cache)], stdout=subprocess.PIPE)
        deadline = time.monotonic() + 20
        while not (cache.exists() and any(p.stat().st_size for p in cache.iterdir() if p.is_file())):
            assert time.monotonic() < deadline, "the reader never started its download"
            time.sleep(0.05)
        reader.kill()  # mid-download: the cache holds part of the file
        reader.wait()
        server.failures = 0
        full = (packed.root / "model.kf").stat().st_size
        copies = [p for p in cache.iterdir() if p.is_file() and p.stat().st_size]
        assert copies, "the killed reader left no cache file"
        for copy in copies:  # on a loaded machine the download can finish before the kill
            if copy.stat().st_size >= full:
                with open(copy, "r+b") as handle:
                    handle.truncate(full // 2)
        assert max(p.stat().st_size for p in copies) < full  # a partial copy
        with kformat.open(url, simplecache={"cache_storage": str(cache)}) as model:
            for name, tensor in model.stream():
                assert np.array_equal(tensor.numpy(), packed.expected[name])


def test_a_partial_cache_copy_heals_while_the_stream_prefetches(packed, tmp_path):
    """Prefetch threads read through the same caching layer while one of them evicts and
    downloads the copy again: none may see it half evicted or half written."""
    full = (packed.root / "model.kf").stat().st_size
    with serve(packed.root) as server:
        url = f"simplecache::{server.url}/model.kf"
        for attempt in range(6):
            cache = tmp_path / f"cache{attempt}"
            with kformat.open(url, simplecache={"cache_storage": str(cache)}) as model:
                list(model.stream())  # a complete copy, which is then cut short as a killed reader's
            (copy,) = [p for p in cache.iterdir() if p.is_file() and p.stat().st_size >= full]
            with open(copy, "r+b") as handle:
                handle.truncate(full // 3 + attempt * 4096)
            with kformat.open(url, simplecache={"cache_storage": str(cache)}) as model:
                for name, tensor in model.stream():
                    assert np.array_equal(tensor.numpy(), packed.expected[name])


# -- servers that drop, stall and fail --------------------------------------------------------------


def _short_timeout(seconds: float = 0.5) -> dict:
    import aiohttp

    return {"client_kwargs": {"timeout": aiohttp.ClientTimeout(total=None, sock_read=seconds)}}


@pytest.mark.parametrize("failure", ["500", "midbody", "stall"])
def test_a_server_failing_mid_stream_is_retried(packed, failure):
    with serve(packed.root, stall_seconds=30) as server:
        started = time.monotonic()
        with kformat.open(f"{server.url}/model.kf", **_short_timeout()) as model:
            server.failures = 2  # the next two requests fail, after the open
            for name, tensor in model.stream():
                assert np.array_equal(tensor.numpy(), packed.expected[name])
        assert time.monotonic() - started < 10  # two 0.5 s stalls and backoff, not 30 s


@pytest.mark.parametrize("failure", ["midbody", "stall"])
def test_a_server_that_keeps_failing_mid_body_is_reported_in_bounded_time(packed, failure):
    with serve(packed.root, stall_seconds=30) as server:
        with kformat.open(f"{server.url}/model.kf", **_short_timeout()) as model:
            server.failures, server.failure = 1000, failure
            started = time.monotonic()
            with pytest.raises(StorageError, match=r"model\.kf"):
                model["fc1.weight"].numpy()
            assert time.monotonic() - started < 10  # 4 tries x 0.5 s + 1.4 s backoff


def test_default_http_timeouts_are_bounded():
    from kformat.loading.store import READ_TIMEOUT_SECONDS, Store

    store = Store.from_url("http://127.0.0.1:9/model.kf")  # kformat's own HTTP reader
    assert store.http.options.read_timeout == READ_TIMEOUT_SECONDS and store.http.options.connect_timeout
    chained = Store.from_url("simplecache::http://127.0.0.1:9/model.kf")  # fsspec's, through a cache
    http = chained.fs.fs
    timeout = http.kwargs["timeout"] if "timeout" in http.kwargs else http.client_kwargs["timeout"]
    assert timeout.sock_read == READ_TIMEOUT_SECONDS and timeout.sock_connect


# -- concurrent readers -----------------------------------------------------------------------------


def _digests(url: str) -> dict[str, str]:
    with kformat.open(url) as model:
        return {name: hashlib.sha256(t.numpy().tobytes()).hexdigest() for name, t in model.stream()}


@pytest.mark.parametrize("where", ["file", "http"])
def test_concurrent_readers_agree(packed, nginx, where):
    url = str(packed.root / "model.kf") if where == "file" else nginx.url("model.kf")
    want = {name: hashlib.sha256(a.tobytes()).hexdigest() for name, a in packed.expected.items()}
    with kformat.open(url) as shared:  # one model, many threads
        with ThreadPoolExecutor(8) as pool:
            results = list(
                pool.map(
                    lambda name: (name, hashlib.sha256(shared[name].numpy().tobytes()).hexdigest()),
                    sorted(want) * 4,
                )
            )
    assert all(want[name] == got for name, got in results)
    with ThreadPoolExecutor(4) as pool:  # a model per thread
        assert all(r == want for r in pool.map(_digests, [url] * 4))
    with ProcessPoolExecutor(3) as pool:  # a model per process
        assert all(r == want for r in pool.map(_digests, [url] * 3))


# -- pinning a manifest -----------------------------------------------------------------------------


def test_a_pinned_manifest_is_the_only_one_accepted(packed, tmp_path, capsys):
    from kformat import cli
    from kformat.errors import IntegrityError, KFormatError

    url = str(packed.root / "model.kf")
    assert cli.main(["inspect", url]) == 0
    pin = capsys.readouterr().out.split("manifest sha256 ")[1].split()[0]
    with kformat.open(url, manifest_sha256=pin) as model:
        assert np.array_equal(model["fc1.weight"].numpy(), packed.expected["fc1.weight"])
    with kformat.open(
        str(packed.root / "model"), manifest_sha256=kformat.open(str(packed.root / "model")).manifest_sha256
    ):
        pass
    other = tmp_path / "other.kf"
    kformat.pack({"w": np.ones((4, 4), np.float32)}, other, "fp16")
    with pytest.raises(IntegrityError, match="pinned"):
        kformat.open(str(other), manifest_sha256=pin)
    with pytest.raises(KFormatError, match="64 hex digits"):
        kformat.open(url, manifest_sha256="abc")
    assert cli.main(["verify", str(other), "--manifest-sha256", pin]) == 1  # a finding: not the model
    assert "pinned" in capsys.readouterr().out
