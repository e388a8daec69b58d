"""Recipes: load YAML with provenance, resolve `extends:`, apply overrides, validate, fill defaults."""

from quantbuild.recipe.resolve import Recipe, load_recipe

__all__ = ["Recipe", "load_recipe"]
