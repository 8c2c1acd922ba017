"""The recipe: schema (``schema``) and reading/overrides/errors (``load``)."""

from qtune.recipe.load import dump_recipe, load_recipe, load_run_recipe
from qtune.recipe.schema import Recipe

__all__ = ["Recipe", "load_recipe", "load_run_recipe", "dump_recipe"]
