"""Which input formats kformat reads, and how a path picks one.

Each format is one module of kformat.sources holding a source class, plus one registration
here: the suffixes it answers to (or a `claims` test for directories and special names) and
the pip extra that provides its library, named in the error when that library is missing.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..errors import InputError, NotFound
from ..progress import log
from ..registry import Registry


@dataclass(frozen=True)
class InputFormat:
    name: str
    suffixes: tuple[str, ...]
    source: str  # "module:Class" under kformat.sources
    extra: str | None = None  # the pip extra whose library reads it
    claims: Callable[[Path], bool] | None = None  # directories, index files
    described: str = ""  # what a user gives for it, where suffixes do not say (claimed paths)

    def as_given(self) -> str:
        """How a user names an input of this format, for help texts: `.pt/.pth/.bin (torch)`,
        `.gguf`, or what it claims."""
        if self.described:
            return self.described
        given = "/".join(self.suffixes)
        return given if self.suffixes == (f".{self.name}",) else f"{given} ({self.name})"

    def open(self, path: Path):
        log.info("reading %s as %s", path, self.name)
        module, cls = self.source.split(":")
        try:
            loaded = importlib.import_module(f"kformat.sources.{module}")
        except ImportError as exc:
            hint = f"pip install 'kformat[{self.extra}]'" if self.extra else str(exc)
            raise InputError(f"{path}: reading {self.name} files needs {hint}") from None
        return getattr(loaded, cls)(path)


_REGISTRY: Registry[InputFormat] = Registry("input format")
INPUT_FORMATS = _REGISTRY.items


def register_input_format(fmt: InputFormat, *, replace: bool = False) -> InputFormat:
    return _REGISTRY.register(fmt, replace=replace)


def _is_hf_checkpoint(path: Path) -> bool:
    from .sharded import is_checkpoint

    return is_checkpoint(path)


for _fmt in (
    InputFormat("npz", (".npz",), "npz:NpzSource"),
    InputFormat("safetensors", (".safetensors",), "safetensors:SafetensorsSource", "safetensors"),
    InputFormat("torch", (".pt", ".pth", ".bin"), "torch_file:TorchSource", "torch"),
    InputFormat(
        "huggingface",
        (),
        "sharded:ShardedSource",
        "safetensors",
        _is_hf_checkpoint,
        "a Hugging Face checkpoint (a directory of shards, or its .index.json)",
    ),
    InputFormat("onnx", (".onnx",), "onnx:OnnxSource", "onnx"),
    InputFormat("gguf", (".gguf",), "gguf:GgufSource", "gguf"),
):
    register_input_format(_fmt)


def input_formats() -> list[str]:
    """Every registered input format as a user gives it (InputFormat.as_given), in order."""
    return [fmt.as_given() for fmt in INPUT_FORMATS.values()]


def known_suffixes() -> list[str]:
    return [suffix for fmt in INPUT_FORMATS.values() for suffix in fmt.suffixes]


def open_source(path: str | Path):
    """The source for `path`: a claimed directory or index file first, then by suffix."""
    path = Path(path)
    if not path.exists():
        raise NotFound(f"{path}: no such file")
    if not path.is_dir() and not path.is_file():  # a FIFO, socket or device: a read can wait for ever
        raise InputError(f"{path}: not a regular file (a pipe, socket or device); expected a model file")
    for fmt in INPUT_FORMATS.values():
        if fmt.claims is not None and fmt.claims(path):
            return fmt.open(path)
    if path.is_dir():
        raise InputError(
            f"{path} is a directory but not a Hugging Face checkpoint (no *.safetensors files or"
            " *.index.json); expected a model file or such a directory"
        )
    suffix = path.suffix.lower()
    for fmt in INPUT_FORMATS.values():
        if suffix in fmt.suffixes:
            return fmt.open(path)
    raise InputError(
        f"{path}: unknown model file type {suffix!r} (expected one of {', '.join(known_suffixes())},"
        " a *.index.json or a checkpoint directory)"
    )
