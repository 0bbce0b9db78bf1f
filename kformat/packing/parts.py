"""An encoded tensor as bytes and back: what a distributed worker leaves in staging.

msgpack, not pickle: staging may be shared storage, and reading a part must never run code.
The part holds everything `emit` needs, so assembling parts in order writes exactly the bytes
a local pack writes."""

from __future__ import annotations

import hashlib
import msgpack
import numpy as np

from ..errors import StorageError
from ..recipe import Rule
from .encoded import Encoded

PART_VERSION = 1


def _array(a: np.ndarray) -> dict:
    a = np.ascontiguousarray(a)
    return {
        "dtype": a.dtype.newbyteorder("<").str,
        "shape": list(a.shape),
        "data": a.astype(a.dtype.newbyteorder("<")).tobytes(),
    }


def _from_array(d: dict) -> np.ndarray:
    return np.frombuffer(d["data"], dtype=np.dtype(d["dtype"])).reshape(d["shape"]).copy()


def to_part(e: Encoded) -> bytes:
    return msgpack.packb(
        {
            "version": PART_VERSION,
            "name": e.name,
            "dtype": e.dtype,
            "shape": list(e.shape),
            "view": list(e.view),
            "rule": e.rule.model_dump(mode="json"),
            "reason": e.reason,
            "group_rows": e.group_rows,
            "storage": e.storage,
            "depth": e.depth,
            "codec": e.codec,
            "tile": list(e.tile),
            "rects": [list(r) for r in e.rects],
            "blobs": list(e.blobs),
            "tables": {k: _array(v) for k, v in e.tables.items()},
            "stats": e.stats,
            "weighed": e.weighed,
        },
        use_bin_type=True,
    )


def from_part(data: bytes, where: str) -> Encoded:
    try:
        d = msgpack.unpackb(data, raw=False)
        if d.get("version") != PART_VERSION:
            raise ValueError(f"part version {d.get('version')!r}, expected {PART_VERSION}")
        return Encoded(
            name=d["name"],
            dtype=d["dtype"],
            shape=list(d["shape"]),
            view=tuple(d["view"]),
            rule=Rule.model_validate(d["rule"]),
            reason=d["reason"],
            group_rows=d["group_rows"],
            storage=d["storage"],
            depth=d["depth"],
            codec=d["codec"],
            tile=tuple(d["tile"]),
            rects=[tuple(r) for r in d["rects"]],
            blobs=list(d["blobs"]),
            digests=[hashlib.sha256(blob).hexdigest() for blob in d["blobs"]],  # of what was read
            tables={k: _from_array(v) for k, v in d["tables"].items()},
            stats=dict(d["stats"]),
            weighed=bool(d.get("weighed", False)),
        )
    except (
        ValueError,
        KeyError,
        TypeError,
        msgpack.ExtraData,
        msgpack.FormatError,
        msgpack.StackError,
    ) as exc:
        raise StorageError(f"{where}: not a kformat staging part ({exc})") from None
