"""Recipes: the rule grammar, recipes and presets, loading TOML/JSON, and planning."""

from .plan import Decision, is_float_dtype, plan
from .presets import PRESETS
from .recipe import Recipe, RuleEntry, build_recipe, load_recipe, parse_rule_override, recipe_from_dict
from .rules import DEFAULT_TILE, Rule, auto_tile, parse_rule, tile_for

__all__ = [
    "DEFAULT_TILE",
    "PRESETS",
    "Decision",
    "Recipe",
    "Rule",
    "RuleEntry",
    "auto_tile",
    "build_recipe",
    "is_float_dtype",
    "load_recipe",
    "parse_rule",
    "parse_rule_override",
    "plan",
    "recipe_from_dict",
    "tile_for",
]
