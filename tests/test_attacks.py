"""Every crafted file in tests/attacks/ (made by tools/gen_attacks.py) raises its own error.

Each file forges one thing and keeps every other check satisfied, so these tests pin down
which defence fires, with which KFormatError subclass and message. A reader that returned
tensors, or raised anything else (a numpy, Pillow, zlib or msgpack error, MemoryError), fails.
"""

from __future__ import annotations

import json
import resource
from pathlib import Path

import pytest

import kformat
from kformat import errors
from kformat.reader import Container

ATTACKS = Path(__file__).resolve().parent / "attacks"
TABLE = json.loads((ATTACKS / "attacks.json").read_text())


def read_everything(url: str) -> None:
    with kformat.open(url) as model:
        for name in model:
            model[name].numpy()


@pytest.mark.parametrize("name", sorted(TABLE))
def test_attack_raises_its_error(name):
    expected = TABLE[name]
    error = getattr(errors, expected["error"])
    with pytest.raises(errors.KFormatError) as caught:
        read_everything(str(ATTACKS / name))
    assert type(caught.value) is error, f"{name}: {type(caught.value).__name__}: {caught.value}"
    assert expected["match"] in str(caught.value)
    assert str(ATTACKS / name.rstrip("/")) in str(caught.value)  # the message names the file


@pytest.mark.parametrize("name", sorted(n for n in TABLE if TABLE[n]["error"] != "FormatError" or "bomb" in n))
def test_verify_reports_the_attack(name):
    """verify names the problem instead of raising, for attacks that get past open()."""
    try:
        container = Container.open(str(ATTACKS / name))
    except errors.KFormatError:
        return  # refused at open: test_attack_raises_its_error covers it
    with container:
        problems = container.verify()
    assert problems, f"{name}: verify found nothing"


def test_bombs_stay_small():
    """The PNG and zstd bombs (64 MiB each) are refused without inflating them."""
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for name in ("png_bomb.kf", "zstd_bomb.kf", "zstd_declared_size.kf"):
        with pytest.raises(errors.DecodeError):
            read_everything(str(ATTACKS / name))
    grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert grown_kib < 32 * 1024


def test_every_attack_file_is_listed_and_small():
    on_disk = {p.name + ("/" if p.is_dir() else "") for p in ATTACKS.iterdir() if p.name != "attacks.json"}
    assert on_disk == set(TABLE)
    assert all(p.stat().st_size < 200_000 for p in ATTACKS.rglob("*") if p.is_file())
