"""The library's file-level operations (the public API); the CLI is a thin shell over these."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import numpy as np

from .errors import InputError, KFormatError, NotFound, StorageError
from .format.constants import DEFAULT_SHARD_SIZE
from .format.dtypes import EXTRA_FLOATS, is_float, numpy_dtype
from .format.validate import decoded_nbytes
from .loading.container import Container, Problem
from .packing.relayout import is_container, relayout
from .packing.writer import PackReport
from .progress import Progress, Tracker
from .heap import keep_freed_memory_if_asked
from .packing.writer import pack as _pack
from .recipe import Recipe, build_recipe
from .sources import DictSource, TensorSource, open_source, source_metadata, write_tensors
from .summary import summarize, summarize_source


def pack(
    source: str | Path | TensorSource | dict[str, np.ndarray],
    output: str | Path,
    recipe: Recipe | str | Path | None = None,
    *,
    rules: Iterable[str] = (),
    layout: str = "single",
    shard_size: int = DEFAULT_SHARD_SIZE,
    metadata: dict[str, str] | None = None,
    progress: Progress | None = None,
    target_size: int | None = None,
    target_bits: float | None = None,
    jobs: int | None = None,
    importance: str | Path | None = None,
    scheduler: str | None = None,
    staging: str | None = None,
) -> PackReport:
    """Pack a model file (or a dict of arrays) into a kformat container.

    `importance` is an importance file (kformat.torch.calibrate writes one): k-means then
    minimises each weight's error times how much it matters on the calibration data, and the
    manifest's metadata records the file's SHA-256.

    With `target_size` (bytes) or `target_bits` (bits per parameter, over all tensors) the
    rule of every tensor the recipe quantizes is chosen by bit allocation (kformat.packing.allocate):
    the least weighted error whose container fits; the choice is in each entry's reason and
    in the manifest's metadata["kformat.allocation"].

    With `scheduler` (a Dask scheduler address such as "tcp://10.0.0.5:8786"; the `dask`
    extra) every tensor is encoded by a task on the cluster, which reads the source (a path
    every worker can open) and leaves its encoded part at `staging` (any fsspec URL the
    workers and this process share; default: a hidden directory next to `output`). The file
    written is byte-identical to a local pack.

    A source that is already a kformat container (a .kf file, a sharded directory, a URL) is
    re-laid out with its blobs copied verbatim, never quantized a second time.
    """
    if isinstance(source, (str, Path)) and is_container(source):
        if (
            recipe is not None
            or list(rules)
            or target_size is not None
            or target_bits is not None
            or importance
        ):
            raise InputError(
                f"{source} is already a kformat container: it is re-laid out as it is, never"
                " re-quantized; drop the recipe, rules and targets (or unpack it and pack the result)"
            )
        return relayout(str(source), output, layout=layout, shard_size=shard_size, progress=progress)
    if isinstance(source, dict):
        source = DictSource(source)
    elif isinstance(source, (str, Path)):
        source = open_source(source)
    metadata = {**source_metadata(source), **(metadata or {})}  # the caller's keys win
    keep_freed_memory_if_asked()
    weights = None
    if importance is not None:
        from .packing.importance import Importance

        weights = Importance.load(importance)
    if target_size is not None or target_bits is not None:
        if target_size is not None and target_bits is not None:
            raise InputError("give a target size or a target bits per weight, not both")
        if target_bits is not None:
            if not 0 < target_bits <= 32:
                raise InputError(f"target bits per weight must be in (0, 32], got {target_bits}")
            params = sum(int(np.prod(t.shape, dtype=np.int64)) for t in source.tensors())
            target_size = int(params * target_bits / 8)
        if target_size <= 0:
            raise InputError(f"target size must be positive, got {target_size}")
        from .packing.allocate import pack_to_target

        report, _, _ = pack_to_target(
            source,
            output,
            build_recipe(recipe, rules),
            int(target_size),
            layout=layout,
            shard_size=shard_size,
            metadata=metadata,
            progress=progress,
            jobs=jobs,
            importance=weights,
            scheduler=scheduler,
            staging=staging,
        )
        return report
    return _pack(
        source,
        output,
        build_recipe(recipe, rules),
        layout=layout,
        shard_size=shard_size,
        metadata=metadata,
        progress=progress,
        jobs=jobs,
        importance=weights,
        scheduler=scheduler,
        staging=staging,
    )


def unpack(
    url: str,
    output: str | Path,
    progress: Progress | None = None,
    *,
    dtype: str | None = None,
    **storage_options,
) -> list[str]:
    """Write every tensor to .npz, .safetensors or .pt: raw ones bit-exact in their own dtype,
    lossy ones float32; with `dtype` (e.g. "float32") every floating-point tensor is cast to it."""
    with Container.open(url, **storage_options) as container:
        names = container.manifest.names()
        target = None if dtype is None else _float_dtype(dtype)
        sizes = {t.name: decoded_nbytes(t) for t in container.manifest.tensors}
        tracker = Tracker(progress, len(names), sum(sizes.values()))

        def tensors():
            for name, array in container.read_all():
                tracker.start(name)
                yield name, array if target is None or not is_float(array.dtype) else array.astype(target)
                tracker.finish_item(sizes.get(name, 0))
            tracker.close()

        write_tensors(output, tensors())
    return names


def _float_dtype(name: str) -> np.dtype:
    try:
        dtype = numpy_dtype(name) if name in EXTRA_FLOATS else np.dtype(name)
    except TypeError:
        dtype = None
    if dtype is None or not is_float(dtype):
        raise InputError(
            f"--dtype {name!r}: expected a floating-point type such as float32, float16 or bfloat16"
        )
    return dtype


def load_all(url: str, **storage_options) -> dict[str, np.ndarray]:
    """Every tensor of a container, eagerly (dequantized to float32 where lossy). Like every
    load of whole tensors, the first in a process sets glibc's malloc thresholds at the top of
    glibc's own adaptive range, unless the process chose its own or set KFORMAT_KEEP_FREED=0
    (kformat.heap)."""
    with Container.open(url, **storage_options) as container:
        return dict(container.read_all())


def verify(url: str, progress: Progress | None = None, **storage_options) -> list[Problem]:
    """Check every blob's hash and decode; an empty list means the container is intact."""
    with Container.open(url, **storage_options) as container:
        return container.verify(progress)


def inspect(url: str, **storage_options) -> dict:
    """Per-tensor rule, bytes, rate, entropy and SQNR, plus totals. A model file that is not a
    kformat container (.npz, .safetensors, PyTorch) is described as it is stored."""
    if not is_container(url):
        source = open_source(url)
        files = getattr(source, "files", None) or [Path(url)]  # shards, external data
        summary = summarize_source(str(url), source.tensors(), sum(p.stat().st_size for p in files))
        if source_metadata(source):
            summary["metadata"] = source_metadata(source)
        return summary
    with Container.open(url, **storage_options) as container:
        manifest = container.manifest
        try:
            size = container.store.size(container.key)
        except (NotFound, StorageError):
            raise
        except KFormatError:
            size = None
        if manifest.layout == "sharded":
            size = None if size is None else size + sum(s.length for s in manifest.shards)
        elif size is not None:
            end = container.data_offset + max(
                (r.offset + r.length for r, _ in container.blob_labels), default=0
            )
            if size < end:
                raise StorageError(
                    f"{container.source}: truncated: {size} bytes, its blobs end at {end}"
                    " (kformat verify names them)"
                )
        summary = summarize(manifest, size)
        summary["manifest_sha256"] = (
            container.manifest_sha256
        )  # pin it: kformat.open(url, manifest_sha256=...)
        return summary
