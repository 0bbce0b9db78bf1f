"""The manifest's pydantic models: these *are* the format's schema.

`tools/gen_schema.py` writes spec/schema/*.json from them and a test fails when the committed
files drift. Unknown optional fields are ignored (extra="ignore") so newer minor versions stay
readable; an extension that changes meaning is listed in `must_understand`, and a reader that
does not know it refuses the file. Methods and codecs are open names here: which ones a reader
knows is decided by its registries (kformat.methods, kformat.codecs), not by the schema, so a
file using an extension fails with an error that names it rather than a schema error.

This module imports nothing of kformat but the constants: the recipe a file was packed with
is stored as plain data.
"""

from __future__ import annotations

import re
from typing import Any, Iterator, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_serializer

from .constants import ALIGNMENT, FORMAT_MAJOR, FORMAT_MINOR, TABLE_SLOTS

HEX64 = re.compile(r"^[0-9a-f]{64}$")


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class BlobRef(_Model):
    """Where a blob lives: shard index (0 for a single file), offset, length, and its hash."""

    shard: int = Field(0, ge=0, description="index into shards; 0 in a single file")
    offset: int = Field(ge=0, description="bytes from the start of the data region or shard")
    length: int = Field(ge=0, description="blob length in bytes")
    sha256: str = Field(description="lowercase hex SHA-256 of the blob's bytes")

    @field_validator("sha256")
    @classmethod
    def _hex(cls, value: str) -> str:
        if not HEX64.match(value):
            raise ValueError("must be 64 lowercase hex digits")
        return value


class Tile(_Model):
    """One rectangle of a tensor's 2-D view and the blob holding its plane."""

    row: int = Field(ge=0)
    col: int = Field(ge=0)
    rows: int = Field(ge=1)
    cols: int = Field(ge=1)
    blob: BlobRef


class Table(_Model):
    """A small array stored as a blob: codebooks, scales, zero points."""

    dtype: Literal["float16", "float32", "uint8"]
    shape: list[int] = Field(description="(groups, entries) for codebooks, (groups,) otherwise")
    blob: BlobRef


class Quant(_Model):
    """How a tensor's planes turn back into values: the method and its tables.

    The core methods' tables sit in named slots (codebook, scale, zero_point); an extension
    method's tables go under `tables`, which is left out of the manifest when empty."""

    method: str = Field(
        min_length=1, description="quantization method: kmeans, linear, fp16, raw, or an extension"
    )
    bits: int | None = Field(None, ge=1, le=8)
    group_rows: int = Field(0, ge=0, description="rows sharing one codebook/scale (0: none)")
    codebook: Table | None = None
    scale: Table | None = None
    zero_point: Table | None = None
    tables: dict[str, Table] = Field(default_factory=dict, description="tables of extension methods, by name")

    @model_serializer(mode="wrap")
    def _drop_empty_tables(self, handler):
        data = handler(self)
        if not data.get("tables"):
            data.pop("tables", None)
        return data

    @classmethod
    def build(cls, method: str, bits: int | None, group_rows: int, tables: dict[str, Table]) -> "Quant":
        """A Quant with each table in its slot, or under `tables` when it has none."""
        slots = {name: tables[name] for name in TABLE_SLOTS if name in tables}
        other = {name: table for name, table in tables.items() if name not in TABLE_SLOTS}
        return cls(method=method, bits=bits, group_rows=group_rows, tables=other, **slots)

    def table(self, name: str) -> Table | None:
        return getattr(self, name) if name in TABLE_SLOTS else self.tables.get(name)

    def named_tables(self) -> Iterator[tuple[str, Table]]:
        """Every table present, slots first, then `tables` in stored order."""
        for name in TABLE_SLOTS:
            if getattr(self, name) is not None:
                yield name, getattr(self, name)
        yield from self.tables.items()

    def with_tables(self, tables: dict[str, Table]) -> "Quant":
        return Quant.build(self.method, self.bits, self.group_rows, tables)


class TensorEntry(_Model):
    name: str = Field(min_length=1)
    dtype: str = Field(description="numpy dtype name of the source tensor")
    shape: list[int]
    view: tuple[int, int] = Field(description="rows x cols of the 2-D view tiles are cut from")
    storage: str = Field(description="element type of planes: uint8 codes, float16, or dtype")
    depth: int | None = Field(None, description="plane bit depth (1, 2, 4, 8) of code planes")
    codec: str = Field(min_length=1, description="plane codec: png, zstd, raw, floatz, or an extension")
    tile: tuple[int, int]
    quant: Quant
    tiles: list[Tile]
    rule: str = Field(description="the rule applied, in its short text form")
    reason: str = Field("", description="why this rule (recipe entry, fallback)")
    stats: dict[str, float] = Field(default_factory=dict)

    @property
    def stored_bytes(self) -> int:
        """Bytes of every blob the tensor needs: its tiles and tables."""
        return sum(tile.blob.length for tile in self.tiles) + sum(
            t.blob.length for _, t in self.quant.named_tables()
        )


class Shard(_Model):
    name: str = Field(description="file name under shards/: <sha256>.kfs")
    length: int = Field(ge=0)
    sha256: str


class Manifest(_Model):
    format: Literal["kformat"] = "kformat"
    version: tuple[int, int] = (FORMAT_MAJOR, FORMAT_MINOR)
    generator: str = ""
    layout: Literal["single", "sharded"] = "single"
    alignment: int = ALIGNMENT
    must_understand: list[str] = Field(default_factory=list)
    shards: list[Shard] = Field(default_factory=list)
    tensors: list[TensorEntry]
    recipe: dict[str, Any] | None = Field(
        None, description="the recipe used, as plain data (kformat.recipe.Recipe)"
    )
    metadata: dict[str, str] = Field(default_factory=dict)
    aliases: dict[str, str] = Field(
        default_factory=dict,
        description="tied tensors stored once: alias name -> name of a stored tensor (the"
        " 'aliases' feature, listed in must_understand; left out when empty)",
    )

    @model_serializer(mode="wrap")
    def _drop_empty_aliases(self, handler):
        data = handler(self)
        if not data.get("aliases"):
            data.pop("aliases", None)
        return data

    def aliases_of(self) -> dict[str, list[str]]:
        """Stored tensor name -> its aliases, in the manifest's order."""
        tied: dict[str, list[str]] = {}
        for alias, name in self.aliases.items():
            tied.setdefault(name, []).append(alias)
        return tied

    def names(self) -> list[str]:
        """Every tensor name a reader offers: stored tensors, each followed by its aliases."""
        tied = self.aliases_of()
        return [n for t in self.tensors for n in (t.name, *tied.get(t.name, ()))]
