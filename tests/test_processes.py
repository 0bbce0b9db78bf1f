"""Allocation's estimates of large tensors fitted in forked worker processes: the same
numbers and bytes as in one process, children that neither hang on the parent's thread
pool nor lose work when a worker dies."""

import importlib
import os
import threading
import time

import numpy as np
import pytest

import kformat
from kformat import heap
from kformat.methods import chunks, kmeans_fit
from kformat.methods.kmeans_allocation import whole_key
from kformat.packing import processes, weighing
from kformat.methods.kmeans import KMeans
from kformat.packing.estimated import Batch, estimated_candidates, summarized
from kformat.packing.weighing import estimate
from kformat.recipe.recipe import load_recipe
from kformat.sources import DictSource

PARENT = os.getpid()


def model():
    rng = np.random.default_rng(11)
    weights = {
        f"block{i}.weight": (rng.standard_t(4, (rows, 128)) * 0.02 * (i + 1)).astype(np.float32)
        for i, rows in enumerate([256, 200, 320, 64])
    }
    weights["block1.bias"] = rng.standard_normal(200).astype(np.float32)
    return weights


@pytest.fixture
def small_exact_max(monkeypatch):
    """Tensors above 20k values are estimated (children are forked after the patch)."""
    monkeypatch.setattr(weighing, "EXACT_MAX", 20_000)


def test_estimates_fitted_in_a_worker_and_in_a_batch_are_the_estimates_of_one_tensor(small_exact_max):
    """A batch's seeds come from one programme per width, in a worker process: the same
    numbers as one tensor's estimates here (kmeans_allocation.estimate)."""
    weights = model()
    alone = {n: estimated_candidates(n, weights[n], (1024, 1024)) for n in ("block0.weight", "block2.weight")}
    batch = Batch()
    for name in alone:
        batch.add(name, summarized(name, weights[name], (1024, 1024)))
    with processes.worker_processes(2) as pool:
        assert pool is not None
        together = batch.submit(pool)()
    assert together == alone and all(len(c) > 5 for c in alone.values())
    w = weights["block2.weight"]
    direct = KMeans().estimate(
        w, [c.rule for c in alone["block2.weight"] if c.rule.method == "kmeans"], (1024, 1024)
    )
    assert [(c.bytes, c.error) for c in alone["block2.weight"] if c.rule.method == "kmeans"] == direct


@pytest.mark.parametrize("jobs", [2, 3])
def test_allocation_with_worker_processes_writes_the_same_bytes(tmp_path, small_exact_max, jobs):
    kformat.pack(model(), tmp_path / "one.kf", "fp16", target_bits=3.5, jobs=1)
    kformat.pack(model(), tmp_path / "many.kf", "fp16", target_bits=3.5, jobs=jobs)
    assert (tmp_path / "one.kf").read_bytes() == (tmp_path / "many.kf").read_bytes()


def test_weighing_gives_the_same_options_with_and_without_processes(small_exact_max):
    source = DictSource(model())
    alone = estimate(source, load_recipe("fp16"), jobs=1)
    with chunks.threads(2):
        together = estimate(source, load_recipe("fp16"), jobs=2)
    assert alone == together and list(alone[0]) == [n for n in model() if n in alone[0]]


def test_large_tensors_are_read_and_summarized_in_the_workers(small_exact_max, monkeypatch):
    """From a forkable source a worker reads the large tensors it weighs, and hands back
    their candidates, seeds and whole histograms (for the encodes here): no summary is made
    here and pickled to it."""
    made_here = []
    monkeypatch.setattr(weighing, "summarized", lambda name, *rest: made_here.append(name))
    weights = model()
    large = {n: w for n, w in weights.items() if w.ndim == 2 and w.size > 20_000}
    with kmeans_fit.remembered_seeds():
        options, _ = estimate(DictSource(weights), load_recipe("fp16"), jobs=2)
        histograms = [kmeans_fit.remembered_histogram(whole_key(n, False, w.shape)) for n, w in large.items()]
    assert made_here == [] and set(large) <= set(options)
    assert all(h is not None and h.points.size for h in histograms)


def test_allocation_with_importance_in_worker_processes_writes_the_same_bytes(tmp_path, small_exact_max):
    """Workers weigh large tensors by the importance they adopted at the fork: the same bytes."""
    weights = model()
    rng = np.random.default_rng(3)
    np.savez(
        tmp_path / "imp.npz",
        **{
            n: rng.uniform(0.1, 2.0, w.shape[1]).astype(np.float32) for n, w in weights.items() if w.ndim == 2
        },
    )
    for jobs in (1, 2):
        kformat.pack(
            weights,
            tmp_path / f"{jobs}.kf",
            "fp16",
            target_bits=3.5,
            jobs=jobs,
            importance=tmp_path / "imp.npz",
        )
    assert (tmp_path / "1.kf").read_bytes() == (tmp_path / "2.kf").read_bytes()


def _dies_weighing(names, tiles):
    os._exit(3)


def test_large_tensors_a_dying_worker_held_are_weighed_here(small_exact_max, monkeypatch, caplog):
    source = DictSource(model())
    alone = estimate(source, load_recipe("fp16"), jobs=1)
    monkeypatch.setattr(weighing, "weighed_in_worker", _dies_weighing)
    with caplog.at_level("INFO", logger="kformat"):
        assert estimate(source, load_recipe("fp16"), jobs=2) == alone
    assert "a worker process died" in caplog.text


def _chunked_sum(n: int) -> int:
    return sum(chunks.map_chunks(lambda a, b: b - a, n, 1000))


def test_a_forked_worker_maps_inline_not_on_the_parents_threads():
    with chunks.threads(2):
        assert _chunked_sum(10_000) == 10_000  # the parent's pool has threads now
        with processes.worker_processes(1) as pool:
            assert pool.submit(_chunked_sum, 10_000).result(timeout=60) == 10_000


def _dies_in_a_child(value: int) -> int:
    if os.getpid() != PARENT:
        os._exit(3)
    return value * 2


def test_a_dead_worker_costs_time_not_the_result():
    with processes.worker_processes(1) as pool:
        result = processes.run(pool, _dies_in_a_child, 21)
        assert result() == 42
        assert processes.run(pool, _dies_in_a_child, 5)() == 10  # the broken pool: here


def test_no_pool_for_no_workers():
    with processes.worker_processes(0) as pool:
        assert pool is None
        assert processes.run(pool, abs, -3)() == 3


def test_batches_of_small_tensors_weighed_in_workers_write_the_same_bytes(tmp_path, monkeypatch):
    """One batch in (workers + 1) is weighed here, the others in workers, which hand back
    their seeds: the same candidates and file as with one job."""
    monkeypatch.setattr(weighing, "WARM_BATCH", 1)  # every small tensor a batch of its own
    kformat.pack(model(), tmp_path / "one.kf", "fp16", target_bits=3.0, jobs=1)
    sent = []
    real_run = weighing.run
    monkeypatch.setattr(
        weighing, "run", lambda pool, fn, *a, **k: sent.append(fn.__name__) or real_run(pool, fn, *a, **k)
    )
    kformat.pack(model(), tmp_path / "two.kf", "fp16", target_bits=3.0, jobs=2)
    assert sent.count("_weigh_batch") == 2  # of the 4 weight matrices' batches, 2 in workers
    assert (tmp_path / "one.kf").read_bytes() == (tmp_path / "two.kf").read_bytes()


def _pack_in_a_daemon(path: str) -> int:
    return kformat.pack(model(), path, "fp16", target_bits=3.5, jobs=2).bytes


def test_a_daemonic_process_weighs_without_workers(tmp_path):
    """A multiprocessing.Pool worker may not have children: allocation there weighs in the
    process itself (it raised AssertionError), and writes the same file."""
    import multiprocessing

    with multiprocessing.get_context("fork").Pool(1) as pool:
        pool.apply(_pack_in_a_daemon, (str(tmp_path / "daemon.kf"),))
    kformat.pack(model(), tmp_path / "here.kf", "fp16", target_bits=3.5, jobs=2)
    assert (tmp_path / "daemon.kf").read_bytes() == (tmp_path / "here.kf").read_bytes()


def test_work_in_flight_is_bounded_and_the_oldest_settled_first(tmp_path, monkeypatch):
    """At most IN_FLIGHT tasks per job wait for workers (each may hold a batch of small
    tensors): past it the oldest is taken first, and the file is still the one-job file."""
    monkeypatch.setattr(weighing, "WARM_BATCH", 1)
    monkeypatch.setattr(weighing, "IN_FLIGHT", 1)
    weights = {**model(), **{f"extra{i}.weight": w for i, w in enumerate(model().values())}}
    kformat.pack(weights, tmp_path / "one.kf", "fp16", target_bits=3.0, jobs=1)
    sent, taken, most = [], [], [0]
    real_run = weighing.run

    def run(pool, fn, *args, **options):
        task = real_run(pool, fn, *args, **options)
        sent.append(task)

        def result():
            taken.append(task)
            return task()

        most[0] = max(most[0], len(sent) - len(taken))
        return result

    monkeypatch.setattr(weighing, "run", run)
    kformat.pack(weights, tmp_path / "two.kf", "fp16", target_bits=3.0, jobs=2)
    assert len(sent) > 4 and most[0] <= 1 * 2 + 1  # (counted as a task is sent, before the oldest is taken)
    assert (tmp_path / "one.kf").read_bytes() == (tmp_path / "two.kf").read_bytes()


ORPHAN_SCRIPT = """
import sys, time
from kformat.packing.processes import worker_processes
import importlib
import os
import threading
import time
with worker_processes(2) as pool:
    pids = set(pool.submit(os.getpid).result() for _ in range(8))
    print(" ".join(map(str, sorted(pids))), flush=True)
    time.sleep(60)
"""


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"  # (a zombie has exited)
    except FileNotFoundError:
        return False


@pytest.mark.skipif(not os.path.exists("/proc/self/stat"), reason="Linux /proc")
def test_workers_die_with_a_parent_that_is_killed():
    """A worker holds its siblings' end of the task queue, so it never sees the queue close:
    without PR_SET_PDEATHSIG the workers of a killed pack waited for ever."""
    import signal
    import subprocess
    import sys
    import time

    parent = subprocess.Popen([sys.executable, "-c", ORPHAN_SCRIPT], stdout=subprocess.PIPE, text=True)
    try:
        workers = [int(p) for p in parent.stdout.readline().split()]
        assert workers and all(_alive(p) for p in workers)
    finally:
        parent.send_signal(signal.SIGKILL)
        parent.wait()
    deadline = time.monotonic() + 10
    while any(_alive(p) for p in workers) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(_alive(p) for p in workers)


def _imported_value(name: str) -> int:
    return importlib.import_module(name).VALUE


@pytest.mark.parametrize("wait", [processes.IMPORT_WAIT, 0.0])
def test_a_module_another_thread_is_importing_at_the_fork_is_imported_whole_in_the_child(
    tmp_path, monkeypatch, wait
):
    """The fork waits for the import to end; forked mid-import anyway (no wait), the child
    imports the module afresh instead of waiting for ever on the importing thread's lock."""
    name = f"slow_module_{int(wait)}"
    runs = tmp_path / f"{name}.runs"
    (tmp_path / f"{name}.py").write_text(
        f"import time\nwith open({str(runs)!r}, 'a') as log:\n    log.write('x')\n"
        "time.sleep(0.6)\nVALUE = 42\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(processes, "IMPORT_WAIT", wait)
    importing = threading.Thread(target=importlib.import_module, args=(name,))
    importing.start()
    time.sleep(0.2)  # the thread holds the module's import lock now
    with processes.worker_processes(1) as pool:
        try:
            assert pool.submit(_imported_value, name).result(timeout=30) == 42
        finally:
            for child in list(getattr(pool, "_processes", {}).values()):
                child.kill()  # (a child stuck on the lock would keep the pool from shutting down)
    importing.join()
    assert runs.read_text() == ("x" if wait else "xx")  # waited: imported once, in this process


def test_tasks_the_processes_hold_count_as_busy_workers_for_the_chunk_helpers_until_done():
    """Weighing's fits and the pack's tensors in worker processes hold cores: while a task is
    out, this process's passes recruit no helper thread for it (chunks.elsewhere)."""
    from concurrent.futures import Future

    from kformat.packing.processes import InHand, run, worker_processes

    held = InHand(workers=1)
    first, second = Future(), Future()
    held.track(first)
    held.track(second)
    assert chunks._elsewhere == 1  # two tasks out, one process: one core
    first.set_result(None)
    assert chunks._elsewhere == 1
    second.set_exception(RuntimeError("failed"))  # a failed task is back too
    assert chunks._elsewhere == 0
    with worker_processes(1) as pool:
        if pool is None:
            pytest.skip("no worker processes here")
        out = run(pool, time.sleep, 0.2, in_hand=held)
        assert chunks._elsewhere == 1
        out()
    assert chunks._elsewhere == 0  # (its callback has run once the pool is shut down)


def test_a_child_forked_while_threads_hash_can_hash():
    """Workers are forked while the packer's threads may be hashing blobs (SHA-256 through
    OpenSSL): a lock one of them held at the fork would stay held in the child for ever. A
    hundred forks beside two threads hashing without pause: every child hashes and exits."""
    import hashlib

    data, stop = os.urandom(1 << 16), threading.Event()

    def hash_on():
        while not stop.is_set():
            hashlib.sha256(data).digest()

    threads = [threading.Thread(target=hash_on) for _ in range(2)]
    for t in threads:
        t.start()
    hung = failed = 0
    try:
        for _ in range(100):
            pid = os.fork()
            if pid == 0:  # the child: hash, then leave without the parent's exit handlers
                try:
                    for _ in range(20):
                        hashlib.sha256(data).digest()
                    os._exit(0)
                finally:
                    os._exit(1)
            deadline = time.monotonic() + 5
            while not (done := os.waitpid(pid, os.WNOHANG))[0]:
                if time.monotonic() > deadline:
                    hung += 1
                    os.kill(pid, 9)
                    os.waitpid(pid, 0)
                    break
                time.sleep(0.001)
            else:
                failed += os.waitstatus_to_exitcode(done[1]) != 0
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert hung == 0 and failed == 0


def test_an_interrupt_as_the_workers_start_leaves_no_manager_thread(monkeypatch):
    """^C or SIGTERM held while the workers fork arrives as they start. The pool was shut down
    without waiting, and its manager thread, still closing its wake-up pipe at the
    interpreter's exit, raced ProcessPoolExecutor's exit hook writing to it: EBADF, a
    traceback after `kformat: terminated`. Now the thread is waited for."""
    from concurrent.futures import Future
    from concurrent.futures.process import _ExecutorManagerThread

    real = Future.result

    def interrupted(self, timeout=None):  # the first result waited for: the workers' start
        monkeypatch.setattr(Future, "result", real)
        raise KeyboardInterrupt

    monkeypatch.setattr(Future, "result", interrupted)
    with pytest.raises(KeyboardInterrupt):
        with processes.worker_processes(1):
            pass
    assert not [t for t in threading.enumerate() if isinstance(t, _ExecutorManagerThread) and t.is_alive()]


def test_stop_soon_lets_the_workers_exit_while_the_pool_is_still_open():
    """A pack whose processes have nothing left lets them go (stop_soon) while it writes and
    commits the rest; the pool's end then waits for what is left of their exit, once."""
    from concurrent.futures.process import _ExecutorManagerThread

    with processes.worker_processes(2) as pool:
        assert pool.submit(int).result() == 0
        workers = list(pool._processes.values())
        processes.stop_soon(pool)
        processes.stop_soon(pool)  # (once is enough)
        deadline = time.monotonic() + 30
        while any(w.is_alive() for w in workers) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not any(w.is_alive() for w in workers)  # gone before the pool's end
    processes.stop_soon(pool)  # after the end: nothing to do, no thread
    alive = [t for t in threading.enumerate() if t.is_alive()]
    assert not [t for t in alive if t.name == processes.STOP_THREAD or isinstance(t, _ExecutorManagerThread)]


def test_a_pack_keeps_freed_memory_where_its_owner_asks(tmp_path, monkeypatch):
    """KFORMAT_KEEP_FREED=1 (the command line's own process sets it) makes a pack's own
    process keep freed memory for reuse, as its worker processes do; a library caller's
    process keeps glibc's defaults."""
    calls = []
    monkeypatch.setattr(heap, "keep_freed_memory", lambda: calls.append(1))
    weights = {"w": np.ones((8, 8), np.float32)}
    monkeypatch.delenv("KFORMAT_KEEP_FREED", raising=False)
    kformat.pack(weights, tmp_path / "a.kf", "fp16", jobs=1)
    assert calls == []
    monkeypatch.setenv("KFORMAT_KEEP_FREED", "1")
    kformat.pack(weights, tmp_path / "b.kf", "fp16", jobs=1)
    assert calls == [1]
