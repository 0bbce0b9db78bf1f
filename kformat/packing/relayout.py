"""Re-lay out a container without re-quantizing: a single file <-> a sharded directory.

Every blob is copied verbatim (its hash checked on the way), so `kformat publish model.kf DIR`
ships exactly the bytes that were packed and verified, and the same file can be served as one
.kf or as CDN shards. Works from any URL the reader opens.
"""

from __future__ import annotations

from pathlib import Path

from .._version import __version__
from ..errors import KFormatError, StorageError
from ..format.constants import DEFAULT_SHARD_SIZE, MANIFEST_NAME
from ..format.manifest import Table
from ..loading.container import Container
from ..progress import Tracker
from .atomic import write_errors
from .sinks import ShardedSink, SingleFileSink
from .writer import PackReport, Progress, finish


def is_container(source: str | Path) -> bool:
    """Whether `source` names a kformat container (rather than a model file to quantize)."""
    text = str(source)
    if "://" in text or "::" in text:
        return True
    path = Path(text)
    return path.suffix == ".kf" or (path.is_dir() and (path / MANIFEST_NAME).is_file())


def relayout(
    source: str,
    output: str | Path,
    *,
    layout: str = "sharded",
    shard_size: int = DEFAULT_SHARD_SIZE,
    progress: Progress | None = None,
    **storage_options,
) -> PackReport:
    """Copy a container's blobs into a new single file or sharded directory, atomically."""
    output = Path(output)
    if layout not in ("single", "sharded"):
        raise KFormatError(f"unknown layout {layout!r} (single or sharded)")
    with Container.open(str(source), **storage_options) as container, write_errors(output):
        if container.store.local is not None:
            root = Path(container.store.root).resolve()  # the file, or the sharded directory
            target = output.resolve()
            if target == root or root in target.parents:
                raise StorageError(f"output {output} is the input {source} or inside it; choose another path")
        sink = SingleFileSink(output) if layout == "single" else ShardedSink(output, shard_size)
        try:
            entries = []
            tracker = Tracker(
                progress, len(container.manifest.tensors), sum(ref.length for ref, _ in container.blob_labels)
            )
            for entry in container.manifest.tensors:
                tracker.start(entry.name)
                tiles = [
                    tile.model_copy(update={"blob": sink.add(data)})
                    for tile, data, _ in container.iter_tiles(entry.name)
                ]
                quant = entry.quant
                tables: dict[str, Table] = {}
                for which, table in quant.named_tables():
                    (data,) = container.read_blobs([(table.blob, f"tensor {entry.name!r} {which}")])
                    tables[which] = table.model_copy(update={"blob": sink.add(data)})
                entries.append(entry.model_copy(update={"tiles": tiles, "quant": quant.with_tables(tables)}))
                tracker.finish_item(entry.stored_bytes)
            tracker.close()
            old = container.manifest
            generator = old.generator or f"kformat {__version__}"
            return finish(
                sink,
                output,
                entries,
                list(old.must_understand),
                generator,
                old.recipe,
                old.metadata,
                [],
                old.aliases,
            )
        except BaseException:
            sink.abort()
            raise
