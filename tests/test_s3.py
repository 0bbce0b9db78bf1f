"""s3:// through s3fs against a real S3-compatible server (moto's server mode) on 127.0.0.1."""

import socket

import numpy as np
import pytest

import kformat
from kformat.cli import main

pytest.importorskip("s3fs")
boto3 = pytest.importorskip("boto3")
moto_server = pytest.importorskip("moto.server")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def s3():
    port = _free_port()
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    client = boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id="test",
        aws_secret_access_key="test",
        region_name="us-east-1",
    )
    client.create_bucket(Bucket="models")
    options = {"key": "test", "secret": "test", "endpoint_url": endpoint}
    yield client, options
    server.stop()


def _upload(client, local, prefix):
    paths = [local] if local.is_file() else sorted(p for p in local.rglob("*") if p.is_file())
    for path in paths:
        key = prefix if local.is_file() else f"{prefix}/{path.relative_to(local)}"
        client.upload_file(str(path), "models", key)


@pytest.fixture
def model(tmp_path):
    rng = np.random.default_rng(0)
    return {
        "fc1.weight": rng.standard_normal((300, 200)).astype(np.float32),
        "fc1.bias": rng.standard_normal(300).astype(np.float32),
        "fc2.weight": rng.standard_normal((10, 300)).astype(np.float32),
    }


@pytest.mark.parametrize("layout", ["single", "sharded"])
def test_models_load_and_verify_from_s3(tmp_path, s3, model, layout):
    client, options = s3
    local = tmp_path / ("m.kf" if layout == "single" else "published")
    kformat.pack(model, local, "mobile", layout=layout, shard_size=100_000)
    url = f"s3://models/{layout}/{'m.kf' if layout == 'single' else 'published'}"
    _upload(client, local, url.removeprefix("s3://models/"))
    expected = kformat.load_all(str(local))
    with kformat.open_model(url, **options) as remote:
        assert list(remote) == list(expected)
        opened = remote.bytes_read  # the header and manifest only
        for name, array in expected.items():
            np.testing.assert_array_equal(remote[name].numpy(), array)
        assert opened < remote.bytes_read
    assert kformat.verify(url, **options) == []
    storage = [f"--storage-option={k}={v}" for k, v in options.items()]
    assert main(["verify", url, *storage, "-q"]) == 0
    assert main(["unpack", url, "-o", str(tmp_path / "back.npz"), *storage, "-q"]) == 0
    assert sorted(np.load(tmp_path / "back.npz").files) == sorted(model)


def test_a_damaged_object_on_s3_is_named(tmp_path, s3, model):
    client, options = s3
    kformat.pack(model, tmp_path / "m.kf", "kmeans4")
    data = bytearray((tmp_path / "m.kf").read_bytes())
    data[-10] ^= 0xFF
    client.put_object(Bucket="models", Key="bad/m.kf", Body=bytes(data))
    problems = kformat.verify("s3://models/bad/m.kf", **options)
    assert problems and "hash mismatch" in problems[0].message
    with pytest.raises(kformat.NotFound):
        kformat.open_model("s3://models/none/m.kf", **options)
