"""Large outputs' pages: huge while they come cheap, small from the second slow one
(kformat.loading.mapped). The flags and residency are the kernel's own, read from smaps."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import numpy as np
import pytest

from kformat.loading import mapped

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux") or mapped._FLAGS is None or mapped._HUGE is None,
    reason="huge pages are advised on Linux only",
)

SIZE = 24 << 20  # 12 huge pages


def _areas(array: np.ndarray) -> list[dict]:
    """The kernel's areas (start, end, Rss bytes, VmFlags) covering `array`'s bytes."""
    first, last = array.ctypes.data, array.ctypes.data + array.nbytes
    areas, current = [], None
    with open("/proc/self/smaps") as smaps:
        for line in smaps:
            head = re.match(r"^([0-9a-f]+)-([0-9a-f]+) ", line)
            if head:
                start, end = int(head.group(1), 16), int(head.group(2), 16)
                current = {"start": start, "end": end} if start < last and end > first else None
                if current is not None:
                    areas.append(current)
            elif current is not None and line.startswith("Rss:"):
                current["rss"] = int(line.split()[1]) * 1024
            elif current is not None and line.startswith("VmFlags:"):
                current["flags"] = set(line.split()[1:])
    return areas


def _resident(array: np.ndarray) -> int:
    """Bytes of `array`'s pages in memory now (mincore(2): exactly its pages, whatever the
    kernel merged its mapping with)."""
    return _resident_at(array.ctypes.data, array.nbytes)


def _resident_at(address: int, nbytes: int) -> int:
    import ctypes
    import mmap

    libc = ctypes.CDLL(None, use_errno=True)
    pages = (nbytes + mmap.PAGESIZE - 1) // mmap.PAGESIZE
    vector = (ctypes.c_ubyte * pages)()
    assert address % mmap.PAGESIZE == 0
    libc.mincore.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p)
    assert libc.mincore(ctypes.c_void_p(address), ctypes.c_size_t(nbytes), vector) == 0
    return sum(byte & 1 for byte in vector) * mmap.PAGESIZE


@pytest.fixture
def fresh(monkeypatch):
    """Each test starts with huge pages tried and population available."""
    monkeypatch.setattr(mapped, "_huge_paused", False)
    monkeypatch.setattr(mapped, "_huge_seen", False)
    monkeypatch.setattr(mapped, "_POPULATE_WRITE", mapped.POPULATE_WRITE)  # (as a new process has it)
    return mapped


def test_cheap_huge_pages_back_the_whole_output_populated_at_once(fresh, monkeypatch):
    monkeypatch.setattr(mapped, "SLOW_HUGE_PAGE", float("inf"))  # every page comes cheap
    array = mapped.empty((SIZE // 4,), np.float32)
    areas = _areas(array)
    assert all("hg" in area["flags"] for area in areas)
    if mapped._POPULATE_WRITE is not None:  # (Linux 5.14+)
        assert _resident(array) == SIZE  # resident before anything is written
    assert not mapped._huge_paused


def test_at_the_second_slow_huge_page_the_rest_falls_back_to_small_pages_until_an_output_is_freed(
    fresh, monkeypatch
):
    if mapped._POPULATE_WRITE is None:
        pytest.skip("this kernel cannot populate (before 5.14): huge pages are only advised")
    monkeypatch.setattr(mapped, "SLOW_HUGE_PAGE", -1.0)  # every page is slow
    array = mapped.empty((SIZE // 4,), np.float32)
    if mapped._POPULATE_WRITE is None:
        pytest.skip("this kernel refused MADV_POPULATE_WRITE")
    areas = _areas(array)
    assert "hg" in areas[0]["flags"] and "nh" in areas[-1]["flags"]
    low, high = array.ctypes.data, array.ctypes.data + SIZE
    small = sum(min(a["end"], high) - max(a["start"], low) for a in areas if "nh" in a["flags"])
    assert small >= SIZE - 3 * mapped.HUGE_PAGE
    assert _resident(array) <= 3 * mapped.HUGE_PAGE  # the rest faults in as written
    assert mapped._huge_paused
    array[...] = 1.5  # the small pages work as any others
    assert float(array.sum()) == 1.5 * array.size

    monkeypatch.setattr(mapped, "SLOW_HUGE_PAGE", float("inf"))
    paused = mapped.empty((SIZE // 4,), np.float32)  # no huge pages tried while paused
    assert not any("hg" in area["flags"] for area in _areas(paused))
    del array  # an output freed: its pages are the system's to hand out again
    assert not mapped._huge_paused
    again = mapped.empty((SIZE // 4,), np.float32)
    assert all("hg" in area["flags"] for area in _areas(again))


def test_a_kernel_that_cannot_populate_only_advises_huge_pages(fresh, monkeypatch):
    monkeypatch.setattr(mapped, "_POPULATE_WRITE", 0x7FFF)  # an advice no kernel knows: EINVAL
    array = mapped.empty((SIZE // 4,), np.float32)
    assert mapped._POPULATE_WRITE is None and not mapped._huge_paused
    assert all("hg" in area["flags"] for area in _areas(array))
    array[...] = 2.0
    assert float(array.sum()) == 2.0 * array.size


def test_an_output_not_aligned_to_huge_pages_is_backed_whole(fresh, monkeypatch):
    monkeypatch.setattr(mapped, "SLOW_HUGE_PAGE", float("inf"))
    for nbytes in (mapped.MAPPED_ABOVE, mapped.HUGE_PAGE + 4096, 5 * mapped.HUGE_PAGE - 12):
        array = mapped.empty((nbytes,), np.uint8)
        array[...] = 7
        assert int(array.sum()) == 7 * nbytes


def test_a_population_refused_for_memory_leaves_the_array_advised_and_tries_again_next_time(
    fresh, monkeypatch
):
    import ctypes
    import errno

    calls = []

    def refusing(address, length, advice):
        calls.append((address, length, advice))
        ctypes.set_errno(errno.ENOMEM)
        return -1

    monkeypatch.setattr(mapped, "_MADVISE", refusing)
    array = mapped.empty((SIZE // 4,), np.float32)
    assert len(calls) == 1 and mapped._POPULATE_WRITE is not None and not mapped._huge_paused
    assert all("hg" in area["flags"] for area in _areas(array))
    array[...] = 1.0
    mapped.empty((SIZE // 4,), np.float32)
    assert len(calls) == 2


def test_a_population_is_handed_to_defer_when_given(fresh, monkeypatch):
    monkeypatch.setattr(mapped, "SLOW_HUGE_PAGE", float("inf"))
    handed = []
    array = mapped.empty((SIZE // 4,), np.float32, defer=handed.append)
    assert len(handed) == 1 and _resident(array) == 0  # nothing faulted in yet
    handed[0]()
    if mapped._POPULATE_WRITE is not None:
        assert _resident(array) == SIZE
    small = mapped.empty((10,), np.float32, defer=handed.append)  # (from numpy: nothing to hand)
    assert len(handed) == 1 and small.shape == (10,)


def test_where_the_first_population_gets_small_pages_huge_pages_are_only_advised(fresh, monkeypatch):
    monkeypatch.setattr(mapped, "SLOW_HUGE_PAGE", float("inf"))
    monkeypatch.setattr(mapped, "_on_huge_pages", lambda address: False)  # (or the system does not say)
    array = mapped.empty((SIZE // 4,), np.float32)
    assert mapped._POPULATE_WRITE is None and not mapped._huge_paused and not mapped._huge_seen
    areas = _areas(array)
    assert all("hg" in area["flags"] for area in areas)
    assert _resident(array) <= 2 * mapped.HUGE_PAGE  # the rest faults in as written
    array[...] = 0.5
    assert float(array.sum()) == 0.5 * array.size


def test_the_kernel_says_which_areas_have_huge_pages(fresh, monkeypatch):
    monkeypatch.setattr(mapped, "SLOW_HUGE_PAGE", float("inf"))
    array = mapped.empty((SIZE // 4,), np.float32)
    if mapped._huge_seen:  # (the system gave one: the check saw it)
        assert mapped._on_huge_pages(array.ctypes.data + SIZE // 2)
    small = np.ones(SIZE // 4, np.float32)  # numpy's heap pages...
    mmap_small = mapped.mmap.mmap(-1, SIZE, flags=mapped._FLAGS)  # ...and a mapping never advised
    plain = np.frombuffer(mmap_small, np.uint8)
    plain[:] = 1
    try:
        mode = Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text()
    except OSError:
        mode = ""
    if "[always]" not in mode:  # (with huge pages for every area, the plain one may have some)
        assert not mapped._on_huge_pages(plain.ctypes.data) and small.sum() > 0
    assert not mapped._on_huge_pages(0)  # (no area holds it)


def test_an_output_dropped_before_its_population_runs_is_not_populated(fresh, monkeypatch):
    monkeypatch.setattr(mapped, "SLOW_HUGE_PAGE", float("inf"))
    handed = []
    array = mapped.empty((SIZE // 4,), np.float32, defer=handed.append)
    kept = array.reshape(2, -1)[1]  # a view keeps it: populated
    del array
    handed.pop()()
    if mapped._POPULATE_WRITE is not None:
        assert _resident(kept) == SIZE // 2
    array = mapped.empty((SIZE // 4,), np.float32, defer=handed.append)
    address = array.ctypes.data
    del array, kept  # no view left: a load that failed at its first tile
    task = handed.pop()  # (it keeps the mapping itself, not the array)
    task()
    assert _resident_at(address, SIZE) == 0
