"""The recipe: schema (``schema``) and reading/overrides/errors (``load``)."""

from qtune.recipe.load import dump_recipe, load_recipe
from qtune.recipe.schema import Recipe

__all__ = ["Recipe", "load_recipe", "dump_recipe"]
