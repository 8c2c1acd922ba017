"""One model, every quality and speed number: perplexity on the eval text, eval loss on a recipe's
eval split, batch-1 generation speed. Shared by ``qtune eval`` and each row of ``qtune report``.

Everything but the speed is deterministic: fixed text, fixed windows, no sampling, seeded.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

# CPU defaults keep a 135M model's row to about a minute on two cores; GPU defaults are fuller.
DEFAULTS = {
    "cpu": {"window": 512, "stride": 256, "max_tokens": 4096, "gen_tokens": 16},
    "cuda": {"window": 2048, "stride": 1024, "max_tokens": 65536, "gen_tokens": 128},
}


@dataclass
class EvalSettings:
    text: list[str] = field(default_factory=list)  # files/dirs; empty: the bundled excerpt
    window: int | None = None
    stride: int | None = None
    max_tokens: int | None = None  # cap on eval-text tokens (0: no cap)
    gen_tokens: int | None = None  # 0: skip the speed measurement
    recipe: str | None = None  # recipe whose eval split gives the eval loss
    eval_batch_size: int = 8
    seed: int = 0

    def for_device(self, device: str) -> "EvalSettings":
        """Fill unset values from :data:`DEFAULTS` for ``device``."""
        d = DEFAULTS["cuda" if device == "cuda" else "cpu"]
        out = EvalSettings(**asdict(self))
        for k, v in d.items():
            if getattr(out, k) is None:
                setattr(out, k, v)
        if out.stride > out.window:
            out.stride = out.window
        return out


def text_perplexity(model, tokenizer, settings: EvalSettings) -> dict:
    """Perplexity of the eval text; the returned dict records exactly what was scored."""
    from qtune.eval.perplexity import perplexity
    from qtune.eval.text import read_text_sources, tokenize_documents

    text = read_text_sources(settings.text)
    tok = tokenize_documents(tokenizer, text, settings.max_tokens or None)
    r = perplexity(model, tok.documents, settings.window, settings.stride)
    return {
        "perplexity": r.perplexity,
        "mean_nll": r.mean_nll,
        "scored_tokens": r.scored_tokens,
        "text_tokens": tok.tokens,
        "text_truncated": tok.truncated,
        "max_tokens": settings.max_tokens or None,
        "window": settings.window,
        "stride": settings.stride,
        "windows": r.windows,
        "text": text.describe(),
    }


def recipe_eval_loss(model, tokenizer, recipe, settings: EvalSettings) -> dict:
    """Token-weighted NLL on ``recipe``'s eval split, tokenized with ``tokenizer``."""
    from qtune.data.dataset import PadCollator, recipe_datasets
    from qtune.eval.loss import mean_token_nll

    data = recipe_datasets(recipe, tokenizer)
    loss = mean_token_nll(model, data.eval, PadCollator(tokenizer.pad_token_id), settings.eval_batch_size)
    return {
        "eval_loss": loss,
        "eval_examples": len(data.eval),
        "eval_trained_tokens": data.stats["eval"]["trained_tokens"],
        "eval_data": recipe.data.eval.path if recipe.data.eval else None,
    }


def measure(loaded, settings: EvalSettings, recipe=None) -> dict:
    """Perplexity, eval loss (when ``recipe`` is given) and generation speed (when ``gen_tokens``)."""
    import torch

    from qtune.eval.generate import generation_speed

    torch.manual_seed(settings.seed)
    out = {"perplexity": text_perplexity(loaded.model, loaded.tokenizer, settings)}
    if recipe is not None:
        out["eval"] = recipe_eval_loss(loaded.model, loaded.tokenizer, recipe, settings)
    if settings.gen_tokens:
        out["generation"] = generation_speed(loaded.model, loaded.tokenizer, settings.gen_tokens)
    return out
