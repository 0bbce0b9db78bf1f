#!/usr/bin/env python3
"""Run spec/conformance/ against the Python reader: every golden vector must decode to its
expected tensors bit for bit, and every attack file must fail with its kind of error.

    python tools/conformance.py [--suite spec/conformance] [--json out.json]

A reader in another language runs the same two index files (spec/conformance/README.md);
this script is the reference runner and what tests/test_conformance.py calls.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SUITE = Path(__file__).resolve().parent.parent / "spec" / "conformance"


@dataclass
class Outcome:
    case: str
    ok: bool
    detail: str


def load_index(suite: Path, which: str) -> dict:
    return json.loads((suite / f"{which}.json").read_text())


def expected_tensors(suite: Path, case: dict) -> dict[str, np.ndarray]:
    """A vector's expected tensors, read from their raw little-endian files (hash checked)."""
    out = {}
    for t in case["tensors"]:
        data = (suite / t["data"]).read_bytes()
        if hashlib.sha256(data).hexdigest() != t["sha256"]:
            raise ValueError(f"{t['data']}: does not match its SHA-256 in the index")
        out[t["name"]] = np.frombuffer(data, dtype=np.dtype(t["dtype"]).newbyteorder("<")).reshape(t["shape"])
    return out


def read_everything(url: str) -> dict[str, np.ndarray]:
    import kformat

    with kformat.open(url) as model:
        return {name: model[name].numpy() for name in model}


def run_vector(suite: Path, path: str, case: dict) -> Outcome:
    try:
        decoded = read_everything(str(suite / path))
    except Exception as exc:  # noqa: BLE001 - any failure is the outcome being reported
        return Outcome(path, False, f"raised {type(exc).__name__}: {exc}")
    wanted = expected_tensors(suite, case)
    if list(decoded) != list(wanted):
        return Outcome(path, False, f"tensors {list(decoded)}, expected {list(wanted)}")
    for name, array in wanted.items():
        got = decoded[name]
        if got.dtype != array.dtype or got.shape != array.shape or got.tobytes() != array.tobytes():
            return Outcome(path, False, f"tensor {name!r} differs ({got.dtype} {got.shape})")
    return Outcome(path, True, f"{len(wanted)} tensors exact")


def run_attack(suite: Path, path: str, case: dict) -> Outcome:
    from kformat.errors import KFormatError

    try:
        read_everything(str(suite / path))
    except KFormatError as exc:
        kind = getattr(exc, "kind", "?")
        if kind != case["kind"]:
            return Outcome(path, False, f"raised kind {kind!r} ({exc}), expected {case['kind']!r}")
        if case.get("match") and case["match"] not in str(exc):
            return Outcome(path, False, f"message {str(exc)!r} lacks {case['match']!r}")
        return Outcome(path, True, f"{kind}: {exc}")
    except Exception as exc:  # noqa: BLE001 - a foreign exception is a failure of the reader
        return Outcome(path, False, f"raised {type(exc).__name__} (not a KFormatError): {exc}")
    return Outcome(path, False, "returned tensors; expected an error")


def run(suite: Path = SUITE) -> list[Outcome]:
    outcomes = [run_vector(suite, p, c) for p, c in load_index(suite, "vectors").items()]
    outcomes += [run_attack(suite, p, c) for p, c in load_index(suite, "attacks").items()]
    return outcomes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--suite", type=Path, default=SUITE)
    parser.add_argument("--json", type=Path, help="write the outcomes as JSON here")
    args = parser.parse_args(argv)
    outcomes = run(args.suite)
    for o in outcomes:
        if not o.ok:
            print(f"FAIL {o.case}: {o.detail}")
    passed = sum(o.ok for o in outcomes)
    if args.json:
        args.json.write_text(json.dumps([o.__dict__ for o in outcomes], indent=1))
    print(f"{passed} passed, {len(outcomes) - passed} failed")
    return 0 if passed == len(outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
