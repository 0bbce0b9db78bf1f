"""read_all: tensors overlap on the decode threads, yet come out whole, in order, and an
error stops the read at the tensor it concerns."""

import numpy as np
import pytest

import kformat
from kformat.errors import DecodeError
from kformat.loading import overlap
from kformat.loading.container import Container
from kformat.recipe import recipe_from_dict


@pytest.fixture
def packed(tmp_path):
    rng = np.random.default_rng(3)
    model = {}
    for i, rows in enumerate([300, 7, 160, 1, 90, 256]):
        model[f"layer{i}.weight"] = rng.standard_normal((rows, 96)).astype(np.float32)
        model[f"layer{i}.bias"] = rng.standard_normal(rows).astype(np.float32)
    recipe = recipe_from_dict({"default": "kmeans:4", "tile": [32, 48], "min_elements": 1})
    out = tmp_path / "m.kf"
    kformat.pack(model, out, recipe, rules=["*.bias=raw"])
    return out


def _events(container: Container, monkeypatch) -> list[tuple[str, str]]:
    """("allocated" | "handed out", name) in the order they happen during read_all."""
    events = []
    output = container.output

    def spy(t):
        events.append(("allocated", t.name))
        return output(t)

    monkeypatch.setattr(container, "output", spy)
    for name, _ in container.read_all():
        events.append(("handed out", name))
    return events


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_every_tensor_whole_and_in_file_order(packed, threads):
    with Container.open(str(packed)) as c:
        c.decode_threads = threads
        names = [t.name for t in c.manifest.tensors]
        got = list(c.read_all())
        assert [n for n, _ in got] == names
        for name, array in got:
            assert np.array_equal(array, c.read_tensor(name))


def test_the_next_tensor_starts_before_the_current_one_is_handed_out(packed, monkeypatch):
    with Container.open(str(packed)) as c:
        c.decode_threads = 2
        events = _events(c, monkeypatch)
    ahead = [
        i
        for i, (kind, name) in enumerate(events)
        if kind == "allocated" and i and events[i - 1][0] == "allocated"
    ]
    assert ahead, events  # some tensor was allocated while the one before it was still decoding


def test_tensors_started_ahead_stay_within_the_bound(packed, monkeypatch):
    monkeypatch.setattr(overlap, "OVERLAP_BYTES", 1)  # then at most one tensor ahead
    with Container.open(str(packed)) as c:
        c.decode_threads = 2
        events = _events(c, monkeypatch)
    unfinished = 0
    for kind, _ in events:
        unfinished += 1 if kind == "allocated" else -1
        assert unfinished <= 2


def test_an_error_stops_the_read_at_its_tensor(packed, monkeypatch):
    fill_tile = overlap.fill_tile

    def failing(tensor, tile, *args):
        if tensor.name == "layer2.weight" and tile.row >= 64:
            raise DecodeError(f"tensor {tensor.name!r}: a bad tile")
        return fill_tile(tensor, tile, *args)

    monkeypatch.setattr(overlap, "fill_tile", failing)
    handed = []
    with Container.open(str(packed)) as c:
        c.decode_threads = 2
        names = [t.name for t in c.manifest.tensors]
        with pytest.raises(DecodeError, match="layer2.weight"):
            for name, _ in c.read_all():
                handed.append(name)
    assert handed == names[: names.index("layer2.weight")]  # every tensor before it, none after
    assert len(handed) >= 2


def test_lazy_read_decodes_into_the_arrays_it_is_given(packed):
    """LazyModel.read (what kformat.torch.load_state_dict fills parameters with): each tensor
    decodes into the array `output` gives, or a new one for None, in the order asked."""
    given = {}

    def output(name):
        if name.endswith(".bias"):
            return None
        given[name] = np.full(model[name].view, np.nan, np.float32)
        return given[name]

    with kformat.open_model(str(packed)) as model:
        order = [n for n in reversed(list(model))]
        got = list(model.read(order, output))
        assert [n for n, _ in got] == order
        for name, values in got:
            assert np.array_equal(values, model[name].numpy())
            if name in given:
                assert np.shares_memory(values, given[name])
    assert given
