"""Large outputs' pages: huge while they come cheap, small from the second slow one
(kformat.loading.mapped). The flags and residency are the kernel's own, read from smaps."""

from __future__ import annotations

import re
import sys

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


@pytest.fixture
def fresh(monkeypatch):
    """Each test starts with huge pages tried and population available."""
    monkeypatch.setattr(mapped, "_huge_paused", False)
    monkeypatch.setattr(mapped, "_POPULATE_WRITE", mapped._POPULATE_WRITE)
    return mapped


def test_cheap_huge_pages_back_the_whole_output_populated_at_once(fresh, monkeypatch):
    monkeypatch.setattr(mapped, "SLOW_HUGE_PAGE", float("inf"))  # every page comes cheap
    array = mapped.empty((SIZE // 4,), np.float32)
    areas = _areas(array)
    assert all("hg" in area["flags"] for area in areas)
    if mapped._POPULATE_WRITE is not None:  # (Linux 5.14+)
        assert sum(area["rss"] for area in areas) >= SIZE  # resident before anything is written
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
    assert sum(area["rss"] for area in areas) <= 3 * mapped.HUGE_PAGE  # the rest faults in as written
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
    import errno
    import mmap

    calls = []

    class Refusing(mmap.mmap):
        def madvise(self, option, *span):
            if option == mapped._POPULATE_WRITE:
                calls.append(span)
                raise OSError(errno.ENOMEM, "Cannot allocate memory")
            return super().madvise(option, *span)

    monkeypatch.setattr(mapped.mmap, "mmap", Refusing)
    array = mapped.empty((SIZE // 4,), np.float32)
    assert len(calls) == 1 and mapped._POPULATE_WRITE is not None and not mapped._huge_paused
    array[...] = 1.0
    mapped.empty((SIZE // 4,), np.float32)
    assert len(calls) == 2
