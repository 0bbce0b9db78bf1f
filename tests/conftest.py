import numpy as np
import pytest

from kformat.sources import DictSource


def small_model(seed: int = 0) -> dict[str, np.ndarray]:
    """FC-heavy toy model with a conv, vectors, an integer buffer and odd sizes."""
    rng = np.random.default_rng(seed)
    return {
        "features.0.weight": (rng.standard_normal((16, 8, 3, 3)) * 0.2).astype(np.float32),
        "features.0.bias": (rng.standard_normal(16) * 0.01).astype(np.float32),
        "fc1.weight": (rng.standard_normal((300, 520)) * np.sqrt(2 / 520)).astype(np.float32),
        "fc1.bias": np.zeros(300, np.float32),
        "fc2.weight": (rng.standard_normal((10, 300)) * np.sqrt(2 / 300)).astype(np.float32),
        "fc2.bias": np.zeros(10, np.float32),
        "bn.num_batches_tracked": np.array(7, dtype=np.int64),
    }


@pytest.fixture
def model():
    return small_model()


@pytest.fixture
def source(model):
    return DictSource(model)


# -- served models: one packed small model, reachable as file://, memory:// and http:// -----

import os  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
import uuid  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402

import fsspec  # noqa: E402

import kformat  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))
from local_nginx import LocalNginx, NginxUnavailable  # noqa: E402

# fc1 cut into a 5x5 grid of tiles so that streaming crosses row bands and column tiles.
SERVED_RULES = ["fc1.weight=kmeans:4,tile=64x128", "fc2.weight=linear:8,row,tile=4x128"]


@dataclass
class Packed:
    root: Path  # holds model.kf (single), model/ (sharded), and broken copies of model/
    expected: dict[str, np.ndarray]


def _corrupt_copy(root: Path, name: str, tensor: str) -> None:
    shutil.copytree(root / "model", root / name)
    with kformat.open(str(root / name)) as m:
        entry = m[tensor].entry
        shard = m.manifest.shards[entry.tiles[0].blob.shard].name
        offset = entry.tiles[0].blob.offset
    path = root / name / "shards" / shard
    if name == "missing":
        path.unlink()
        return
    data = bytearray(path.read_bytes())
    data[offset + entry.tiles[0].blob.length // 2] ^= 0x55
    path.write_bytes(bytes(data))


@pytest.fixture(scope="session")
def packed(tmp_path_factory) -> Packed:
    root = tmp_path_factory.mktemp("served")
    os.chmod(root, 0o755)
    model = small_model()
    kformat.pack(model, root / "model.kf", "mobile", rules=SERVED_RULES)
    kformat.pack(model, root / "model", "mobile", rules=SERVED_RULES, layout="sharded", shard_size=24000)
    _corrupt_copy(root, "missing", "fc1.weight")
    _corrupt_copy(root, "corrupt", "fc1.weight")
    return Packed(root, kformat.load_all(str(root / "model.kf")))


@pytest.fixture(scope="session")
def nginx(packed):
    server = LocalNginx(packed.root)
    try:
        server.start()
    except NginxUnavailable as exc:
        if os.environ.get("KFORMAT_REQUIRE_NGINX"):
            pytest.fail(f"the HTTP tests need nginx: {exc}")
        pytest.skip(f"nginx unavailable: {exc}")
    yield server
    server.stop()


@dataclass
class Served:
    backend: str
    base: str  # URL prefix; base + "model.kf", base + "model/" ...
    nginx: LocalNginx | None = None

    def url(self, name: str) -> str:
        return self.base + name


def _to_memory(root: Path) -> str:
    fs = fsspec.filesystem("memory")
    prefix = f"/kformat-tests-{uuid.uuid4().hex}"
    for path in root.rglob("*"):
        if path.is_file():
            fs.pipe(f"{prefix}/{path.relative_to(root).as_posix()}", path.read_bytes())
    return f"memory://{prefix}/"


@pytest.fixture(scope="session", params=["file", "memory", "http"])
def served(request, packed) -> Served:
    if request.param == "file":
        return Served("file", packed.root.as_uri() + "/")
    if request.param == "memory":
        return Served("memory", _to_memory(packed.root))
    server = request.getfixturevalue("nginx")
    return Served("http", server.url(""), server)


# -- property tests: the same examples on every run (a failure is reproducible) ---------------
from hypothesis import settings  # noqa: E402

settings.register_profile("kformat", derandomize=True, deadline=None, print_blob=True)
settings.load_profile("kformat")
