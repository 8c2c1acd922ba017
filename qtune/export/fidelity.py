"""How much an export changed the model: the numbers ``qtune eval`` reports, on the same inputs.

Two figures per model, computed by ``qtune eval``'s code (:mod:`qtune.eval.perplexity`,
:mod:`qtune.eval.loss`):

- ``eval_loss``: mean NLL of the assistant tokens of the first ``examples`` conversations of the
  recipe's eval split (all of them when 0), token-weighted over those conversations;
- ``perplexity``: strided-window perplexity of the first ``max_tokens`` tokens of the eval text (the
  bundled prose excerpt unless ``text`` names files), general text that neither training nor
  calibration saw (unless ``export.calibration.mix`` names it: :func:`calibrated_on_the_text` says so).

``figures`` states in words which text each number is measured on. Every model of one export is
scored on the same inputs (:class:`Inputs`, tokenized once), so ``delta`` = export - reference
is a paired difference: a small budget measures it far more precisely than it measures either figure.

The budget (:data:`DEFAULT_BUDGET`) is sized to the device: on a CPU, 1024 text tokens and 32 eval
conversations (about 5,000 tokens through the model, counting the windows' overlap and the padding);
on a GPU, ``qtune eval``'s 65,536 text tokens and the whole eval split. ``--fidelity-tokens`` and
``--fidelity-examples`` set it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

# Per device type: eval-text tokens scored, eval conversations scored (0: the whole split).
DEFAULT_BUDGET = {"cpu": {"max_tokens": 1024, "examples": 32}, "cuda": {"max_tokens": 65536, "examples": 0}}


@dataclass
class FidelitySettings:
    text: list[str] = field(default_factory=list)  # files/dirs; empty: the bundled excerpt
    max_tokens: int | None = None  # eval-text tokens (None: DEFAULT_BUDGET for the device)
    examples: int | None = None  # eval conversations (0: all; None: DEFAULT_BUDGET)
    window: int | None = None  # None: qtune eval's for the device
    stride: int | None = None
    batch_size: int = 1  # windows / conversations per forward pass (the results do not depend on it)

    def for_device(self, device: str) -> "FidelitySettings":
        """Unset values filled for ``device`` (``cpu`` or ``cuda``)."""
        from qtune.eval.measure import DEFAULTS

        kind = "cuda" if device == "cuda" else "cpu"
        out = FidelitySettings(**asdict(self))
        out.max_tokens = out.max_tokens or DEFAULT_BUDGET[kind]["max_tokens"]
        out.examples = DEFAULT_BUDGET[kind]["examples"] if out.examples is None else out.examples
        out.window = out.window or DEFAULTS[kind]["window"]
        out.stride = min(out.stride or DEFAULTS[kind]["stride"], out.window)
        return out

    def key(self) -> dict:
        """What the figures depend on (not the batch size)."""
        return {k: v for k, v in asdict(self).items() if k != "batch_size"}


@dataclass
class Inputs:
    """What every model of one export is scored on, tokenized once."""

    documents: list[list[int]]  # eval text, token ids, capped at settings.max_tokens
    text: dict  # files, sha256, bytes (qtune.eval.text.EvalText.describe)
    text_tokens: int
    rows: list[dict]  # eval conversations, shortest first (less padding per batch)
    split_rows: int  # conversations in the whole eval split
    eval_data: str  # the split, in words
    pad_id: int
    settings: FidelitySettings

    @property
    def forward_tokens(self) -> int:
        """Tokens one model is run on: the windows (with their overlap) and the padded conversation batches."""
        from qtune.eval.perplexity import strided_windows

        s = self.settings
        text = sum(w.end - w.begin for d in self.documents for w in strided_windows(len(d), s.window, s.stride))
        lengths = [len(r["input_ids"]) for r in self.rows]
        batches = [lengths[i : i + s.batch_size] for i in range(0, len(lengths), s.batch_size)]
        return text + sum(max(b) * len(b) for b in batches)


def prepare(tokenizer, recipe, settings: FidelitySettings) -> Inputs:
    """Read and tokenize the eval text and the eval split once, for ``settings`` (filled for the device)."""
    from qtune.data.dataset import recipe_datasets
    from qtune.eval.text import read_text_sources, tokenize_documents

    text = read_text_sources(settings.text)
    tok = tokenize_documents(tokenizer, text, settings.max_tokens)
    split = list(recipe_datasets(recipe, tokenizer).eval)
    rows = split[: settings.examples] if settings.examples else split
    rows = sorted(rows, key=lambda r: len(r["input_ids"]))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return Inputs(tok.documents, text.describe(), tok.tokens, rows, len(split), eval_split(recipe), pad, settings)


def measure(model, inputs: Inputs) -> dict:
    """Perplexity and eval loss of ``model`` on ``inputs``; the dict records exactly what was scored."""
    import torch

    from qtune.data.collate import PadCollator
    from qtune.eval.loss import token_nll_sums
    from qtune.eval.perplexity import perplexity

    s = inputs.settings
    with torch.no_grad():
        ppl = perplexity(model, inputs.documents, s.window, s.stride, s.batch_size)
        nll, count = token_nll_sums(model, inputs.rows, PadCollator(inputs.pad_id), s.batch_size)
    files = inputs.text["files"]
    shown = files[0] if len(files) == 1 else f"{len(files)} files under {Path(files[0]).parent}"
    n = len(inputs.rows)
    of = f"the first {n} of {inputs.split_rows}" if n < inputs.split_rows else f"all {n}"
    return {
        "eval_loss": nll / count if count else float("nan"),
        "perplexity": ppl.perplexity,
        "eval_examples": n,
        "eval_tokens": count,
        "eval_data": inputs.eval_data,
        "text": {"scored_tokens": ppl.scored_tokens, "text_tokens": inputs.text_tokens, "window": s.window, "stride": s.stride,
                 "text": inputs.text},
        "figures": {  # what each number is measured on, in words
            "eval_loss": f"task data: mean NLL of the assistant tokens of {inputs.eval_data} ({of} conversations)",
            "perplexity": f"general text: {ppl.scored_tokens} tokens of {shown} (sha256 {inputs.text['sha256'][:12]}), "
                          f"window {s.window}, stride {s.stride}",
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
