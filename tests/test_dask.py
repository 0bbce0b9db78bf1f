"""Distributed packing against a real dask.distributed scheduler and two worker processes,
started as the `dask scheduler` / `dask worker` commands on 127.0.0.1."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import kformat
from kformat.errors import QuantizationError, StorageError
from kformat.synthetic import small_vgg_weights

pytest.importorskip("distributed")

BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """(scheduler address, worker processes) of a fresh cluster; torn down after the module."""
    work = tmp_path_factory.mktemp("dask")
    info = work / "scheduler.json"
    env = {**os.environ, "DASK_DISTRIBUTED__WORKER__DAEMON": "False"}
    scheduler = subprocess.Popen(
        [str(BIN / "dask"), "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
         "--scheduler-file", str(info)],
        cwd=work, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    workers = None
    try:
        deadline = time.monotonic() + 60
        while not info.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert info.exists(), "the dask scheduler did not start"
        address = json.loads(info.read_text())["address"]
        workers = subprocess.Popen(
            [str(BIN / "dask"), "worker", address, "--nworkers", "2", "--nthreads", "1",
             "--host", "127.0.0.1", "--no-dashboard", "--memory-limit", "2GiB"],
            cwd=work, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        from distributed import Client

        with Client(address, timeout="30s") as client:
            client.wait_for_workers(2, timeout=60)
            pids = set(client.run(os.getpid).values())
        assert len(pids) == 2 and os.getpid() not in pids  # real worker processes
        yield address
    finally:
        for process in (workers, scheduler):
            if process is not None:
                process.terminate()
                try:
                    process.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    process.kill()


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "vgg.npz"
    np.savez(path, **small_vgg_weights(seed=4))
    return path


@pytest.mark.parametrize("recipe,layout", [("mobile", "single"), ("kmeans4", "sharded")])
def test_distributed_pack_is_byte_identical_to_a_local_pack(cluster, model, tmp_path, recipe, layout):
    local = kformat.pack(model, tmp_path / "local.kf", recipe, layout=layout, shard_size=1 << 20)
    remote = kformat.pack(
        model, tmp_path / "remote.kf", recipe, layout=layout, shard_size=1 << 20, scheduler=cluster
    )
    assert remote.manifest_sha256 == local.manifest_sha256
    files = (
        (lambda p: {q.relative_to(p): q.read_bytes() for q in p.rglob("*") if q.is_file()})
        if (layout == "sharded")
        else (lambda p: {"": p.read_bytes()})
    )
    assert files(tmp_path / "remote.kf") == files(tmp_path / "local.kf")
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert leftovers == []  # the staging parts are gone


def test_in_memory_sources_are_scattered_and_staging_can_be_any_url(cluster, tmp_path):
    weights = {k: v for k, v in small_vgg_weights(seed=5).items() if k.startswith("classifier")}
    staging = tmp_path / "shared" / "staging"
    local = kformat.pack(weights, tmp_path / "local.kf", "q8")
    remote = kformat.pack(
        weights, tmp_path / "remote.kf", "q8", scheduler=cluster, staging=f"file://{staging}"
    )
    assert (tmp_path / "remote.kf").read_bytes() == (tmp_path / "local.kf").read_bytes()
    assert remote.manifest_sha256 == local.manifest_sha256
    assert not staging.exists()


def test_a_failing_task_fails_the_pack_and_leaves_nothing(cluster, tmp_path):
    weights = {"good": np.ones((64, 64), np.float32), "bad": np.full((64, 64), np.nan, np.float32)}
    path = tmp_path / "bad.npz"
    np.savez(path, **weights)
    with pytest.raises(QuantizationError, match="'bad'.*not finite"):
        kformat.pack(path, tmp_path / "out.kf", rules=["*=kmeans:4"], scheduler=cluster)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.npz"]


def test_an_unreachable_scheduler_is_a_clear_error(model, tmp_path, monkeypatch):
    monkeypatch.setenv("KFORMAT_DASK_CONNECT_TIMEOUT", "2")
    with pytest.raises(StorageError, match="cannot reach the Dask scheduler at tcp://127.0.0.1:9"):
        kformat.pack(model, tmp_path / "out.kf", "fp16", scheduler="tcp://127.0.0.1:9")
    assert not (tmp_path / "out.kf").exists()


def test_cli_pack_on_the_cluster(cluster, model, tmp_path):
    out = tmp_path / "cli.kf"
    result = subprocess.run(
        [
            str(BIN / "kformat"),
            "pack",
            str(model),
            "-o",
            str(out),
            "-r",
            "kmeans4",
            "--scheduler",
            cluster,
            "-q",
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert kformat.verify(str(out)) == []
    bad = subprocess.run(
        [
            str(BIN / "kformat"),
            "pack",
            str(model),
            "-o",
            str(tmp_path / "x.kf"),
            "--scheduler",
            "tcp://127.0.0.1:9",
        ],
        env={**os.environ, "KFORMAT_DASK_CONNECT_TIMEOUT": "2"},
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2 and "Dask scheduler" in bad.stderr and "Traceback" not in bad.stderr
    assert not (tmp_path / "x.kf").exists()


def test_a_calibrated_pack_on_the_cluster_is_the_local_one(cluster, tmp_path):
    """Importance reaches the workers, and the manifest counts the tensors it weighed (each
    part says so): the same bytes as a local pack."""
    weights = {k: v for k, v in small_vgg_weights(seed=6).items() if k.startswith("classifier")}
    rng = np.random.default_rng(0)
    importance = {
        k: rng.uniform(0.1, 2, v.shape[-1]).astype(np.float32) for k, v in weights.items() if v.ndim == 2
    }
    np.savez(tmp_path / "importance.npz", **importance)
    options = dict(rules=["*=kmeans:4"], importance=tmp_path / "importance.npz")
    local = kformat.pack(weights, tmp_path / "local.kf", **options)
    remote = kformat.pack(weights, tmp_path / "remote.kf", scheduler=cluster, **options)
    assert remote.manifest.metadata["kformat.importance.tensors"] == str(len(importance))
    assert local.manifest.metadata == remote.manifest.metadata
    assert (tmp_path / "remote.kf").read_bytes() == (tmp_path / "local.kf").read_bytes()
