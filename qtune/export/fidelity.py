"""How much an export changed the model: the numbers ``qtune eval`` reports, on the same inputs.

Two figures per model, from :mod:`qtune.eval.measure` with its CPU/GPU defaults:

- ``eval_loss``: mean NLL of the assistant tokens of the recipe's eval split (the task loss training
  reported), token-weighted over the whole split;
- ``perplexity``: strided-window perplexity of the eval text (the bundled prose excerpt unless
  ``text`` names files), general text that neither training nor calibration saw (unless
  ``export.calibration.mix`` names it: :func:`calibrated_on_the_text` says so).

``figures`` states in words which text each number is measured on.

An export is compared with the model it was made from; ``delta`` is export - reference.
"""

from __future__ import annotations

from pathlib import Path


def measure(model, tokenizer, recipe, text: list[str] | None = None, max_tokens: int | None = None) -> dict:
    """``max_tokens``: eval-text tokens scored (default: ``qtune eval``'s for the model's device)."""
    import torch

    from qtune.eval.measure import EvalSettings, recipe_eval_loss, text_perplexity

    device = next(model.parameters()).device.type
    settings = EvalSettings(text=list(text or []), max_tokens=max_tokens).for_device(device)
    with torch.no_grad():
        ppl = text_perplexity(model, tokenizer, settings)
        task = recipe_eval_loss(model, tokenizer, recipe, settings)
    files = ppl["text"]["files"]
    shown = files[0] if len(files) == 1 else f"{len(files)} files under {Path(files[0]).parent}"
    return {
        "eval_loss": task["eval_loss"],
        "perplexity": ppl["perplexity"],
        "eval_examples": task["eval_examples"],
        "eval_data": eval_split(recipe),
        "text": {k: ppl[k] for k in ("scored_tokens", "window", "stride", "text")},
        "figures": {  # what each number is measured on, in words
            "eval_loss": f"task data: mean NLL of the assistant tokens of {eval_split(recipe)} "
                         f"({task['eval_examples']} conversations)",
            "perplexity": f"general text: {ppl['scored_tokens']} tokens of {shown} (sha256 {ppl['text']['sha256'][:12]}), "
                          f"window {ppl['window']}, stride {ppl['stride']}",
        },
    }


def calibrated_on_the_text(fidelity: dict, calibration: dict | None) -> str | None:
    """A note when ``export.calibration.mix`` used the files the perplexity text is read from: that
    figure is then no longer held out."""
    mix = (calibration or {}).get("mix")
    if not mix or "files" not in mix["text"]:
        return None
    shared = set(mix["text"]["files"]) & set(fidelity["export"]["text"]["text"]["files"])
    if not shared:
        return None
    return (f"the perplexity text shares {len(shared)} file(s) with the calibration mix ({mix['source']}): "
            "the general-text perplexity is not held out; the eval loss still is")


def eval_split(recipe) -> str:
    """Where the eval loss's conversations come from, in words: the ``data.eval`` file, or the share of
    the training sources held out (``data.eval_fraction``)."""
    d = recipe.data
    if d.eval is not None:
        return f"data.eval: {d.eval.path}"
    return f"{d.eval_fraction:g} of data.train held out ({', '.join(s.path for s in d.train)})"


def compare(export: dict, reference: dict) -> dict:
    return {
        "export": export,
        "merged": reference,
        "delta": {k: export[k] - reference[k] for k in ("eval_loss", "perplexity")},
    }
