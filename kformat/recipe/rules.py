"""A rule: how one tensor is stored (method, bits, granularity, codec, pruning, tile).

Methods and codecs are the names their registries know (kformat.methods, kformat.codecs);
each method checks the options it takes. A rule has a short text form used on the command
line and in manifests:
``kmeans:4,group=64,codec=zstd,prune=0.5,codebook=float32,tile=256x4096``, ``linear:8,row``,
``fp16``, ``raw``.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ..codecs import CODECS
from ..errors import KFormatError, RecipeError
from ..format.limits import MAX_TILE_ELEMENTS, MAX_TILE_SIDE
from ..methods import METHODS, get_method

Granularity = Literal["tensor", "row", "group"]
TableDtype = Literal["float16", "float32"]

DEFAULT_TILE = (256, 4096)  # what an automatic tile is for a 4096-column tensor
TILE_VALUES = DEFAULT_TILE[0] * DEFAULT_TILE[1]  # an automatic tile holds about this many values
DEFAULT_GROUP_SIZE = 64


def auto_tile(view: tuple[int, int]) -> tuple[int, int]:
    """The tile of a tensor whose rule and recipe name none: whole rows (up to the largest
    side a reader takes), as many as hold about TILE_VALUES values (256 rows of 4096). A
    tile as wide as its tensor decodes straight into its rows of the output; a narrower one
    is decoded into a band and copied, which made VGG16's FC layers 1.3x slower to load."""
    rows, cols = view
    tile_cols = max(1, min(cols, MAX_TILE_SIDE))
    return (max(1, min(rows, MAX_TILE_SIDE, TILE_VALUES // tile_cols)), tile_cols)


def tile_for(view: tuple[int, int], rule_tile, recipe_tile) -> tuple[int, int]:
    """A tensor's tile: its rule's, else its recipe's, else automatic (auto_tile)."""
    return tuple(rule_tile or recipe_tile or auto_tile(view))


def check_tile(tile: tuple[int, int]) -> None:
    """A tile size a reader accepts (rules and recipes share it)."""
    if not all(1 <= side <= MAX_TILE_SIDE for side in tile):
        raise ValueError(f"tile sides must be 1..{MAX_TILE_SIDE}")
    if tile[0] * tile[1] > MAX_TILE_ELEMENTS:
        raise ValueError(f"a tile holds at most {MAX_TILE_ELEMENTS} elements, {tile[0]}x{tile[1]} is more")


class Rule(BaseModel):
    """How one tensor is stored."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    method: str = Field(
        description="kmeans codebook, linear (uniform) codes, fp16, raw, or a registered method"
    )
    bits: int | None = Field(None, ge=1, le=8, description="code width for kmeans and linear")
    granularity: Granularity = Field(
        "tensor", description="one codebook/scale per tensor, per row, or per group of rows"
    )
    group_size: int | None = Field(None, ge=1, description="rows per group (granularity=group)")
    codec: str | None = Field(
        None,
        description="plane codec (png, zstd, raw, floatz, or a registered one); default png"
        " for codes, raw for values",
    )
    prune: float | None = Field(
        None, ge=0.0, lt=1.0, description="fraction of smallest-magnitude weights set to 0"
    )
    prune_threshold: float | None = Field(
        None, ge=0.0, description="weights with |w| <= threshold set to exactly 0"
    )
    codebook_dtype: TableDtype = Field("float16", description="dtype of stored codebooks")
    ecq: float | None = Field(
        None,
        ge=0.0,
        le=3.0,
        description="kmeans only: entropy-constrained fit that lowers the code entropy (so the"
        " PNG/zstd planes shrink) while losing at most this many dB of SQNR against the plain fit",
    )
    scale: Literal["row"] | None = Field(
        None,
        description="kmeans only: 'row' divides each row (output channel) by a stored float16 scale"
        " (its RMS) before one codebook is fitted to all rows, so rows of very different ranges"
        " (depthwise convolutions, small rows) share it well",
    )
    tile: tuple[int, int] | None = Field(None, description="tile rows x cols (recipe default)")

    @model_validator(mode="after")
    def _consistent(self) -> "Rule":
        if self.method not in METHODS:
            raise ValueError(f"unknown method {self.method!r} (known: {', '.join(METHODS)})")
        if self.codec is not None and self.codec not in CODECS:
            raise ValueError(f"unknown codec {self.codec!r} (known: {', '.join(CODECS)})")
        if self.granularity == "group" and self.group_size is None:
            raise ValueError("granularity 'group' needs group_size")
        if self.group_size is not None and self.granularity != "group":
            raise ValueError("group_size needs granularity 'group'")
        if self.prune is not None and self.prune_threshold is not None:
            raise ValueError("give prune (a fraction) or prune_threshold, not both")
        get_method(self.method).check_rule(self)
        if self.tile is not None:
            check_tile(self.tile)
        return self

    @property
    def quantized(self) -> bool:
        """Whether planes hold codes (with tables) rather than values."""
        return get_method(self.method).codes

    @property
    def plane_codec(self) -> str:
        return self.codec or get_method(self.method).default_codec()

    def to_text(self) -> str:
        """The canonical short form, which parse_rule reads back to an equal rule."""
        head = self.method + (f":{self.bits}" if self.bits is not None else "")
        parts = [head]
        if self.granularity == "row":
            parts.append("row")
        elif self.granularity == "group":
            parts.append(f"group={self.group_size}")
        if self.codec is not None:
            parts.append(f"codec={self.codec}")
        if self.prune is not None:
            parts.append(f"prune={self.prune:g}")
        if self.prune_threshold is not None:
            parts.append(f"prune_threshold={self.prune_threshold:g}")
        if self.codebook_dtype != "float16" and self.method == "kmeans":
            parts.append(f"codebook={self.codebook_dtype}")
        if self.ecq is not None:
            parts.append(f"ecq={self.ecq:g}")
        if self.scale is not None:
            parts.append(f"scale={self.scale}")
        if self.tile is not None:
            parts.append(f"tile={self.tile[0]}x{self.tile[1]}")
        return ",".join(parts)


_DTYPE_ALIASES = {"fp16": "float16", "fp32": "float32", "float16": "float16", "float32": "float32"}


def rule_fields_from_text(text: str) -> dict[str, Any]:
    tokens = [t.strip() for t in text.split(",") if t.strip()]
    if not tokens:
        raise RecipeError("empty rule: expected e.g. 'kmeans:4', 'linear:8,row', 'fp16' or 'raw'")
    head, *options = tokens
    method, _, bits = head.partition(":")
    fields: dict[str, Any] = {"method": method.strip().lower()}
    if bits:
        try:
            fields["bits"] = int(bits)
        except ValueError:
            raise RecipeError(f"rule {text!r}: bits must be a whole number, got {bits!r}") from None
    elif fields["method"] in METHODS and get_method(fields["method"]).codes:
        fields["bits"] = 8
    for option in options:
        key, eq, value = option.partition("=")
        key = key.strip().lower()
        value = value.strip()
        try:
            if not eq and key in ("row", "tensor"):
                fields["granularity"] = key
            elif key == "group":
                fields["granularity"] = "group"
                fields["group_size"] = int(value) if value else DEFAULT_GROUP_SIZE
            elif key == "codec":
                fields["codec"] = value
            elif key == "prune":
                fields["prune"] = float(value)
            elif key == "prune_threshold":
                fields["prune_threshold"] = float(value)
            elif key == "ecq":
                fields["ecq"] = float(value)
            elif key == "scale":
                fields["scale"] = value.lower()
            elif key in ("codebook", "codebook_dtype"):
                fields["codebook_dtype"] = _DTYPE_ALIASES.get(value.lower(), value)
            elif key == "tile":
                rows, _, cols = value.lower().partition("x")
                fields["tile"] = (int(rows), int(cols))
            else:
                raise RecipeError(
                    f"rule {text!r}: unknown option {option!r} (known: row, tensor, group=N,"
                    " codec=png|zstd|raw|floatz, prune=F, prune_threshold=T, codebook=fp16|fp32, ecq=DB,"
                    " scale=row, tile=RxC)"
                )
        except ValueError as exc:
            if isinstance(exc, RecipeError):
                raise
            raise RecipeError(f"rule {text!r}: bad value in {option!r}") from None
    return fields


def validation_message(exc: ValidationError, where: str) -> str:
    problems = []
    for err in exc.errors():
        loc = ""
        for part in err["loc"]:
            loc += f"[{part}]" if isinstance(part, int) else (f".{part}" if loc else str(part))
        msg = err["msg"].removeprefix("Value error, ")
        problems.append(f"{loc}: {msg}" if loc else msg)
    return f"{where}: " + "; ".join(problems)


def parse_rule(text: str) -> Rule:
    """Parse the short text form of a rule, e.g. ``kmeans:4,group=64``."""
    fields = rule_fields_from_text(text)
    try:
        return Rule(**fields)
    except KFormatError as exc:
        raise RecipeError(f"rule {text!r}: {exc}") from None
    except ValidationError as exc:
        raise RecipeError(validation_message(exc, f"rule {text!r}")) from None
