"""What kformat opens, loads and packs is freed when the last reference goes, with no pass of
the garbage collector, and an unclosed model's files are closed then. Reference cycles had
kept a container's open files, manifest and tables (one container of a BERT-shaped model:
1,400 objects), and after a pack at two jobs a tensor's arrays (hundreds of MB of VGG16's),
until the collector's next pass; a dropped reader's descriptors stayed open for good."""

import gc
import os
import weakref

import pytest

import kformat
from kformat.sources.safetensors import write_safetensors


def kformat_garbage(action) -> list[str]:
    """The kformat objects `action` leaves in reference cycles (collected with DEBUG_SAVEALL)."""
    gc.collect()
    collecting = gc.isenabled()
    gc.disable()
    try:
        action()
        gc.set_debug(gc.DEBUG_SAVEALL)
        gc.collect()
        return sorted({type(o).__qualname__ for o in gc.garbage if type(o).__module__.startswith("kformat")})
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        if collecting:
            gc.enable()


@pytest.fixture
def packed(tmp_path, model):
    path = tmp_path / "m.kf"
    kformat.pack(model, path, "mobile")
    return path


def test_loading_inspecting_and_verifying_leave_no_cycles(packed, tmp_path):
    assert kformat_garbage(lambda: kformat.load_all(packed)) == []
    assert kformat_garbage(lambda: kformat.inspect(packed)) == []
    assert kformat_garbage(lambda: kformat.verify(packed)) == []
    assert kformat_garbage(lambda: kformat.unpack(packed, tmp_path / "out.safetensors")) == []

    def read_some():
        with kformat.open(str(packed)) as model:
            model["fc1.weight"].numpy()
            model["fc1.weight"][3:9, 10:20]

    assert kformat_garbage(read_some) == []


def test_a_model_never_closed_is_freed_with_its_files_when_dropped(packed):
    collecting = gc.isenabled()
    gc.disable()
    try:
        model = kformat.open(str(packed))
        model["fc2.weight"].numpy()
        container = weakref.ref(model.container)
        del model
        assert container() is None  # freed at once
    finally:
        if collecting:
            gc.enable()


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts descriptors in /proc")
def test_a_model_never_closed_closes_its_files_when_dropped(packed):
    """A descriptor is an int: freeing the reader left it open, one per unclosed model."""
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(5):
        model = kformat.open(str(packed))
        model["fc2.weight"].numpy()
        del model
    assert len(os.listdir("/proc/self/fd")) == before


@pytest.mark.parametrize("jobs", [1, 2])
def test_packing_leaves_no_cycles(tmp_path, model, jobs):
    source = tmp_path / "m.safetensors"
    write_safetensors(source, model.items())
    assert kformat_garbage(lambda: kformat.pack(str(source), tmp_path / "out.kf", "q4", jobs=jobs)) == []
    assert kformat_garbage(lambda: kformat.pack(model, tmp_path / "mem.kf", "mobile", jobs=jobs)) == []
