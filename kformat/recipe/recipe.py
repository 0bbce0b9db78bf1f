"""Declarative recipes: which rule applies to which tensor.

A recipe is an ordered list of rule entries (a glob over tensor names, optionally narrowed
by rank and by position among the matches) plus a default rule. The first entry that matches
a tensor wins. Recipes are TOML or JSON files, or built-in presets, validated by pydantic;
errors name the offending field (``rules[1].bits``).
"""

from __future__ import annotations

import fnmatch
import json
import tomllib
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_serializer, model_validator

from ..errors import RecipeError
from .presets import PRESETS
from .roles import Role, role_of
from .rules import Rule, check_tile, parse_rule, rule_fields_from_text, validation_message

DEFAULT_MIN_ELEMENTS = 1024


def _coerce_rule(value: Any) -> Any:
    return rule_fields_from_text(value) if isinstance(value, str) else value


class RuleEntry(BaseModel):
    """A selector (glob, rank, role, position among matches, the largest) and the rule it applies."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    match: str = Field("*", description="glob over tensor names (fnmatch, case-sensitive)")
    ndim: int | None = Field(None, ge=0, description="only tensors of this rank")
    role: Role | None = Field(
        None, description="only tensors of this role (kformat.recipe.roles): fc, embedding, conv, vector"
    )
    nth: int | None = Field(
        None, ge=0, description="only the nth tensor (0-based, file order) that match, ndim and role select"
    )
    largest: bool = Field(False, description="only the largest tensor that match, ndim and role select")
    rule: Rule

    @model_serializer(mode="wrap")
    def _drop_unset_selectors(self, handler):
        data = handler(self)  # role and largest came later: recipes stored without them keep their bytes
        if data.get("role") is None:
            data.pop("role", None)
        if not data.get("largest"):
            data.pop("largest", None)
        return data

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

    def selects(self, name: str, shape: tuple[int, ...]) -> bool:
        return (
            fnmatch.fnmatchcase(name, self.match)
            and (self.ndim is None or self.ndim == len(shape))
            and (self.role is None or self.role == role_of(name, shape))
        )


class Recipe(BaseModel):
    """Ordered rules plus a default; the first matching entry decides a tensor's rule."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str | None = Field(None, description="a label recorded in the manifest")
    default: Rule = Field(default_factory=lambda: Rule(method="fp16"))
    rules: list[RuleEntry] = Field(default_factory=list)
    min_elements: int = Field(
        DEFAULT_MIN_ELEMENTS, ge=0, description="float tensors smaller than this are stored raw"
    )
    tile: tuple[int, int] | None = Field(
        None,
        description="default tile rows x cols; none: whole rows, about 256 x 4096 values a tile",
    )

    @model_validator(mode="before")
    @classmethod
    def _coerce_default(cls, data: Any) -> Any:
        if isinstance(data, dict) and "default" in data:
            data = dict(data)
            data["default"] = _coerce_rule(data["default"])
        return data

    @model_validator(mode="after")
    def _tile_ok(self) -> "Recipe":
        if self.tile is not None:
            check_tile(self.tile)
        return self

    def with_rules(self, extra: list[RuleEntry]) -> "Recipe":
        """A copy where `extra` entries come first (command-line --rule overrides)."""
        return self.model_copy(update={"rules": list(extra) + list(self.rules)})


def recipe_from_dict(data: Any, where: str = "recipe") -> Recipe:
    if not isinstance(data, dict):
        raise RecipeError(f"{where}: expected a table of settings, got {type(data).__name__}")
    try:
        return Recipe.model_validate(data)
    except RecipeError as exc:
        raise RecipeError(f"{where}: {exc}") from None
    except ValidationError as exc:
        raise RecipeError(validation_message(exc, where)) from None


def load_recipe(spec: str | Path | None) -> Recipe:
    """A preset name, or a path to a TOML/JSON recipe; None gives the fp16 preset."""
    if spec is None:
        return recipe_from_dict(PRESETS["fp16"], "preset fp16")
    text = str(spec)
    if text in PRESETS:
        return recipe_from_dict(PRESETS[text], f"preset {text}")
    path = Path(text)
    if not path.exists():
        raise RecipeError(f"recipe {text!r} is neither a preset ({', '.join(PRESETS)}) nor an existing file")
    raw = path.read_bytes()
    try:
        if path.suffix.lower() == ".json":
            data = json.loads(raw)
        else:
            data = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RecipeError(
            f"{path}: not valid {'JSON' if path.suffix.lower() == '.json' else 'TOML'}: {exc}"
        ) from None
    return recipe_from_dict(data, str(path))


def parse_rule_override(text: str) -> RuleEntry:
    """``GLOB=RULE`` from the command line, e.g. ``classifier.*=kmeans:4``."""
    glob, eq, rule_text = text.partition("=")
    if not eq or not glob.strip():
        raise RecipeError(f"--rule {text!r}: expected GLOB=RULE, e.g. 'fc1.*=kmeans:4'")
    return RuleEntry(match=glob.strip(), rule=parse_rule(rule_text))


def build_recipe(recipe: "Recipe | str | Path | None" = None, rules=()) -> Recipe:
    """A recipe from a preset name, a file or a Recipe, with GLOB=RULE overrides first."""
    base = recipe if isinstance(recipe, Recipe) else load_recipe(recipe)
    extra = [parse_rule_override(text) for text in rules]
    return base.with_rules(extra) if extra else base
