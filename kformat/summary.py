"""What `kformat inspect` shows: per tensor rule, size, rate and code entropy, and totals."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from .format.manifest import Manifest, TensorEntry
from .methods import METHODS


@dataclass
class TensorSummary:
    name: str
    shape: list[int]
    dtype: str
    params: int
    rule: str
    codec: str
    tiles: int
    bytes: int
    bits_per_weight: float
    ratio_to_float32: float
    code_bits: int | None
    entropy_bits: float | None
    sqnr_db: float | None
    reason: str


def summarize_tensor(t: TensorEntry) -> TensorSummary:
    params = math.prod(t.shape)
    nbytes = t.stored_bytes
    method = METHODS.get(t.quant.method)
    extra = method.summary(t) if method is not None else {"code_bits": t.quant.bits}
    return TensorSummary(
        name=t.name,
        shape=list(t.shape),
        dtype=t.dtype,
        params=params,
        rule=t.rule,
        codec=t.codec,
        tiles=len(t.tiles),
        bytes=nbytes,
        bits_per_weight=8 * nbytes / params if params else 0.0,
        ratio_to_float32=(4 * params / nbytes) if nbytes else 0.0,
        code_bits=extra.get("code_bits"),
        entropy_bits=t.stats.get("entropy_bits"),
        sqnr_db=t.stats.get("sqnr_db"),
        reason=t.reason,
    )


def summarize(manifest: Manifest, container_bytes: int | None = None) -> dict:
    tensors = [summarize_tensor(t) for t in manifest.tensors]
    return {
        "layout": manifest.layout,
        "version": list(manifest.version),
        "generator": manifest.generator,
        "recipe": (manifest.recipe or {}).get("name"),
        "shards": len(manifest.shards),
        "tensors": [asdict(t) for t in tensors],
        "totals": _totals(tensors, container_bytes),
        "aliases": dict(manifest.aliases),
        "metadata": dict(manifest.metadata),
    }


def _totals(tensors: list[TensorSummary], file_bytes: int | None) -> dict:
    params = sum(t.params for t in tensors)
    blob_bytes = sum(t.bytes for t in tensors)
    return {
        "tensors": len(tensors),
        "params": params,
        "blob_bytes": blob_bytes,
        "container_bytes": file_bytes,
        "float32_bytes": 4 * params,
        "ratio_to_float32": (4 * params / file_bytes) if file_bytes else None,
        # of the whole container when its size is known (what --target-bits counts), as the
        # table's bytes and ratio are; the blobs alone leave out the manifest and padding
        "bits_per_weight": 8 * (file_bytes or blob_bytes) / params if params else 0.0,
        "blob_bits_per_weight": 8 * blob_bytes / params if params else 0.0,
    }


def summarize_source(path: str, tensors: list, file_bytes: int) -> dict:
    """What `inspect` shows of a model file that is not a kformat container: each tensor as
    stored there (TensorInfo: name, shape, dtype), in the same shape of report."""
    rows = []
    for t in tensors:
        params = math.prod(t.shape)
        nbytes = params * t.dtype.itemsize
        rows.append(
            TensorSummary(
                name=t.name,
                shape=list(t.shape),
                dtype=t.dtype.name,
                params=params,
                rule="stored as is",
                codec="-",
                tiles=0,
                bytes=nbytes,
                bits_per_weight=8.0 * t.dtype.itemsize,
                ratio_to_float32=4 / t.dtype.itemsize,
                code_bits=None,
                entropy_bits=None,
                sqnr_db=None,
                reason="",
            )
        )
    return {
        "layout": "model file",
        "source": path,
        "version": None,
        "generator": "",
        "recipe": None,
        "shards": 0,
        "tensors": [asdict(r) for r in rows],
        "totals": _totals(rows, file_bytes),
    }


def human_bytes(n: float | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024


def format_table(summary: dict) -> str:
    head = ("tensor", "shape", "params", "rule", "codec", "bytes", "bits/w", "x f32", "H(codes)", "SQNR dB")
    rows = [head]
    for t in summary["tensors"]:
        rows.append(
            (
                t["name"],
                "x".join(map(str, t["shape"])) or "scalar",
                f"{t['params']:,}",
                t["rule"],
                t["codec"],
                human_bytes(t["bytes"]),
                f"{t['bits_per_weight']:.2f}",
                f"{t['ratio_to_float32']:.1f}",
                f"{t['entropy_bits']:.2f}" if t["entropy_bits"] is not None else "-",
                f"{t['sqnr_db']:.1f}"
                if t["sqnr_db"] is not None
                else ("exact" if t["rule"].startswith("raw") else "-"),
            )
        )
    tot = summary["totals"]
    rows.append(
        (
            "TOTAL",
            f"{tot['tensors']} tensors",
            f"{tot['params']:,}",
            summary.get("recipe") or "",
            "",
            human_bytes(tot["container_bytes"] or tot["blob_bytes"]),
            f"{tot['bits_per_weight']:.2f}",
            f"{tot['ratio_to_float32']:.1f}" if tot["ratio_to_float32"] else "-",
            "",
            "",
        )
    )
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(head))]
    lines = []
    for n, r in enumerate(rows):
        cells = [
            str(c).ljust(w) if i in (0, 1, 3, 4) else str(c).rjust(w)
            for i, (c, w) in enumerate(zip(r, widths))
        ]
        lines.append("  ".join(cells).rstrip())
        if n == 0 or n == len(rows) - 2:
            lines.append("  ".join("-" * w for w in widths))
    for alias, name in (summary.get("aliases") or {}).items():
        lines.append(f"tied: {alias} is {name} (stored once)")
    return "\n".join(lines)
