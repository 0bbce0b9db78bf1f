"""pack: source tensors + recipe -> a kformat container (single file or sharded directory).

source ─► plan (recipe) ─► quantize ─► cut into tiles ─► encode planes (threads) ─► sink
"""

from __future__ import annotations

import math
import os
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from ..interrupts import check as check_interrupts
from .._version import __version__
from ..errors import KFormatError, StorageError
from ..format.constants import CORE_CODECS, CORE_METHODS, DEFAULT_SHARD_SIZE
from ..format.manifest import BlobRef, Manifest, Quant, Table, TensorEntry, Tile
from ..methods import get_method, view_2d
from ..methods.metrics import BLOB_RECORD_BYTES, manifest_entry_bytes
from ..recipe import Decision, Recipe, Rule, plan, tile_for
from ..progress import Tracker, log
from ..sources import TensorSource, find_aliases
from .admission import make_room
from .encode import expect_fits
from .encoded import Encoded
from .local import LocalEncoder
from .atomic import write_errors
from .sinks import ShardedSink, SingleFileSink
from .streamed import BlobStream

Progress = Callable[[int, int, str], None]


@dataclass
class PackReport:
    """What a pack wrote: where, its manifest, its size in bytes, and recipe rules that matched
    nothing (worth a warning)."""

    output: Path
    manifest: Manifest
    unmatched_rules: list[str] = field(default_factory=list)
    bytes: int | None = None
    manifest_sha256: str = ""  # what to pin: kformat.open(url, manifest_sha256=...)

    def summary(self) -> dict:
        """What `kformat.inspect` would say of the output, without reading it back."""
        from ..summary import summarize

        summary = summarize(self.manifest, self.bytes)
        summary["manifest_sha256"] = self.manifest_sha256
        return summary


def table_bytes(array: np.ndarray) -> bytes:
    """A table's blob: its values, little-endian, row-major."""
    return np.ascontiguousarray(array).astype(array.dtype.newbyteorder("<"), copy=False).tobytes()


def _table(sink, array: np.ndarray) -> Table:
    return Table(dtype=array.dtype.name, shape=list(array.shape), blob=sink.add(table_bytes(array)))


def extensions(entries: list[TensorEntry]) -> list[str]:
    """The must_understand names a file needs: every method and codec outside the core."""
    names = {f"method:{e.quant.method}" for e in entries if e.quant.method not in CORE_METHODS}
    names |= {f"codec:{e.codec}" for e in entries if e.codec not in CORE_CODECS}
    if any(e.quant.method == "kmeans" and e.quant.scale is not None for e in entries):
        names.add("scaled-codebooks")
    return sorted(names)


def emit(sink, e: Encoded, streamed: list[BlobRef] | None = None) -> TensorEntry:
    """Write an encoded tensor's blobs (tiles, then tables) and describe it; the first tile
    blobs, `streamed`, were written while it encoded (kformat.packing.streamed)."""
    done = list(streamed or [])
    refs = done + [sink.add(b, digest) for b, digest in zip(e.blobs[len(done) :], e.digests[len(done) :])]
    tiles = [Tile(row=r, col=c, rows=h, cols=w, blob=ref) for (r, c, h, w), ref in zip(e.rects, refs)]
    quant = Quant.build(
        e.rule.method, e.rule.bits, e.group_rows, {n: _table(sink, a) for n, a in e.tables.items()}
    )
    return TensorEntry(
        name=e.name,
        dtype=e.dtype,
        shape=e.shape,
        view=e.view,
        storage=e.storage,
        depth=e.depth,
        codec=e.codec,
        tile=e.tile,
        quant=quant,
        tiles=tiles,
        rule=e.rule.to_text(),
        reason=e.reason,
        stats=e.stats,
    )


def _long_pole(decisions: list[Decision], sizes: dict[str, int], jobs: int) -> Decision | None:
    """The tensor to start first, out of file order: the largest, when it holds a third of the
    model or more. It takes the longest, and started in its turn it finished alone while the
    other workers idled (VGG16's first FC layer is 74% of the weights and 27th of 32 in file
    order); started first, the other tensors are encoded beside it. It is not counted in the
    window, so one more tensor is in memory than the window holds. A lone tensor is one too:
    handed to a worker process, its passes ran on one core (0.89 s for VGG16's first FC layer
    `int8` at --jobs 2 as at 1), here on every thread."""
    if jobs < 2 or not decisions:
        return None
    largest = max(decisions, key=lambda d: sizes[d.name])
    return largest if sizes[largest.name] * 3 >= sum(sizes.values()) else None


def manifest_room(decisions: list[Decision], views: dict[str, tuple[int, int]], tile, extra: int) -> int:
    """Bytes to reserve for header and manifest ahead of the blobs (SingleFileSink), guessed
    from the plan: each entry as bit allocation counts it (metrics.manifest_entry_bytes) plus
    its rule and reason texts and its tables' records, then a quarter more and 4 KiB of slack,
    rounded up to 4 KiB. A guess too small costs a copy at commit, one too large a gap of
    zeros (both bounded there)."""
    total = 0
    for d in decisions:
        view = views[d.name]
        tables = 2 if get_method(d.rule.method).codes else 0
        total += manifest_entry_bytes(d.name, view, tile_for(view, d.rule.tile, tile))
        total += len(d.rule.to_text()) + len(d.reason) + BLOB_RECORD_BYTES * tables
    total = total * 5 // 4 + 4096 + extra
    return -(-total // 4096) * 4096


def default_jobs(jobs: int | None) -> int:
    """Worker count: `jobs`, or every core."""
    if jobs is None:
        return max(1, os.cpu_count() or 1)
    if jobs < 1:
        raise KFormatError(f"jobs must be at least 1, got {jobs}")
    return int(jobs)


def pack(
    source: TensorSource,
    output: str | Path,
    recipe: Recipe,
    *,
    layout: str = "single",
    shard_size: int = DEFAULT_SHARD_SIZE,
    metadata: dict[str, str] | None = None,
    progress: Progress | None = None,
    jobs: int | None = None,
    generator: str | None = None,
    assigned: dict[str, tuple[Rule, str]] | None = None,
    importance=None,
    scheduler: str | None = None,
    staging: str | None = None,
    earlier=None,
) -> PackReport:
    """Pack every tensor of `source` by `recipe`; the output appears only when complete.

    `jobs` tensors are encoded at once (default: every core), and written in file order, so
    the output is byte-identical for every value. `assigned` maps tensor names to (rule,
    reason) chosen elsewhere (bit allocation); those replace the recipe's choice. With
    `scheduler` (a Dask scheduler address) tensors are encoded on the cluster's workers, which
    leave their parts at `staging` (kformat.packing.distributed); the output is the same.
    `earlier` (a kformat.packing.reuse.Earlier, local packs) supplies tensors already packed
    by the same rule."""
    jobs = default_jobs(jobs)
    output = Path(output)
    with write_errors(output):
        if source.path is not None and output.resolve() == Path(source.path).resolve():
            raise StorageError(f"output {output} is the input file; choose another path")
        aliases = find_aliases(source)
        infos = [t for t in source.tensors() if t.name not in aliases]
        decisions, unmatched = plan(recipe, [(t.name, t.shape, t.dtype) for t in infos])
        if assigned:
            decisions = [Decision(d.name, *assigned[d.name]) if d.name in assigned else d for d in decisions]
        if scheduler is None:
            encoder = LocalEncoder(source, recipe.tile, importance, jobs, earlier)
            expect_fits(decisions, {t.name: t.shape for t in infos}, encoder.fit_cores)  # (a cluster's fit)
        else:
            from .distributed import DaskEncoder

            encoder = DaskEncoder(scheduler, source, recipe.tile, importance, output, staging)
        if layout == "single":
            views = {t.name: view_2d(t.shape) for t in infos}
            extra = len(repr(recipe.model_dump(mode="python"))) + len(repr(metadata or {}))
            sink = SingleFileSink(output, manifest_room(decisions, views, recipe.tile, extra))
        elif layout == "sharded":
            sink = ShardedSink(output, shard_size)
        else:
            raise KFormatError(f"unknown layout {layout!r} (single or sharded)")
        try:
            entries = []
            sizes = {t.name: math.prod(t.shape) * np.dtype(t.dtype).itemsize for t in infos}
            tracker = Tracker(progress, len(decisions), sum(sizes.values()))

            def written(e: Encoded, streamed: list[BlobRef] | None = None) -> None:
                check_interrupts()
                if e.weighed:  # (a worker process's or a cluster's use, counted here)
                    importance.used.add(e.name)
                entries.append(emit(sink, e, streamed))
                tracker.finish_item(sizes[e.name])
                log.debug("%s: %s (%s)", e.name, entries[-1].rule, entries[-1].reason)

            # finished tensors wait in memory for their turn, up to the largest tensor's bytes
            # (parts wait in staging on a cluster)
            budget = max(sizes.values(), default=0) if scheduler is None else math.inf
            with encoder:
                pending: deque[tuple[Future, int]] = deque()
                first = _long_pole(decisions, sizes, jobs if scheduler is None else 1)
                stream = BlobStream()  # the pole's blobs, written as they come once it is due
                early = encoder.submit(first, critical=True, stream=stream) if first is not None else None

                def write_next(future: Future) -> None:
                    """The tensor at the head of the file order, waited for if need be; the
                    long pole's blobs written as it makes them."""
                    streamed = None
                    if future is early:
                        streamed = stream.write_while_encoding(sink.add, future, check_interrupts)
                    written(future.result(), streamed)

                for decision in decisions:
                    check_interrupts()
                    tracker.start(decision.name)
                    future = early if decision is first else encoder.submit(decision)
                    pending.append((future, sizes[decision.name]))
                    make_room(pending, write_next, encoder.window, budget, early)
                encoder.no_more()  # worker processes with nothing left go while the rest is written
                while pending:
                    write_next(pending.popleft()[0])
                tracker.close()
                if importance is not None:
                    metadata = {**(metadata or {}), **importance.record()}
                # committed before the encoder closes: its processes' exit overlaps the commit
                return finish(
                    sink,
                    output,
                    entries,
                    extensions(entries),
                    generator or f"kformat {__version__}",
                    recipe.model_dump(mode="python"),
                    metadata,
                    unmatched,
                    aliases,
                )
        except BaseException:
            sink.abort()  # (nothing, once committed: the output is whole)
            raise


def finish(
    sink,
    output: Path,
    entries: list[TensorEntry],
    must_understand: list[str],
    generator: str,
    recipe: dict | None,
    metadata: dict[str, str] | None,
    unmatched: list[str],
    aliases: dict[str, str] | None = None,
) -> PackReport:
    """Write the manifest last (the output appears now) and report what was written."""
    aliases = dict(aliases or {})
    if aliases and "aliases" not in must_understand:
        must_understand = [*must_understand, "aliases"]
    manifest = Manifest(
        generator=generator,
        layout=sink.layout,
        must_understand=must_understand,
        aliases=aliases,
        shards=sink.shards(),
        tensors=entries,
        recipe=recipe,
        metadata=dict(metadata or {}),
    )
    sink.commit(manifest)
    log.info(
        "wrote %s: %d tensors, %s bytes, manifest sha256 %s",
        output,
        len(entries),
        sink.total_bytes,
        sink.manifest_sha256,
    )
    return PackReport(output, manifest, unmatched, sink.total_bytes, sink.manifest_sha256)
