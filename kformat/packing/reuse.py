"""Tensors an earlier pack encoded by the same rule, read back instead of encoded again.

Bit allocation packs the same model several times (pack_to_target's rounds), and the rounds
share most of their choices: the corrected round of VGG16 at 4.5 bits/weight changes a few
small layers and keeps the 4-bit first FC layer, 70% of the pack's time. Encoding is
deterministic, so the blobs, tables and stats an earlier round wrote for (tensor, rule) are
exactly what encoding again would give; reading them back (each blob checked against its
hash) gives a byte-identical output.
"""

from __future__ import annotations

from pathlib import Path

from ..loading.container import Container
from ..loading.tables import tile_label
from ..recipe import Decision
from .encoded import Encoded


class Earlier:
    """Containers packed earlier from the same source, newest first; closed with the object."""

    def __init__(self) -> None:
        self._containers: list[Container] = []

    def add(self, path: Path) -> None:
        self._containers.insert(0, Container.open(str(path)))

    def find(self, decision: Decision) -> Encoded | None:
        """The Encoded of `decision`'s tensor by its rule and reason, if a container has it."""
        text = decision.rule.to_text()
        for container in self._containers:
            entry = container.tensors.get(decision.name)
            if entry is None or entry.rule != text or not entry.reason.startswith(decision.reason):
                continue
            blobs = container.read_blobs([(t.blob, tile_label(entry, i)) for i, t in enumerate(entry.tiles)])
            # in the order they were written (emit adds a tensor's tables in its dict order)
            named = sorted(
                entry.quant.named_tables(), key=lambda item: (item[1].blob.shard, item[1].blob.offset)
            )
            stored = container.tables(entry)
            return Encoded(
                name=entry.name,
                dtype=entry.dtype,
                shape=list(entry.shape),
                view=tuple(entry.view),
                rule=decision.rule,
                reason=entry.reason,
                group_rows=entry.quant.group_rows,
                storage=entry.storage,
                depth=entry.depth,
                codec=entry.codec,
                tile=tuple(entry.tile),
                rects=[(t.row, t.col, t.rows, t.cols) for t in entry.tiles],
                blobs=blobs,
                digests=[t.blob.sha256 for t in entry.tiles],
                tables={name: stored[name] for name, _ in named},
                stats=dict(entry.stats),
            )
        return None

    def close(self) -> None:
        for container in self._containers:
            container.close()
        self._containers = []

    def __enter__(self) -> "Earlier":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
