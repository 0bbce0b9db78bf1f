import numpy as np
import pytest

from kformat.io import DictSource


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
