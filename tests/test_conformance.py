"""spec/conformance/ against the Python reader: the golden vectors decode exactly, and every
attack file fails with its kind of error, names the file, is reported by verify, and stays
within bounded memory (measured in a fresh process, where the high-water mark is our own).

Each attack forges one thing and keeps every other check satisfied, so these tests pin down
which defence fires. A reader that returned tensors, or raised anything but a KFormatError
(a numpy, Pillow, zlib or msgpack error, MemoryError), fails.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import conformance
from kformat import errors
from kformat.loading.container import Container

SUITE = conformance.SUITE
VECTORS = conformance.load_index(SUITE, "vectors")
ATTACKS = conformance.load_index(SUITE, "attacks")


@pytest.mark.parametrize("path", sorted(VECTORS))
def test_vector_decodes_to_its_expected_tensors(path):
    outcome = conformance.run_vector(SUITE, path, VECTORS[path])
    assert outcome.ok, outcome.detail


@pytest.mark.parametrize("path", sorted(ATTACKS))
def test_attack_raises_its_kind_and_names_the_file(path):
    outcome = conformance.run_attack(SUITE, path, ATTACKS[path])
    assert outcome.ok, outcome.detail
    with pytest.raises(errors.KFormatError) as caught:
        conformance.read_everything(str(SUITE / path))
    assert str(SUITE / path.rstrip("/")) in str(caught.value)


@pytest.mark.parametrize("path", sorted(ATTACKS))
def test_verify_reports_what_open_lets_through(path):
    """An attack refused at open is refused with its own kind; one that gets past open is
    named by verify instead of raising."""
    case = ATTACKS[path]
    try:
        container = Container.open(str(SUITE / path))
    except errors.KFormatError as exc:
        assert exc.kind == case["kind"], f"{path}: refused at open with {exc.kind!r}: {exc}"
        assert case["match"] in str(exc)
        return
    with container:
        problems = container.verify()
    assert problems, f"{path}: verify found nothing"
    assert any(case["match"] in p.message for p in problems), [p.message for p in problems]


# The peak of the probe's own memory (procmem: VmHWM), not ru_maxrss: that carries over an
# exec on Linux, so a probe started by pytest (hundreds of MiB by then) began at pytest's peak
# and grew by nothing.
BOMB_PROBE = """
import json, sys
sys.path.insert(0, sys.argv[1])
from procmem import peak_rss_bytes
import kformat
from kformat.errors import KFormatError
kinds = []
before = peak_rss_bytes()
for path in sys.argv[2:]:
    try:
        with kformat.open(path) as model:
            for name in model:
                model[name].numpy()
        kinds.append(None)
    except KFormatError as exc:
        kinds.append(exc.kind)
grown = (peak_rss_bytes() - before) // 1024
print(json.dumps({"grown_kib": grown, "kinds": kinds}))
"""


EXAMPLES = Path(__file__).resolve().parent.parent / "examples"  # (procmem)

BOMBS = {
    "png_bomb.kf": "decode",  # 64 MiB of inflated plane
    "zstd_bomb.kf": "decode",
    "zstd_declared_size.kf": "decode",
    "amplification.kf": "limits",  # 2 GiB of float32
    "blobs_not_in_file.kf": "storage",  # 64 GiB of float32
}


def test_bombs_stay_small_in_a_fresh_process():
    """Bombs are refused without inflating or allocating what they promise: the growth of a
    fresh process's peak RSS stays far below any one bomb's size."""
    bombs = [str(SUITE / "attacks" / n) for n in BOMBS]
    done = subprocess.run(
        [sys.executable, "-c", BOMB_PROBE, str(EXAMPLES), *bombs],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["kinds"] == list(BOMBS.values())
    assert result["grown_kib"] < 32 * 1024, result


def test_every_suite_file_is_listed_and_small():
    on_disk = {f"attacks/{p.name}" + ("/" if p.is_dir() else "") for p in (SUITE / "attacks").iterdir()}
    assert on_disk == set(ATTACKS)
    vectors = {
        f"vectors/{p.name}" + ("/" if p.is_dir() else "")
        for p in (SUITE / "vectors").iterdir()
        if p.name != "source.npz"
    }
    assert vectors == set(VECTORS)
    assert all(p.stat().st_size < 200_000 for p in SUITE.rglob("*") if p.is_file())


def test_every_kind_is_a_language_neutral_name():
    kinds = {c["kind"] for c in ATTACKS.values()}
    assert kinds <= {"format", "version", "limits", "integrity", "decode", "storage", "not_found"}


def test_the_runner_fails_a_reader_that_decodes_wrongly(monkeypatch):
    """The oracle can fail: a reader returning other values, or no error, is caught."""
    path = "vectors/kmeans4.kf"
    real = conformance.read_everything
    monkeypatch.setattr(conformance, "read_everything", lambda url: {k: v + 1 for k, v in real(url).items()})
    assert not conformance.run_vector(SUITE, path, VECTORS[path]).ok
    monkeypatch.setattr(conformance, "read_everything", lambda url: {})
    assert not conformance.run_attack(SUITE, "attacks/bad_magic.kf", ATTACKS["attacks/bad_magic.kf"]).ok
