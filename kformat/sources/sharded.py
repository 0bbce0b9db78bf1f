"""Hugging Face checkpoints: a directory of shards (``model-00001-of-00002.safetensors``...)
with ``model.safetensors.index.json`` (or ``pytorch_model.bin.index.json``), given as the
directory or as the index file.

Shards are opened one at a time as their tensors are needed (safetensors shards are memory
mapped; a PyTorch shard is loaded whole, and only the current one is kept), so packing a
checkpoint holds about one shard's tensors at most. A directory without an index is read
as the union of its *.safetensors files.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..errors import InputError
from . import TensorInfo, source_aliases, source_metadata
from .naming import natural_key

MAX_INDEX_BYTES = 64 << 20
SHARD_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")


def _indexes(directory: Path) -> list[Path]:
    return sorted(p for p in directory.glob("*.index.json") if p.is_file())


def is_checkpoint(path: Path) -> bool:
    if path.is_file():
        return path.name.endswith(".index.json")
    if path.is_dir():
        return bool(_indexes(path)) or any(path.glob("*.safetensors"))
    return False


def _read_index(path: Path) -> dict:
    if path.stat().st_size > MAX_INDEX_BYTES:
        raise InputError(f"{path}: index file is over {MAX_INDEX_BYTES >> 20} MiB")
    try:
        index = json.loads(path.read_bytes())
    except (ValueError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: not a valid JSON index ({exc})") from None
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise InputError(f"{path}: has no weight_map (expected a Hugging Face *.index.json)")
    for name, shard in weight_map.items():
        if not isinstance(shard, str) or not name:
            raise InputError(f"{path}: weight_map entry {name!r} -> {shard!r} is not a tensor -> file name")
    return index


def _shard_path(directory: Path, name: str, index: Path) -> Path:
    """A shard file named by the index: a plain file name inside the checkpoint's directory."""
    if (
        not name
        or "/" in name
        or "\\" in name
        or name in (".", "..")
        or Path(name).suffix not in SHARD_SUFFIXES
    ):
        raise InputError(f"{index}: shard {name!r} is not a plain {'/'.join(SHARD_SUFFIXES)} file name")
    path = directory / name
    if not path.is_file():
        raise InputError(f"{index}: shard {name!r} is missing from {directory}")
    return path


class ShardedSource:
    def __init__(self, path: Path):
        from .formats import open_source

        self.path = path
        self._open = open_source
        directory = path.parent if path.is_file() else path
        indexes = [path] if path.is_file() else _indexes(path)
        if len(indexes) > 1:
            names = ", ".join(p.name for p in indexes)
            raise InputError(f"{path}: holds several index files ({names}); give the one to read")
        self.metadata: dict[str, str] = {}
        if indexes:
            index = _read_index(indexes[0])
            shard_of = {n: _shard_path(directory, s, indexes[0]) for n, s in index["weight_map"].items()}
            extra = index.get("metadata")
            if isinstance(extra, dict):
                self.metadata.update({f"hf.{k}": str(v) for k, v in extra.items()})
            shards = sorted(set(shard_of.values()), key=lambda p: natural_key(p.name))
        else:
            shards = sorted(directory.glob("*.safetensors"), key=lambda p: natural_key(p.name))
            shard_of = None
        self.files = [*indexes, *shards]
        self._current: tuple[Path, object] | None = None
        self._mapped: dict[Path, object] = {}
        self._owner: dict[str, Path] = {}
        self._infos: list[TensorInfo] = []
        self.aliases: dict[str, str] = {}
        for shard in shards:
            source = self._source(shard)
            for info in source.tensors():
                if shard_of is not None and shard_of.get(info.name) != shard:
                    continue  # the index puts it elsewhere, or leaves it out
                if info.name in self._owner:
                    raise InputError(
                        f"{path}: tensor {info.name!r} is in {self._owner[info.name].name} and {shard.name}"
                    )
                self._owner[info.name] = shard
                self._infos.append(info)
            for key, value in source_metadata(source).items():
                self.metadata.setdefault(key, value)
            self.aliases.update(source_aliases(source))
        if shard_of is not None:
            absent = [n for n in shard_of if n not in self._owner]
            if absent:
                raise InputError(
                    f"{path}: the index lists tensors its shards do not hold: {', '.join(absent[:5])}"
                )
        self.aliases = {a: n for a, n in self.aliases.items() if a not in self._owner and n in self._owner}
        # Safetensors shards only: memory mapped, so any order is cheap; and read by offset,
        # so forked children may read them too (a PyTorch shard is unpickled whole, in one process)
        self.forkable = all(s.suffix == ".safetensors" for s in shards)
        if self.forkable:
            self._infos.sort(key=lambda i: natural_key(i.name))

    def _source(self, shard: Path):
        if shard.suffix == ".safetensors":  # memory mapped: every shard stays open
            if shard not in self._mapped:
                self._mapped[shard] = self._open(shard)
            return self._mapped[shard]
        if self._current is None or self._current[0] != shard:
            self._current = None  # drop the previous shard first (a PyTorch shard is held whole)
            self._current = (shard, self._open(shard))
        return self._current[1]

    def tensors(self) -> list[TensorInfo]:
        return list(self._infos)

    def load(self, name: str) -> np.ndarray:
        return self._source(self._owner[name]).load(name)
