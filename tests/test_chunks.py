"""The chunk pool: maps keep chunk order for every thread count; submitted work runs on the
pool when there is one, inline otherwise and inside the pool's own tasks (never deadlocks)."""

import threading

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
