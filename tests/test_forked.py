"""Large tensors read and encoded in forked worker processes (kformat.packing.forked): the
same bytes as one thread, errors that reach the caller as they are, and a child that dies
costs time, never the output."""

import logging
import os

import numpy as np
import pytest

import kformat
from kformat.errors import InputError, QuantizationError
from kformat.methods import kernels
from kformat.packing import forked
from kformat.sources import DictSource, open_source
from kformat.sources.safetensors import write_safetensors

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="worker processes are forked")

RECIPE = "q4"  # k-means, a codebook per 64 rows


def model() -> dict[str, np.ndarray]:
    """Four tensors over FORK_BYTES (no long pole: none holds a third), small ones between."""
    rng = np.random.default_rng(5)
    weights = {}
    for i, rows in enumerate([700, 520, 640, 600]):
        weights[f"layer{i}.weight"] = (rng.standard_t(4, (rows, 512)) * 0.02).astype(np.float32)
        weights[f"layer{i}.bias"] = (rng.standard_normal(rows) * 0.01).astype(np.float32)
    return weights


@pytest.fixture(autouse=True)
def settled_kernels(monkeypatch):
    """Processes are forked only once the fit kernels are settled: let a load started by an
    earlier test finish, and start none here (the numpy loops' CPU time adds up over the
    tests, and a load started by a test's first pack kept its second on threads)."""
    loader = kernels._loader
    if loader is not None:
        loader.join()
    monkeypatch.setenv("KFORMAT_NUMBA", "0")


def pack_handed_out(source, path, caplog, **options) -> tuple[int, int]:
    """Pack; how many tensors the workers' queue handed to processes, and how many this
    process took from it once the long pole was done (from the debug log)."""
    caplog.clear()
    with caplog.at_level(logging.DEBUG, logger="kformat"):
        kformat.pack(source, path, options.pop("recipe", RECIPE), **options)
    logged = [r.args for r in caplog.records if "worker processes" in r.getMessage() and r.args]
    return sum(args[1] for args in logged), sum(args[3] for args in logged)


def pack_logged(source, path, caplog, **options) -> int:
    """Pack; how many tensors the workers' queue handed out (to processes, or to this
    process once the long pole was done)."""
    return sum(pack_handed_out(source, path, caplog, **options))


def test_processes_write_the_bytes_of_one_thread(tmp_path, caplog, monkeypatch):
    weights = model()
    assert pack_logged(weights, tmp_path / "one.kf", caplog, jobs=1) == 0
    assert pack_logged(weights, tmp_path / "forked.kf", caplog, jobs=2) == 4  # the four large ones
    monkeypatch.setenv("KFORMAT_FORK", "0")
    assert pack_logged(weights, tmp_path / "threads.kf", caplog, jobs=2) == 0
    one = (tmp_path / "one.kf").read_bytes()
    assert (tmp_path / "forked.kf").read_bytes() == one
    assert (tmp_path / "threads.kf").read_bytes() == one


def test_children_read_a_safetensors_file_themselves(tmp_path, caplog):
    path = tmp_path / "model.safetensors"
    write_safetensors(path, model().items())
    assert open_source(path).forkable
    assert pack_logged(str(path), tmp_path / "forked.kf", caplog, jobs=2, recipe="int8") == 4
    kformat.pack(str(path), tmp_path / "one.kf", "int8", jobs=1)
    assert (tmp_path / "forked.kf").read_bytes() == (tmp_path / "one.kf").read_bytes()


def test_sources_that_cannot_be_read_in_a_child_stay_on_threads(tmp_path, caplog):
    path = tmp_path / "model.npz"
    np.savez(path, **model())
    assert not getattr(open_source(path), "forkable", False)
    assert pack_logged(str(path), tmp_path / "m.kf", caplog, jobs=2) == 0


def test_beside_a_long_pole_the_other_tensors_go_to_one_process_fewer_and_the_bytes_stay(
    tmp_path, caplog, monkeypatch
):
    weights = model()
    weights["huge.weight"] = np.tile(weights["layer0.weight"], (4, 1))  # over a third
    seen = []
    real = forked.worker_processes

    def counted(count, *args):
        seen.append(count)
        return real(count, *args)

    monkeypatch.setattr(forked, "worker_processes", counted)
    assert pack_logged(weights, tmp_path / "three.kf", caplog, jobs=3) == 4  # the four layers, not huge
    assert seen == [2]  # the pole is encoded in this process
    monkeypatch.setattr(forked, "FORK_BYTES", 1 << 30)  # not beside a pole: no tensor that large
    monkeypatch.setattr(forked, "POLE_FORK_BYTES", 1 << 10)  # beside one, the biases (2-3 KB) too
    assert pack_logged(weights, tmp_path / "two.kf", caplog, jobs=2) == 8 and seen == [2, 1]
    kformat.pack(weights, tmp_path / "one.kf", RECIPE, jobs=1)
    one = (tmp_path / "one.kf").read_bytes()
    assert (tmp_path / "three.kf").read_bytes() == one and (tmp_path / "two.kf").read_bytes() == one


def test_once_the_long_pole_is_done_this_process_takes_queued_tensors_and_the_bytes_stay(tmp_path, caplog):
    """A pole that is quickly done (fp16) beside slow fits (8-bit k-means): its thread takes
    tensors the one process has not started, rather than idle while it works through them."""
    rng = np.random.default_rng(7)
    weights = {"pole.weight": rng.standard_normal((4096, 512)).astype(np.float32)}
    for i in range(8):
        weights[f"layer{i}.weight"] = (rng.standard_t(4, (256, 512)) * 0.02).astype(np.float32)
    options = {"recipe": "kmeans8", "rules": ["pole.*=fp16"]}
    sent, taken = pack_handed_out(weights, tmp_path / "two.kf", caplog, jobs=2, **options)
    assert sent + taken == 8 and taken >= 1 and sent >= 1
    kformat.pack(weights, tmp_path / "one.kf", "kmeans8", rules=options["rules"], jobs=1)
    assert (tmp_path / "two.kf").read_bytes() == (tmp_path / "one.kf").read_bytes()


def test_a_lone_tensor_is_encoded_on_this_process_threads_and_nothing_is_forked(
    tmp_path, caplog, monkeypatch
):
    """Handed to a process, a model of one tensor ran on one core at any --jobs."""
    seen = []
    real = forked.worker_processes
    monkeypatch.setattr(forked, "worker_processes", lambda *args: seen.append(args[0]) or real(*args))
    weights = {"only.weight": model()["layer0.weight"]}
    assert pack_logged(weights, tmp_path / "two.kf", caplog, jobs=2) == 0
    assert seen == []
    weights["tiny.bias"] = np.ones(8, np.float32)  # under POLE_FORK_BYTES: still nothing to fork
    assert pack_logged(weights, tmp_path / "bias.kf", caplog, jobs=2) == 0 and seen == []
    kformat.pack(weights, tmp_path / "one.kf", RECIPE, jobs=1)
    assert (tmp_path / "bias.kf").read_bytes() == (tmp_path / "one.kf").read_bytes()


def test_while_the_kernels_load_tensors_stay_on_threads(tmp_path, caplog, monkeypatch):
    monkeypatch.setattr(kernels, "settled", lambda: False)
    assert pack_logged(model(), tmp_path / "m.kf", caplog, jobs=2) == 0


def test_an_error_in_a_child_reaches_the_caller_and_leaves_nothing(tmp_path):
    weights = model()
    weights["layer2.weight"][7, 9] = np.nan
    with pytest.raises(QuantizationError, match="layer2.weight"):
        kformat.pack(weights, tmp_path / "m.kf", RECIPE, jobs=2)
    assert list(tmp_path.iterdir()) == []


PARENT = os.getpid()
REAL_ENCODE = forked._encode_in_child


def _dying(decision, tile, path):
    """forked._encode_in_child, but a child given layer1.weight dies (as if killed)."""
    if decision.name == "layer1.weight" and os.getpid() != PARENT:
        os._exit(9)
    return REAL_ENCODE(decision, tile, path)


def test_a_child_that_dies_costs_time_not_the_output(tmp_path, caplog, monkeypatch):
    weights = model()
    kformat.pack(weights, tmp_path / "one.kf", RECIPE, jobs=1)
    monkeypatch.setattr(forked, "_encode_in_child", _dying)
    with caplog.at_level(logging.INFO, logger="kformat"):
        kformat.pack(weights, tmp_path / "two.kf", RECIPE, jobs=2)
    assert any("worker process died" in r.getMessage() for r in caplog.records)
    assert (tmp_path / "two.kf").read_bytes() == (tmp_path / "one.kf").read_bytes()


def test_in_memory_sources_and_safetensors_are_forkable():
    assert DictSource({"a": np.zeros(3)}).forkable
    assert forked.enabled(DictSource({"a": np.zeros(3)}), 2)
    assert not forked.enabled(DictSource({"a": np.zeros(3)}), 1)


def test_a_file_cut_short_is_an_input_error_from_the_child(tmp_path):
    path = tmp_path / "model.safetensors"
    write_safetensors(path, model().items())
    source = open_source(path)  # opened whole: the children read the tensors after the cut
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size - 100_000)
    with pytest.raises(InputError, match="layer3.weight"):
        kformat.pack(source, tmp_path / "m.kf", RECIPE, jobs=2)
    assert not (tmp_path / "m.kf").exists()


def test_importance_reaches_the_children(tmp_path, caplog):
    """A calibrated pack (importance weights and error feedback) in the children: the bytes of
    one thread."""
    from test_feedback import correlated_layer, importance_file

    weights = {}
    for i in range(4):  # (none a third of the model: no long pole)
        w, x = correlated_layer(seed=i, rows=600, cols=512, samples=600)
        weights[f"fc{i}.weight"] = w
        importance_file(tmp_path / f"imp{i}.npz", x, f"fc{i}.weight")
    arrays = {}
    for i in range(4):
        with np.load(tmp_path / f"imp{i}.npz") as part:
            arrays.update({k: part[k] for k in part.files})
    np.savez(tmp_path / "importance.npz", **arrays)
    imp = tmp_path / "importance.npz"
    kformat.pack(weights, tmp_path / "one.kf", rules=["*=kmeans:4,group=64"], importance=imp, jobs=1)
    caplog.clear()
    with caplog.at_level(logging.DEBUG, logger="kformat"):
        kformat.pack(weights, tmp_path / "two.kf", rules=["*=kmeans:4,group=64"], importance=imp, jobs=2)
    assert any("worker processes" in r.getMessage() for r in caplog.records)
    assert (tmp_path / "two.kf").read_bytes() == (tmp_path / "one.kf").read_bytes()


def test_sigterm_is_an_interrupt_that_cleans_up(tmp_path):
    """SIGTERM to `kformat pack` ends it as ^C does, exit status 143, with no temporary file
    or worker process left behind."""
    import signal
    import subprocess
    import sys
    import time

    weights = {f"layer{i}.weight": w for i, w in enumerate(model().values())}
    weights.update({f"more{i}": w for i, w in enumerate(model().values())})
    path = tmp_path / "model.safetensors"
    write_safetensors(path, weights.items())
    out = tmp_path / "out"
    out.mkdir()
    command = [
        sys.executable,
        "-m",
        "kformat",
        "pack",
        str(path),
        "-o",
        str(out / "m.kf"),
        "-r",
        "mobile",
        "-j",
        "2",
    ]
    process = subprocess.Popen(
        command, stderr=subprocess.PIPE, text=True, env={**os.environ, "KFORMAT_NUMBA": "0"}
    )
    deadline = time.monotonic() + 60
    while not any(out.iterdir()) and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)  # until the pack has begun writing
    assert process.poll() is None, "the pack ended before it could be stopped"
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 143, err
    assert "terminated" in err and "Traceback" not in err
    assert list(out.iterdir()) == []


def test_a_fifo_is_not_a_model_file(tmp_path):
    """Opening a pipe for reading waits for a writer: refused before it is opened."""
    fifo = tmp_path / "model.safetensors"
    os.mkfifo(fifo)
    with pytest.raises(InputError, match="not a regular file"):
        kformat.pack(str(fifo), tmp_path / "m.kf")


def test_terminate_as_interrupt_restores_the_handler():
    import signal

    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(kformat.Terminated):
        with kformat.terminate_as_interrupt():
            os.kill(os.getpid(), signal.SIGTERM)
            time_spent = 0
            while time_spent < 1000:  # the handler runs between bytecodes
                time_spent += 1
    assert signal.getsignal(signal.SIGTERM) is before


def test_a_sigterm_during_a_fork_arrives_after_it():
    """Within interrupts.deferred() (around forking workers) SIGTERM only marks itself, and
    raises once the block is over: raised inside an at-fork hook it was printed and lost."""
    import signal

    from kformat.interrupts import deferred

    reached = False
    with pytest.raises(kformat.Terminated):
        with kformat.terminate_as_interrupt():
            with deferred():
                os.kill(os.getpid(), signal.SIGTERM)
                for _ in range(1000):  # (handlers run between bytecodes)
                    pass
                reached = True
    assert reached


def test_a_sharded_checkpoint_is_read_by_the_children(tmp_path, caplog):
    """A Hugging Face checkpoint of safetensors shards: each child opens the shard it needs."""
    import json

    weights = model()
    names = sorted(weights)
    shards = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    for shard, members in shards.items():
        write_safetensors(tmp_path / shard, [(n, weights[n]) for n in members])
    weight_map = {n: shard for shard, members in shards.items() for n in members}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    assert open_source(tmp_path).forkable
    assert pack_logged(str(tmp_path), tmp_path / "forked.kf", caplog, jobs=2) == 4
    kformat.pack(str(tmp_path), tmp_path / "one.kf", RECIPE, jobs=1)
    assert (tmp_path / "forked.kf").read_bytes() == (tmp_path / "one.kf").read_bytes()


def test_the_processes_are_let_go_before_the_commit_and_the_bytes_stay(tmp_path, monkeypatch):
    """Once every tensor is handed out and the processes hold none, they exit while this
    process finishes its long pole and commits (their exit, a few ms, no longer follows it)."""
    from kformat.packing import sinks

    events = []
    real_stop, real_commit = forked.stop_soon, sinks.SingleFileSink.commit
    monkeypatch.setattr(forked, "stop_soon", lambda pool: events.append("stop") or real_stop(pool))
    monkeypatch.setattr(
        sinks.SingleFileSink, "commit", lambda self, m: events.append("commit") or real_commit(self, m)
    )
    weights = model()
    weights["huge.weight"] = np.tile(weights["layer0.weight"], (4, 1))  # a long pole
    kformat.pack(weights, tmp_path / "two.kf", RECIPE, jobs=2)
    assert events == ["stop", "commit"]
    kformat.pack(weights, tmp_path / "one.kf", RECIPE, jobs=1)
    assert (tmp_path / "two.kf").read_bytes() == (tmp_path / "one.kf").read_bytes()
