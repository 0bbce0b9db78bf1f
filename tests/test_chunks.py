"""The chunk pool: maps keep chunk order for every thread count; submitted work runs on the
pool when there is one, inline otherwise and inside the pool's own tasks (never deadlocks)."""

import gc
import threading
import time
import weakref
from concurrent.futures import ThreadPoolExecutor

import pytest

from kformat.methods import chunks


def test_maps_give_the_same_results_in_order_for_every_thread_count():
    expected = [(a, b) for a, b in chunks.spans(1000, 7)]
    for count in (1, 2, 3):
        with chunks.threads(count):
            assert chunks.map_chunks(lambda a, b: (a, b), 1000, 7) == expected


def test_submitted_work_runs_on_the_pool_or_inline():
    here = threading.current_thread().name
    assert chunks.submit(lambda: threading.current_thread().name).result() == here  # no pool
    with chunks.threads(2):
        where = chunks.submit(lambda: threading.current_thread().name).result()
        assert where.startswith("kformat-chunk")

        def nested():  # a pool task submitting and mapping: inline, in its own thread
            inner = chunks.submit(lambda: threading.current_thread().name).result()
            mapped = chunks.map_chunks(lambda a, b: threading.current_thread().name, 10, 1)
            return threading.current_thread().name, inner, set(mapped)

        outer, inner, mapped = chunks.submit(nested).result()
        assert inner == outer and mapped == {outer}


def test_a_failure_is_raised_by_result_on_the_pool_and_inline():
    def fail():
        raise ValueError("broken")

    inline = chunks.submit(fail)  # no pool: run now, raised when the result is taken
    with pytest.raises(ValueError, match="broken"):
        inline.result()
    with chunks.threads(2):
        with pytest.raises(ValueError, match="broken"):
            chunks.submit(fail).result()


def test_the_caller_does_its_own_items_when_the_pool_is_busy_and_results_stay_in_order():
    """A shared pool is FIFO: another tensor's tasks ahead of ours must not make us wait."""

    release = threading.Event()
    with ThreadPoolExecutor(1) as pool:
        blocker = pool.submit(release.wait)  # the pool's only thread is taken
        got = chunks.map_helping(pool, lambda x: (x, threading.get_ident()), list(range(50)), threads=2)
        assert [x for x, _ in got] == list(range(50))
        assert {ident for _, ident in got} == {threading.get_ident()}  # all done here, none queued
        assert not blocker.done()
        release.set()


def test_a_helping_map_keeps_nothing_alive_once_it_returns():
    """No reference cycle holds the items or fn: a tensor's arrays went only at the garbage
    collector's next pass (hundreds of MB after a VGG16 pack at two jobs)."""

    class Item:
        pass

    items = [Item() for _ in range(200)]
    watched = [weakref.ref(items[0]), weakref.ref(items[-1])]
    collecting = gc.isenabled()
    gc.disable()
    try:
        with ThreadPoolExecutor(2) as pool:
            got = chunks.map_helping(pool, lambda item: id(item), items, threads=3)
        assert len(got) == 200
        del items, got
        assert [ref() for ref in watched] == [None, None]
    finally:
        if collecting:
            gc.enable()


def test_helpers_share_the_items_and_a_failure_is_raised_after_the_helpers_stop():
    with ThreadPoolExecutor(3) as pool:
        got = chunks.map_helping(pool, lambda x: x * x, list(range(1000)), threads=4)
        assert got == [x * x for x in range(1000)]
        running = []

        def fail_at_7(x):
            running.append(x)
            time.sleep(0.001)
            running.remove(x)
            if x == 7:
                raise ValueError("item 7")
            return x

        with pytest.raises(ValueError, match="item 7"):
            chunks.map_helping(pool, fail_at_7, list(range(100)), threads=4)
        assert running == []  # no helper still at work when the error reaches the caller
    assert chunks.map_helping(None, str, [1, 2], threads=1) == ["1", "2"]  # one thread: no pool


class CountingPool(ThreadPoolExecutor):
    """A pool that counts the helpers handed to it."""

    def __init__(self, workers: int):
        super().__init__(workers)
        self.submitted = 0

    def submit(self, fn, /, *args, **kwargs):
        self.submitted += 1
        return super().submit(fn, *args, **kwargs)


def test_helpers_go_only_to_threads_no_tensor_occupies():
    """With every worker encoding a tensor of its own, a tensor's items run in its own thread;
    as workers free up, the caller recruits them between its items."""
    items = list(range(40))
    with CountingPool(2) as pool:
        with chunks.occupied(), chunks.occupied():  # both of two workers have a tensor
            assert chunks.map_helping(pool, lambda x: x + 1, items, threads=2) == [x + 1 for x in items]
        assert pool.submitted == 0
        with chunks.occupied():  # only the caller's: one helper, at most
            assert chunks.map_helping(pool, lambda x: x + 1, items, threads=2) == [x + 1 for x in items]
        assert pool.submitted == 1
        other = threading.Event()
        freed = threading.Event()

        def other_worker():
            with chunks.occupied():
                other.set()
                freed.wait()

        threading.Thread(target=other_worker).start()
        other.wait()
        pool.submitted = 0

        def item(x):
            if x == 5:
                freed.set()  # the other worker finishes its tensor midway
                time.sleep(0.05)
            return x

        with chunks.occupied():
            assert chunks.map_helping(pool, item, items, threads=2) == items
        assert pool.submitted == 1  # recruited once the other worker was free


def test_a_tensor_in_a_worker_process_holds_a_core_as_an_occupied_thread_does():
    """Beside a long pole the other tensors go to worker processes (kformat.packing.forked):
    while one holds a tensor, the pole's items stay in its own thread."""
    items = list(range(40))
    with CountingPool(2) as pool:
        try:
            chunks.elsewhere(1)
            with chunks.occupied():
                assert chunks.map_helping(pool, lambda x: x + 1, items, threads=2) == [x + 1 for x in items]
            assert pool.submitted == 0
            chunks.elsewhere(0)  # the process's tensor came back
            with chunks.occupied():
                assert chunks.map_helping(pool, lambda x: x + 1, items, threads=2) == [x + 1 for x in items]
            assert pool.submitted == 1
        finally:
            chunks.elsewhere(0)
