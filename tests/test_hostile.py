"""Hostile inputs beyond the conformance suite: files crafted at test time against shapes,
allocation, padding and trailing bytes, and the reader's own limits."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import kformat
from kformat.cli import main
from kformat.errors import LimitError
from kformat.loading.container import Container


@pytest.fixture
def packed(model, tmp_path) -> Path:
    out = tmp_path / "m.kf"
    kformat.pack(model, out, "kmeans4")
    return out


@pytest.fixture
def sharded(model, tmp_path) -> Path:
    out = tmp_path / "site"
    kformat.pack(model, out, "kmeans4", layout="sharded", shard_size=40_000)
    return out


def _gaps(container: Container, shard: int = 0) -> list[tuple[int, int]]:
    """(start, end) of the padding between blobs, relative to the data region or shard."""
    spans = sorted((r.offset, r.offset + r.length) for r, _ in container.blob_labels if r.shard == shard)
    return [(e0, s1) for (_, e0), (s1, _) in zip(spans, spans[1:]) if s1 > e0]


def _poke(path: Path, offset: int, value: int = 0x5A) -> None:
    data = bytearray(path.read_bytes())
    data[offset] = value
    path.write_bytes(bytes(data))


def _messages(path) -> list[str]:
    return [f"{p.label}: {p.message}" for p in kformat.verify(str(path))]


def test_verify_refuses_non_zero_padding_before_the_data_region(model, packed):
    for extra in range(64):  # a metadata string of the right length leaves padding to forge
        with Container.open(str(packed)) as c:
            start, end = c.manifest_end, c.data_offset
        if end > start:
            break
        kformat.pack(model, packed, "kmeans4", metadata={"pad": "x" * extra})
    assert end > start, "the writer aligns the data region, so there is padding to forge"
    _poke(packed, start)
    assert any("padding must be zero" in m for m in _messages(packed))
    assert main(["verify", str(packed)]) == 1


def test_verify_refuses_non_zero_padding_between_blobs(packed):
    with Container.open(str(packed)) as c:
        gap = _gaps(c)[0]
        base = c.data_offset
    _poke(packed, base + gap[0])
    messages = _messages(packed)
    assert any("padding must be zero" in m and f"byte {base + gap[0]}" in m for m in messages), messages
    assert kformat.load_all(str(packed))  # the blobs themselves are intact


def test_verify_refuses_bytes_after_the_last_blob(packed):
    with packed.open("ab") as f:
        f.write(b"\0" * 10)
    assert any("10 bytes after the last blob" in m for m in _messages(packed))


def test_verify_refuses_a_shard_altered_in_its_padding_or_grown(sharded):
    with Container.open(str(sharded)) as c:
        name = c.manifest.shards[0].name
        gap = _gaps(c, 0)[0]
    shard = sharded / "shards" / name
    _poke(shard, gap[0])
    messages = _messages(sharded)
    assert any("padding must be zero" in m for m in messages)
    assert any("not its name: the shard was altered" in m for m in messages)
    _poke(shard, gap[0], 0)
    assert _messages(sharded) == []
    with shard.open("ab") as f:
        f.write(b"\0")
    assert any("1 bytes after its manifest length" in m for m in _messages(sharded))


def test_max_tensor_bytes_bounds_what_a_reader_materialises(packed):
    with kformat.open(str(packed), max_tensor_bytes=20_000) as model:
        assert model["fc2.weight"].numpy().nbytes == 12_000
        with pytest.raises(
            LimitError, match=r"'fc1.weight' needs 624000 bytes, more than max_tensor_bytes 20000"
        ):
            model["fc1.weight"].numpy()
        with pytest.raises(LimitError, match="max_tensor_bytes"):
            model["fc1.weight"].quantized()
        x = np.ones(520, np.float32)
        assert model["fc1.weight"].matmul(x).shape == (300,)  # streaming allocates a tile, not the tensor


def test_a_failed_allocation_is_a_limit_error_naming_the_tensor(packed, monkeypatch):
    import kformat.loading.container as container_module

    def no_memory(*args, **kwargs):
        raise MemoryError

    with kformat.open(str(packed)) as model:
        monkeypatch.setattr(container_module.np, "empty", no_memory)
        with pytest.raises(LimitError, match=r"'fc1.weight': cannot allocate 624000 bytes"):
            model["fc1.weight"].numpy()


def test_a_huge_constant_tensor_is_written_so_that_readers_accept_it(tmp_path):
    """4500 x 4500 zeros (81 MB of float32) compress past the 4096:1 amplification limit as
    zstd planes; the writer stores such planes raw, and the file reads back."""
    zeros = {"w": np.zeros((4500, 4500), np.float32)}
    for rule in ("kmeans:1,codec=zstd", "fp16,codec=zstd"):
        out = tmp_path / "z.kf"
        entry = kformat.pack(zeros, out, "fp16", rules=[f"w={rule}"]).manifest.tensors[0]
        assert entry.codec == "raw" and "4096:1" in entry.reason
        assert not kformat.load_all(str(out))["w"].any()


# -- local files that are not plain files ---------------------------------------------------
def _in_time(seconds: float, call):
    """Run `call` in a fresh thread; fail (instead of hanging the suite) if it takes too long."""
    import threading

    outcome = {}

    def run():
        try:
            outcome["value"] = call()
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            outcome["error"] = exc

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(seconds)
    assert not worker.is_alive(), f"still running after {seconds} s"
    return outcome


def test_a_fifo_is_refused_not_waited_on(tmp_path, sharded):
    import os

    fifo = tmp_path / "pipe.kf"
    os.mkfifo(fifo)
    for call in (
        lambda: kformat.open(str(fifo)),
        lambda: kformat.verify(str(fifo)),
        lambda: kformat.inspect(str(fifo)),
    ):
        outcome = _in_time(10, call)
        assert isinstance(outcome.get("error"), kformat.StorageError), outcome
        assert "is a FIFO, not a regular file" in str(outcome["error"])
    shard = next((sharded / "shards").iterdir())
    shard.unlink()
    os.mkfifo(shard)
    outcome = _in_time(10, lambda: kformat.load_all(str(sharded)))
    assert "is a FIFO, not a regular file" in str(outcome.get("error")), outcome
    assert main(["verify", str(sharded)]) == 1


def test_a_shard_linking_out_of_its_directory_is_not_followed(tmp_path, sharded):
    shard = next((sharded / "shards").iterdir())
    outside = tmp_path / "elsewhere.bin"
    outside.write_bytes(shard.read_bytes())
    shard.unlink()
    shard.symlink_to(outside)
    with pytest.raises(kformat.StorageError, match="resolves outside the container's directory") as caught:
        kformat.load_all(str(sharded))
    assert str(outside) not in str(caught.value) and str(outside.stat().st_size) not in str(caught.value)


def test_a_file_replaced_while_read_is_reported_as_changed(tmp_path, model, packed):
    other = tmp_path / "other.kf"
    kformat.pack(model, other, "int8")
    with kformat.open(str(packed)) as lazy:
        lazy["fc2.weight"].numpy()
        other.replace(packed)  # atomically, as a deploy would
        with pytest.raises(kformat.StorageError, match="changed while being read"):
            lazy["fc1.weight"].numpy()


# -- writing: every operating-system error is one line, exit 2, nothing left behind ------------
def _run_cli(args, cwd, fsize_limit: int | None = None):
    import resource
    import signal
    import subprocess
    import sys

    def limit():
        if fsize_limit is not None:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG
            resource.setrlimit(resource.RLIMIT_FSIZE, (fsize_limit, fsize_limit))

    return subprocess.run(
        [sys.executable, "-W", "error", "-m", "kformat", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=limit,
    )


@pytest.mark.parametrize(
    "args, message",
    [
        (["pack", "m.npz", "-o", "adir", "-q"], "adir is a directory"),
        (["pack", "m.npz", "-o", "/proc/m.kf", "-q"], "/proc/m.kf: cannot write"),
        (["pack", "m.npz", "-o", "full.kf", "-q"], "full.kf: cannot write: File too large"),
        (["pack", "m.npz", "-o", "full", "--sharded", "-q"], "full: cannot write: File too large"),
        (["unpack", "ok.kf", "-o", "full.npz"], "full.npz: cannot write: File too large"),
        (["unpack", "ok.kf", "-o", "/proc/x.npz"], "/proc/x.npz: cannot write"),
        (["publish", "site/", "site/"], "is the input site/ or inside it"),
        (["publish", "site", "site/nested"], "or inside it"),
    ],
)
def test_write_failures_are_one_line_exit_two_and_leave_nothing(tmp_path, model, args, message):
    np.savez(tmp_path / "m.npz", **{k: v for k, v in model.items() if v.ndim})
    kformat.pack(str(tmp_path / "m.npz"), tmp_path / "ok.kf", "kmeans4")
    kformat.pack(str(tmp_path / "ok.kf"), tmp_path / "site", layout="sharded")
    (tmp_path / "adir").mkdir()
    before = sorted(p.name for p in tmp_path.iterdir())
    done = _run_cli(args, tmp_path, fsize_limit=20_000 if "full" in " ".join(args) else None)
    assert done.returncode == 2, (done.returncode, done.stderr)
    assert message in done.stderr and "Traceback" not in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no output, no temporaries
    assert kformat.verify(str(tmp_path / "site")) == []  # publishing onto itself left it alone


def test_the_conformance_suite_passes_with_warnings_as_errors():
    import subprocess
    import sys

    import conformance

    done = subprocess.run(
        [sys.executable, "-W", "error", conformance.__file__], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]


# -- small escapes -----------------------------------------------------------------------------
def test_bad_inputs_to_pack_are_input_errors(tmp_path):
    with pytest.raises(kformat.InputError, match="non-empty strings"):
        kformat.pack({"": np.ones((4, 4), np.float32)}, tmp_path / "x.kf")
    with pytest.raises(kformat.InputError, match="dtype"):
        kformat.pack({"s": np.array(["a", "b"])}, tmp_path / "x.kf")
    assert not (tmp_path / "x.kf").exists()


def test_compare_with_nothing_in_common_is_a_finding(tmp_path, packed, capsys):
    np.savez(tmp_path / "other.npz", unrelated=np.ones((3, 3), np.float32))
    assert main(["compare", str(tmp_path / "other.npz"), str(packed)]) == 1
    out, err = capsys.readouterr()
    assert "no tensor in common" in out and "1.000000" not in out and "no tensor in common" in err


def test_inspect_refuses_a_truncated_file(tmp_path, packed, capsys):
    cut = tmp_path / "cut.kf"
    cut.write_bytes(packed.read_bytes()[:-100])
    assert main(["inspect", str(cut)]) == 2
    assert "truncated" in capsys.readouterr().err


def test_verify_reports_a_corrupted_manifest_as_a_finding(tmp_path, packed, capsys):
    data = bytearray(packed.read_bytes())
    data[100] ^= 1
    bad = tmp_path / "bad.kf"
    bad.write_bytes(bytes(data))
    assert main(["verify", str(bad)]) == 1
    assert "manifest hash mismatch" in capsys.readouterr().out


def test_torch_tensors_of_any_kind_pack_or_fail_cleanly(tmp_path):
    torch = pytest.importorskip("torch")
    weights = {"bf16": torch.randn(8, 8, dtype=torch.bfloat16), "grad": torch.randn(8, 8, requires_grad=True)}
    kformat.pack(weights, tmp_path / "t.kf", "raw")
    loaded = kformat.load_all(str(tmp_path / "t.kf"))
    assert np.array_equal(loaded["bf16"].astype(np.float32), weights["bf16"].float().numpy())
    with pytest.raises(kformat.InputError, match=r"'c' has dtype complex64"):
        kformat.pack({"c": torch.zeros(4, 4, dtype=torch.complex64)}, tmp_path / "f.kf")
    torch.save({"c": torch.zeros(4, 4, dtype=torch.complex64)}, tmp_path / "f.pt")
    assert main(["pack", str(tmp_path / "f.pt"), "-o", str(tmp_path / "f.kf"), "-q"]) == 2
    assert not (tmp_path / "f.kf").exists()
