"""Packing starts a dominant tensor first, out of file order: the file must not show it (same
bytes for every --jobs, tensors in file order), and a failure in that tensor must still
leave nothing behind."""

import threading

import numpy as np
import pytest

import kformat
from kformat.errors import KFormatError
from kformat.packing import writer
from kformat.recipe import PRESETS, plan, recipe_from_dict


def model(rng) -> dict[str, np.ndarray]:
    """Small layers, then one holding most of the weights, then small ones again."""
    weights = {}
    for i in range(4):
        weights[f"conv{i}.weight"] = rng.standard_normal((16, 8, 3, 3)).astype(np.float32)
        weights[f"conv{i}.bias"] = rng.standard_normal(16).astype(np.float32)
    weights["fc1.weight"] = rng.standard_normal((512, 384)).astype(np.float32)
    weights["fc1.bias"] = rng.standard_normal(512).astype(np.float32)
    weights["fc2.weight"] = rng.standard_normal((10, 512)).astype(np.float32)
    return weights


def test_the_long_pole_is_the_dominant_tensor_and_only_with_several_jobs():
    weights = model(np.random.default_rng(0))
    decisions, _ = plan(
        recipe_from_dict(PRESETS["mobile"]), [(n, a.shape, a.dtype.name) for n, a in weights.items()]
    )
    sizes = {n: a.nbytes for n, a in weights.items()}
    assert writer._long_pole(decisions, sizes, 2).name == "fc1.weight"
    assert writer._long_pole(decisions, sizes, 1) is None
    even = {n: 1000 for n in sizes}  # no tensor holds a third of the model
    assert writer._long_pole(decisions, even, 2) is None
    lone = {decisions[0].name: sizes[decisions[0].name]}
    assert writer._long_pole(decisions[:1], lone, 2) == decisions[0]  # a lone tensor: all threads
    assert writer._long_pole(decisions[:1], lone, 1) is None


@pytest.mark.parametrize("recipe", ["mobile", "kmeans4"])
def test_every_jobs_count_writes_the_same_bytes_in_file_order(tmp_path, recipe):
    weights = model(np.random.default_rng(1))
    outputs = []
    for jobs in (1, 2, 3):
        path = tmp_path / f"{recipe}-{jobs}.kf"
        kformat.pack(weights, path, recipe, jobs=jobs)
        outputs.append(path.read_bytes())
    assert outputs[0] == outputs[1] == outputs[2]
    with kformat.open(str(tmp_path / f"{recipe}-2.kf")) as f:
        assert list(f.keys()) == list(weights)


def test_a_failing_long_pole_leaves_nothing(tmp_path):
    weights = model(np.random.default_rng(2))
    weights["fc1.weight"][7, 3] = np.nan
    path = tmp_path / "out.kf"
    with pytest.raises(KFormatError, match="fc1.weight"):
        kformat.pack(weights, path, "kmeans4", jobs=2)
    assert list(tmp_path.iterdir()) == []


def test_tensors_behind_the_long_pole_keep_coming_and_are_written_in_file_order():
    """Admission counts the tensors still being encoded (the long pole apart) and caps the
    bytes of finished ones waiting for their turn; writing stays in file order."""
    from collections import deque
    from concurrent.futures import Future

    from kformat.packing.admission import make_room

    def finished(value):
        f = Future()
        f.set_result(value)
        return f

    pole, written = Future(), []
    write = lambda future: written.append(future.result())  # noqa: E731 - what the packer's writes do
    pending = deque([(pole, 100), (finished("b"), 10), (finished("c"), 10)])
    make_room(pending, write, window=2, budget=100, pole=pole)
    assert written == [] and len(pending) == 3  # nothing passes the pole, and none waits
    busy = Future()
    pending.append((busy, 10))
    pending.append((Future(), 10))
    threading.Timer(0.05, busy.set_result, ["d"]).start()
    make_room(pending, write, window=2, budget=100, pole=pole)  # waits for one of two
    assert busy.done() and written == []
    pending = deque([(pole, 100), (finished("b"), 60), (finished("c"), 60)])
    threading.Timer(0.05, pole.set_result, ["a"]).start()
    make_room(pending, write, window=2, budget=100, pole=pole)  # over budget: head waited for
    assert written == ["a", "b", "c"] and not pending


def test_finished_tensors_count_the_bytes_they_hold_not_their_input():
    """A finished tensor waits holding its blobs and tables (held_bytes), a fraction of its
    input: counted at input size, finished BERT layers filled the budget behind the word
    embeddings with a tenth of it held, and the worker processes waited for work."""
    from collections import deque
    from concurrent.futures import Future

    from kformat.packing.admission import make_room

    class Held:
        def __init__(self, name, held_bytes):
            self.name, self.held_bytes = name, held_bytes

    def finished(value):
        f = Future()
        f.set_result(value)
        return f

    failed = Future()
    failed.set_exception(ValueError("its turn will raise it"))
    head, written = Future(), []
    write = lambda future: written.append(future.result())  # noqa: E731 - what the packer's writes do
    pending = deque([(head, 100), *((finished(Held(n, 10)), 60) for n in "bcd"), (failed, 60)])
    threading.Timer(0.2, head.set_result, [Held("a", 0)]).start()
    make_room(pending, write, window=2, budget=100)  # 30 bytes held, not 240: no wait
    assert written == [] and len(pending) == 5
    pending.append((finished(Held("e", 80)), 60))  # now 110 held: the head is waited for
    with pytest.raises(ValueError, match="its turn"):
        make_room(pending, write, window=2, budget=100)
    assert [h.name for h in written] == ["a", "b", "c", "d"]
