"""glibc's malloc thresholds (kformat.heap): set once, never lowered, and never where the
process chose its own; set by whole-tensor reads, not by streamed products; and in a fresh
process, really in effect after a load."""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys

import numpy as np
import pytest

import kformat
from kformat import heap
from kformat.loading import overlap

MIB = 1 << 20


@pytest.fixture
def mallopt(monkeypatch):
    """The calls heap makes to mallopt, recorded instead of made; a process that set nothing."""
    calls: list[tuple[int, int]] = []
    monkeypatch.setattr(heap, "_MALLOPT", lambda param, value: calls.append((param, value)) or 1)
    monkeypatch.setattr(heap, "_set", (0, 0))
    for name in ("KFORMAT_KEEP_FREED", "GLIBC_TUNABLES", *heap.OWN_CHOICE):
        monkeypatch.delenv(name, raising=False)
    return calls


STEADY_CALLS = [(heap.M_MMAP_THRESHOLD, 32 * MIB), (heap.M_TRIM_THRESHOLD, 64 * MIB)]
KEPT_CALLS = [(heap.M_MMAP_THRESHOLD, 64 * MIB), (heap.M_TRIM_THRESHOLD, 128 * MIB)]


def test_a_large_load_sets_glibcs_steady_thresholds_once(mallopt):
    heap.for_loading(heap.LARGE_LOAD - 1)  # (a small load pays little of glibc's warm-up)
    assert mallopt == []
    heap.for_loading(heap.LARGE_LOAD)
    heap.for_loading(heap.LARGE_LOAD)
    assert mallopt == STEADY_CALLS


@pytest.mark.parametrize(
    "name, value",
    [
        ("KFORMAT_KEEP_FREED", "0"),
        ("MALLOC_TRIM_THRESHOLD_", "65536"),
        ("MALLOC_MMAP_THRESHOLD_", "131072"),
        ("GLIBC_TUNABLES", "glibc.malloc.trim_threshold=65536"),
    ],
)
def test_a_process_that_chose_its_own_keeps_it(mallopt, monkeypatch, name, value):
    monkeypatch.setenv(name, value)
    heap.for_loading(heap.LARGE_LOAD)
    assert mallopt == []


def test_other_tunables_are_not_a_choice_of_thresholds(mallopt, monkeypatch):
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.cpu.hwcaps=-AVX512F")
    heap.for_loading(heap.LARGE_LOAD)
    assert mallopt == STEADY_CALLS


def test_kformats_own_processes_keep_more(mallopt, monkeypatch):
    monkeypatch.setenv("KFORMAT_KEEP_FREED", "1")
    heap.for_loading(heap.LARGE_LOAD)
    assert mallopt == KEPT_CALLS


def test_thresholds_are_raised_never_lowered(mallopt):
    heap.glibc_steady()
    heap.keep_freed_memory()
    heap.glibc_steady()  # (after keep_freed_memory: nothing)
    assert mallopt == STEADY_CALLS + KEPT_CALLS


def test_whole_tensor_reads_set_them_and_streamed_products_do_not(tmp_path, monkeypatch):
    """A load of whole tensors wants speed (its first load in a process paid glibc's warm-up);
    a product streamed tile by tile wants its small footprint, so it keeps glibc's defaults."""
    w = np.random.default_rng(0).standard_normal((512, 64)).astype(np.float32)
    kformat.pack({"w": w}, tmp_path / "m.kf", "kmeans4", rules=["w=kmeans:4,tile=64x64"])
    calls = []
    monkeypatch.setattr(overlap, "for_loading", calls.append)
    with kformat.open(str(tmp_path / "m.kf")) as model:
        model["w"].matmul(np.ones(64, np.float32))
        assert calls == []
        model["w"].numpy()
    assert calls == [w.nbytes]
    kformat.load_all(str(tmp_path / "m.kf"))
    assert calls == [w.nbytes, w.nbytes]


MAPPED_AFTER_LOAD = """if True:
    import ctypes, sys
    import numpy as np
    import kformat

    class MallInfo2(ctypes.Structure):
        _fields_ = [(n, ctypes.c_size_t) for n in
                    ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
                     "uordblks", "fordblks", "keepcost")]

    libc = ctypes.CDLL(None)
    libc.mallinfo2.restype = MallInfo2
    kformat.load_all(sys.argv[1])
    before = libc.mallinfo2().hblkhd
    block = np.ones(16 << 20, np.uint8)  # 16 MiB: above glibc's starting threshold
    print(libc.mallinfo2().hblkhd - before >= 16 << 20)
"""


def _mallinfo2() -> bool:
    try:
        return hasattr(ctypes.CDLL(None), "mallinfo2")
    except OSError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux") or not _mallinfo2(), reason="glibc 2.33+ only")
def test_in_a_fresh_process_a_16_mib_block_comes_from_the_heap_after_a_load(tmp_path):
    """Measured, not assumed: glibc's own counters say whether a 16 MiB block was mapped
    afresh (its default) or taken from the heap (the thresholds kformat set)."""
    big = np.ones(heap.LARGE_LOAD // 4, np.float32).reshape(-1, 4096)  # a load of LARGE_LOAD bytes
    kformat.pack({"w": big}, tmp_path / "m.kf", "fp16")

    def mapped(**extra: str) -> str:
        chosen = ("KFORMAT_KEEP_FREED", "GLIBC_TUNABLES", *heap.OWN_CHOICE)
        env = {k: v for k, v in os.environ.items() if k not in chosen}
        env.update(extra)
        command = [sys.executable, "-c", MAPPED_AFTER_LOAD, str(tmp_path / "m.kf")]
        out = subprocess.run(command, capture_output=True, text=True, env=env, check=True)
        return out.stdout.strip()

    assert mapped() == "False"
    assert mapped(KFORMAT_KEEP_FREED="0") == "True"
