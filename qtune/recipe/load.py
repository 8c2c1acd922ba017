"""Reading a recipe: safe YAML, ``key.sub=value`` overrides, and one-line errors.

Everything the user typed goes through :class:`~qtune.recipe.schema.Recipe`, overrides included,
and every problem is reported at once as ``field.path: what is wrong (given X; allowed ...; did
you mean ...?)``. Nothing here imports torch.
"""

from __future__ import annotations

import difflib
import typing
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from qtune.errors import QtuneError, RecipeError
from qtune.recipe.schema import Recipe


def load_recipe(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Recipe:
    """Parse, override and validate a recipe file; raise :class:`RecipeError` with every problem."""
    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"{path}: no such recipe file (give the path to a .yaml recipe, e.g. recipes/smollm2-135m-nf4.yaml)")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise RecipeError(f"{path}: not UTF-8 text (byte {e.start}); save the recipe as UTF-8") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f":{mark.line + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise RecipeError(f"{path}{where}: not valid YAML ({problem})") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise RecipeError(
            f"{path}: a recipe is a mapping of sections (model, quant, lora, data, train, tracking), got {type(raw).__name__}"
        )
    errors: list[str] = []
    for item in overrides:
        try:
            apply_override(raw, item)
        except ValueError as e:
            errors.append(str(e))
    recipe = None
    try:
        recipe = Recipe.model_validate(raw)
    except ValidationError as e:
        errors.extend(format_validation_error(e, raw))
    if errors:
        raise RecipeError(f"{path}: {len(errors)} error(s)", lines=errors)
    recipe = resolve_paths(recipe, path.parent)
    missing = [
        f"data.{field}.path: no such file or folder '{s.path}' (looked in ./ and {path.parent}/)"
        for field, s in [(f"train[{i}]", s) for i, s in enumerate(recipe.data.train)] + [("eval", recipe.data.eval)]
        if s is not None and not s.is_hub and not Path(s.path).exists()
    ]
    model_dir = Path(recipe.model.path).expanduser()
    if (model_dir / "config.json").is_file():  # a local checkpoint: its family must be one qtune supports
        from qtune.registry.families import check_lora_targets, family_of_dir, layer_linears

        try:
            fam = family_of_dir(model_dir)
            check_lora_targets(recipe.lora.target_modules, layer_linears(fam), f"{fam.title} ({fam.model_type})")
        except QtuneError as e:
            missing.append(str(e))
    if missing:
        raise RecipeError(f"{path}: {len(missing)} error(s)", lines=missing)
    return recipe


def load_run_recipe(run_dir: str | Path) -> Recipe:
    """The resolved recipe of a finished run; a one-line error naming what is missing otherwise."""
    from qtune import rundir

    run = Path(run_dir)
    if not rundir.is_finished_run(run):
        raise QtuneError(f"RUN_DIR: '{run}' is not a finished qtune run (needs {rundir.RECIPE} and {rundir.ADAPTER}/)")
    return load_recipe(run / rundir.RECIPE)


def apply_override(raw: dict, item: str) -> None:
    """Set ``a.b.c=value`` in ``raw``; the value is parsed as YAML (``1e-4``, ``true``, ``[q_proj]``)."""
    key, sep, value = item.partition("=")
    if not sep or not key or any(not part for part in key.split(".")):
        raise ValueError(f"{item}: an override is written section.key=value (e.g. train.lr=1e-4)")
    try:
        parsed = yaml.safe_load(value) if value != "" else None
    except yaml.YAMLError:
        parsed = value
    parts = key.split(".")
    node = raw
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ValueError(f"{key}: cannot set a sub-key of '{part}', which is {child!r}")
        node = child
    node[parts[-1]] = parsed


def resolve_paths(recipe: Recipe, base: Path) -> Recipe:
    """Make data paths relative to the recipe's folder absolute when they exist there."""

    def resolve(source):
        if source.is_hub:
            return source
        candidate = Path(source.path).expanduser()
        if candidate.is_absolute() or candidate.exists():
            return source.model_copy(update={"path": str(candidate)})
        beside = base / candidate
        return source.model_copy(update={"path": str(beside.resolve())}) if beside.exists() else source

    data = recipe.data.model_copy(
        update={
            "train": [resolve(s) for s in recipe.data.train],
            "eval": resolve(recipe.data.eval) if recipe.data.eval else None,
        }
    )
    model_path = Path(recipe.model.path).expanduser()
    model = recipe.model
    if not model_path.is_absolute() and (base / model_path).is_dir() and not model_path.is_dir():
        model = model.model_copy(update={"path": str((base / model_path).resolve())})
    return recipe.model_copy(update={"data": data, "model": model})


def dump_recipe(recipe: Recipe) -> str:
    """The resolved recipe as YAML (what a run directory keeps as ``recipe.yaml``)."""
    return yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False)


# ----------------------------------------------------------------------------- error formatting


def format_validation_error(error: ValidationError, raw: dict) -> list[str]:
    # a model-level rule may report several problems, one per line
    return [line for e in error.errors(include_url=False) for line in _format_one(e, raw).split("\n")]


def _format_one(err: dict, raw: dict) -> str:
    loc = tuple(str(p) for p in err["loc"])
    path = ".".join(loc)
    kind = err["type"]
    given = err.get("input")
    if kind == "extra_forbidden":
        parent_fields = _fields_at(loc[:-1])
        name = loc[-1]
        section = ".".join(loc[:-1]) or "the recipe"
        hint = _did_you_mean(name, parent_fields)
        allowed = f"allowed: {', '.join(parent_fields)}" if parent_fields else ""
        return f"{path}: '{name}' is not a field of {section} ({'; '.join(x for x in (allowed, hint) if x)})"
    if kind == "missing":
        return f"{path}: required field is missing"
    if kind == "literal_error":
        allowed = _literal_choices(loc)
        hint = _did_you_mean(str(given), allowed)
        tail = "; ".join(x for x in (f"allowed: {', '.join(allowed)}" if allowed else "", hint) if x)
        return f"{path}: {_shown(given)} is not an allowed value ({tail})"
    msg = err["msg"]
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
    if not path:  # a model-level rule that names its own fields
        return msg
    return f"{path}: {msg[0].lower() + msg[1:]} (given {_shown(given)})"


def _shown(value, limit: int = 80) -> str:
    """``repr(value)``, cut to ``limit`` characters: an error line stays one readable line."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def _did_you_mean(word: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return f"did you mean '{close[0]}'?" if close else ""


def _model_at(loc: tuple[str, ...]) -> type[BaseModel] | None:
    model: Any = Recipe
    for part in loc:
        if not (isinstance(model, type) and issubclass(model, BaseModel)) or part not in model.model_fields:
            return None
        model = _unwrap(model.model_fields[part].annotation)
    return model if isinstance(model, type) and issubclass(model, BaseModel) else None


def _fields_at(loc: tuple[str, ...]) -> list[str]:
    model = _model_at(loc)
    return list(model.model_fields) if model else []


def _literal_choices(loc: tuple[str, ...]) -> list[str]:
    if loc and loc[-1].isdigit():  # an item of a list field: the choices are the list's
        loc = loc[:-1]
    parent = _model_at(loc[:-1])
    if parent is None or loc[-1] not in parent.model_fields:
        return []
    return [str(c) for c in _literal_args(parent.model_fields[loc[-1]].annotation)]


def _unwrap(annotation: Any) -> Any:
    """The first BaseModel inside Optional[...] / Union[...] (sections are plain models)."""
    for arg in typing.get_args(annotation) or (annotation,):
        if isinstance(arg, type) and issubclass(arg, BaseModel):
            return arg
    return annotation


def _literal_args(annotation: Any) -> list[Any]:
    if typing.get_origin(annotation) is typing.Literal:
        return list(typing.get_args(annotation))
    out: list[Any] = []
    for arg in typing.get_args(annotation):
        out.extend(_literal_args(arg))
    return out
