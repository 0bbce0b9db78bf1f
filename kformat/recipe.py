"""Declarative recipes: which quantization rule applies to which tensor.

A recipe is an ordered list of rule entries (a glob over tensor names, optionally narrowed
by rank and by position among the matches) plus a default rule. The first entry that matches
a tensor wins. Recipes are TOML or JSON files, or built-in presets, validated by pydantic;
errors name the offending field (``rules[1].bits``).

A rule also has a short text form used on the command line and in manifests:
``kmeans:4,group=64,codec=zstd,prune=0.5,codebook=float32,tile=256x4096``, ``linear:8,row``,
``fp16``, ``raw``.
"""

from __future__ import annotations

import fnmatch
import json
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from .errors import RecipeError
from .limits import MAX_TILE_ELEMENTS

Method = Literal["kmeans", "linear", "fp16", "raw"]
Granularity = Literal["tensor", "row", "group"]
CodecName = Literal["png", "zstd", "raw"]
TableDtype = Literal["float16", "float32"]

DEFAULT_TILE = (256, 4096)
DEFAULT_GROUP_SIZE = 64
DEFAULT_MIN_ELEMENTS = 1024
MAX_TILE_SIDE = 1 << 16


def _check_tile(tile: tuple[int, int]) -> None:
    """A tile size a reader accepts (rules and recipes share it)."""
    if not all(1 <= side <= MAX_TILE_SIDE for side in tile):
        raise ValueError(f"tile sides must be 1..{MAX_TILE_SIDE}")
    if tile[0] * tile[1] > MAX_TILE_ELEMENTS:
        raise ValueError(f"a tile holds at most {MAX_TILE_ELEMENTS} elements, {tile[0]}x{tile[1]} is more")


class Rule(BaseModel):
    """How one tensor is stored."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    method: Method = Field(description="kmeans codebook, linear (uniform) codes, fp16, or raw")
    bits: int | None = Field(None, ge=1, le=8, description="code width for kmeans and linear")
    granularity: Granularity = Field(
        "tensor", description="one codebook/scale per tensor, per row, or per group of rows"
    )
    group_size: int | None = Field(None, ge=1, description="rows per group (granularity=group)")
    codec: CodecName | None = Field(
        None, description="plane codec; default png for codes, raw for values"
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
    tile: tuple[int, int] | None = Field(None, description="tile rows x cols (recipe default)")

    @model_validator(mode="after")
    def _consistent(self) -> "Rule":
        quantized = self.method in ("kmeans", "linear")
        if quantized and self.bits is None:
            raise ValueError(f"{self.method} needs bits (1 to 8)")
        if not quantized:
            extras = [
                name
                for name in ("bits", "group_size", "prune", "prune_threshold", "ecq")
                if getattr(self, name) is not None
            ]
            if extras or self.granularity != "tensor":
                extras += ["granularity"] if self.granularity != "tensor" else []
                raise ValueError(f"{self.method} takes no {', '.join(extras)}")
            if self.codec == "png":
                raise ValueError(f"{self.method} stores values, and png holds codes only")
        if self.granularity == "group" and self.group_size is None:
            raise ValueError("granularity 'group' needs group_size")
        if self.group_size is not None and self.granularity != "group":
            raise ValueError("group_size needs granularity 'group'")
        if self.ecq is not None and self.method != "kmeans":
            raise ValueError("ecq applies to kmeans only")
        if self.prune is not None and self.prune_threshold is not None:
            raise ValueError("give prune (a fraction) or prune_threshold, not both")
        if self.tile is not None:
            _check_tile(self.tile)
        return self

    @property
    def quantized(self) -> bool:
        return self.method in ("kmeans", "linear")

    @property
    def plane_codec(self) -> str:
        return self.codec or ("png" if self.quantized else "raw")

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
        if self.tile is not None:
            parts.append(f"tile={self.tile[0]}x{self.tile[1]}")
        return ",".join(parts)


_DTYPE_ALIASES = {"fp16": "float16", "fp32": "float32", "float16": "float16", "float32": "float32"}


def _rule_fields_from_text(text: str) -> dict[str, Any]:
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
    elif fields["method"] in ("kmeans", "linear"):
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
            elif key in ("codebook", "codebook_dtype"):
                fields["codebook_dtype"] = _DTYPE_ALIASES.get(value.lower(), value)
            elif key == "tile":
                rows, _, cols = value.lower().partition("x")
                fields["tile"] = (int(rows), int(cols))
            else:
                raise RecipeError(
                    f"rule {text!r}: unknown option {option!r} (known: row, tensor, group=N,"
                    " codec=png|zstd|raw, prune=F, prune_threshold=T, codebook=fp16|fp32, ecq=DB,"
                    " tile=RxC)"
                )
        except ValueError as exc:
            if isinstance(exc, RecipeError):
                raise
            raise RecipeError(f"rule {text!r}: bad value in {option!r}") from None
    return fields


def _validation_message(exc: ValidationError, where: str) -> str:
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
    fields = _rule_fields_from_text(text)
    try:
        return Rule(**fields)
    except ValidationError as exc:
        raise RecipeError(_validation_message(exc, f"rule {text!r}")) from None


def _coerce_rule(value: Any) -> Any:
    return _rule_fields_from_text(value) if isinstance(value, str) else value


class RuleEntry(BaseModel):
    """A selector (glob, rank, position among matches) and the rule it applies."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    match: str = Field("*", description="glob over tensor names (fnmatch, case-sensitive)")
    ndim: int | None = Field(None, ge=0, description="only tensors of this rank")
    nth: int | None = Field(
        None, ge=0, description="only the nth tensor (0-based, file order) that match and ndim select"
    )
    rule: Rule

    @model_validator(mode="before")
    @classmethod
    def _inline_rule(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        data = dict(data)
        inline = {k: data.pop(k) for k in list(data) if k in Rule.model_fields}
        if "rule" in data:
            if inline:
                raise ValueError(f"give either rule or {', '.join(inline)}, not both")
            data["rule"] = _coerce_rule(data["rule"])
        elif inline:
            data["rule"] = inline
        return data

    def selects(self, name: str, ndim: int) -> bool:
        return fnmatch.fnmatchcase(name, self.match) and (self.ndim is None or self.ndim == ndim)


class Recipe(BaseModel):
    """Ordered rules plus a default; the first matching entry decides a tensor's rule."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str | None = Field(None, description="a label recorded in the manifest")
    default: Rule = Field(default_factory=lambda: Rule(method="fp16"))
    rules: list[RuleEntry] = Field(default_factory=list)
    min_elements: int = Field(
        DEFAULT_MIN_ELEMENTS, ge=0, description="float tensors smaller than this are stored raw"
    )
    tile: tuple[int, int] = Field(DEFAULT_TILE, description="default tile rows x cols")

    @model_validator(mode="before")
    @classmethod
    def _coerce_default(cls, data: Any) -> Any:
        if isinstance(data, dict) and "default" in data:
            data = dict(data)
            data["default"] = _coerce_rule(data["default"])
        return data

    @model_validator(mode="after")
    def _tile_ok(self) -> "Recipe":
        _check_tile(self.tile)
        return self

    def with_rules(self, extra: list[RuleEntry]) -> "Recipe":
        """A copy where `extra` entries come first (command-line --rule overrides)."""
        return self.model_copy(update={"rules": list(extra) + list(self.rules)})


@dataclass(frozen=True)
class Decision:
    """What the planner chose for one tensor, and why."""

    name: str
    rule: Rule
    reason: str  # which entry matched, or why the rule was replaced


def is_float_dtype(dtype: np.dtype) -> bool:
    return np.dtype(dtype).kind == "f"


def plan(recipe: Recipe, tensors: list[tuple[str, tuple[int, ...], np.dtype]]) -> tuple[list[Decision], list[str]]:
    """Choose a rule for every tensor (in file order); also list entries that matched nothing."""
    seen = [0] * len(recipe.rules)
    used = [False] * len(recipe.rules)
    decisions = []
    for name, shape, dtype in tensors:
        ndim = len(shape)
        chosen, reason = recipe.default, "default"
        for i, entry in enumerate(recipe.rules):
            if not entry.selects(name, ndim):
                continue
            position = seen[i]
            seen[i] += 1
            if entry.nth is not None and entry.nth != position:
                continue
            chosen, reason = entry.rule, f"rules[{i}] ({entry.match})"
            used[i] = True
            break
        decisions.append(_eligible(name, shape, dtype, chosen, reason, recipe))
    unmatched = [
        f"rules[{i}] (match={e.match!r}"
        + (f", ndim={e.ndim}" if e.ndim is not None else "")
        + (f", nth={e.nth}" if e.nth is not None else "")
        + ") matched no tensor"
        for i, (e, u) in enumerate(zip(recipe.rules, used))
        if not u
    ]
    return decisions, unmatched


def _eligible(name, shape, dtype, rule: Rule, reason: str, recipe: Recipe) -> Decision:
    """Replace a lossy rule where it does not apply (integers, tiny tensors, vectors)."""
    size = int(np.prod(shape, dtype=np.int64))
    raw = Rule(method="raw", codec=rule.codec if rule.codec in ("zstd", "raw") else None)
    if rule.method == "raw":
        return Decision(name, rule, reason)
    if not is_float_dtype(dtype):
        return Decision(name, raw, f"{reason}; stored raw: {np.dtype(dtype).name} is not floating point")
    if size < recipe.min_elements:
        return Decision(name, raw, f"{reason}; stored raw: {size} elements < min_elements {recipe.min_elements}")
    if rule.method == "fp16" and np.dtype(dtype) == np.float16:
        return Decision(name, raw, f"{reason}; stored raw: already float16")
    if rule.quantized and len(shape) < 2:
        fp16 = Rule(method="fp16") if np.dtype(dtype) != np.float16 else raw
        return Decision(name, fp16, f"{reason}; {fp16.method}: {rule.method} applies to rank >= 2 only")
    return Decision(name, rule, reason)


# Built-in presets. "mobile" is the mixed recipe of the classic iOS classifier: the first
# fully connected layer (the first rank-2 tensor in file order) 4-bit k-means, the other FC
# layers 8-bit k-means, everything else fp16. Its codebooks are fitted entropy-constrained
# (ecq: at most 0.25 dB below the plain fit for the 4-bit layer, 0.5 dB for the 8-bit ones,
# which stay above 43 dB), and fp16 values are byte-shuffled and zstd-compressed: lossless,
# 16% smaller. See tools/bench/size_quality.py for what each choice buys.
PRESETS: dict[str, dict[str, Any]] = {
    "raw": {"name": "raw", "default": "raw"},
    "fp16": {"name": "fp16", "default": "fp16,codec=zstd"},
    "int8": {"name": "int8", "default": "linear:8,row"},
    "kmeans8": {"name": "kmeans8", "default": "kmeans:8"},
    "kmeans4": {"name": "kmeans4", "default": "kmeans:4"},
    "kmeans2": {"name": "kmeans2", "default": "kmeans:2"},
    "mobile": {
        "name": "mobile",
        "default": "fp16,codec=zstd",
        "rules": [
            {"match": "*", "ndim": 2, "nth": 0, "rule": "kmeans:4,ecq=0.25"},
            {"match": "*", "ndim": 2, "rule": "kmeans:8,ecq=0.5"},
        ],
    },
}


def recipe_from_dict(data: Any, where: str = "recipe") -> Recipe:
    if not isinstance(data, dict):
        raise RecipeError(f"{where}: expected a table of settings, got {type(data).__name__}")
    try:
        return Recipe.model_validate(data)
    except RecipeError as exc:
        raise RecipeError(f"{where}: {exc}") from None
    except ValidationError as exc:
        raise RecipeError(_validation_message(exc, where)) from None


def load_recipe(spec: str | Path | None) -> Recipe:
    """A preset name, or a path to a TOML/JSON recipe; None gives the fp16 preset."""
    if spec is None:
        return recipe_from_dict(PRESETS["fp16"], "preset fp16")
    text = str(spec)
    if text in PRESETS:
        return recipe_from_dict(PRESETS[text], f"preset {text}")
    path = Path(text)
    if not path.exists():
        raise RecipeError(
            f"recipe {text!r} is neither a preset ({', '.join(PRESETS)}) nor an existing file"
        )
    raw = path.read_bytes()
    try:
        if path.suffix.lower() == ".json":
            data = json.loads(raw)
        else:
            data = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RecipeError(f"{path}: not valid {'JSON' if path.suffix.lower() == '.json' else 'TOML'}: {exc}") from None
    return recipe_from_dict(data, str(path))


def parse_rule_override(text: str) -> RuleEntry:
    """``GLOB=RULE`` from the command line, e.g. ``classifier.*=kmeans:4``."""
    glob, eq, rule_text = text.partition("=")
    if not eq or not glob.strip():
        raise RecipeError(f"--rule {text!r}: expected GLOB=RULE, e.g. 'fc1.*=kmeans:4'")
    return RuleEntry(match=glob.strip(), rule=parse_rule(rule_text))
