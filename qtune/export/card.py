"""The export directory's paperwork: ``qtune_export.json`` and a README model card.

``qtune_export.json`` is the exports contract other commands read::

    {"format": "merged"|"gptq"|"awq"|"gguf", "bits": float, "group_size": int|null,
     "files": [...], "base": "...", "created_by": "qtune X", ...details}
"""

from __future__ import annotations

import json
from pathlib import Path

from qtune import __version__, rundir

MANIFEST, FIDELITY = rundir.EXPORT_MANIFEST, rundir.EXPORT_FIDELITY
CARD = "README.md"


def write_manifest(out: Path, fmt: str, bits: float, group_size: int | None, base: str, **details) -> dict:
    files = sorted(p.name for p in Path(out).iterdir() if p.is_file() and p.name not in (MANIFEST, CARD, FIDELITY))
    manifest = {"format": fmt, "bits": float(bits), "group_size": group_size, "files": files, "base": base,
                "created_by": f"qtune {__version__}", **details}
    rundir.write_json(Path(out) / MANIFEST, manifest)
    return manifest


def _gguf_snippets(path: str, files: list[str]) -> str:
    gguf = f"{path}/{next((f for f in files if f.endswith('.gguf')), 'model.gguf')}"
    return f"""Both format the chat with the template stored in the file (`tokenizer.chat_template`).

### llama.cpp

One chat turn, then exit (`-st`); without `-st -p ...` it is an interactive chat:

```sh
llama-cli -m {gguf} --jinja -cnv -st -p "Hello!" -n 64
```

### llama-cpp-python

```python
from llama_cpp import Llama
llm = Llama(model_path="{gguf}", n_ctx=2048, verbose=False)
out = llm.create_chat_completion(messages=[{{"role": "user", "content": "Hello!"}}], max_tokens=64)
print(out["choices"][0]["message"]["content"])
```
"""


# transformers loads GPTQ and AWQ checkpoints through gptqmodel. On CPU the snippets pick its torch kernels (the
# default AWQ CPU kernel rounds scales to bfloat16, ~1e-2 off: docs/export.md); on a GPU "auto" picks its fastest.
_QUANT_CONFIG = {"gptq": ("GPTQConfig", "torch"), "awq": ("AwqConfig", "torch_awq")}


def _transformers_snippet(fmt: str, path: str, bits: float) -> str:
    head = "from transformers import AutoModelForCausalLM, AutoTokenizer"
    note, load = "", 'model = AutoModelForCausalLM.from_pretrained(path, device_map="auto")'
    if fmt in _QUANT_CONFIG:
        config, cpu = _QUANT_CONFIG[fmt]
        head = f"import torch\n{head}, {config}"
        note = (f"Needs `pip install optimum gptqmodel` (transformers reads {fmt.upper()} checkpoints through gptqmodel). "
                f'On CPU the code picks gptqmodel\'s torch kernel (`backend="{cpu}"`; set `GPTQMODEL_CPU_WORKERS=2` on '
                'a 2-core machine), on a GPU gptqmodel picks its fastest (`backend="auto"`).\n\n')
        load = ("on_gpu = torch.cuda.is_available()\n"
                f'quant = {config}(bits={int(bits)}, backend="auto" if on_gpu else "{cpu}")\n'
                'model = AutoModelForCausalLM.from_pretrained(path, device_map="auto", quantization_config=quant,\n'
                "                                             dtype=torch.float16 if on_gpu else torch.float32)")
    return f"""### transformers

{note}```python
{head}

path = "{path}"
tok = AutoTokenizer.from_pretrained(path)
{load}
msgs = [{{"role": "user", "content": "Hello!"}}]
inputs = tok.apply_chat_template(msgs, add_generation_prompt=True, return_dict=True, return_tensors="pt").to(model.device)
out = model.generate(**inputs, max_new_tokens=64)
print(tok.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True))  # the new tokens only
```
"""


def _vllm_snippet(path: str, kernel_line: str | None) -> str:
    """No ``quantization=`` argument: vLLM then reads the config and picks its Marlin kernels where the
    export qualifies (``quantization="awq"`` would force the slow AWQ kernel)."""
    said = f"{kernel_line}\n\n" if kernel_line else ""
    return f"""### vLLM

{said}```python
from vllm import LLM, SamplingParams
llm = LLM(model="{path}")
print(llm.chat([{{"role": "user", "content": "Hello!"}}], SamplingParams(max_tokens=64))[0].outputs[0].text)
```
"""


def _snippets(fmt: str, path: str, manifest: dict, out: Path) -> str:
    if fmt == "gguf":
        return _gguf_snippets(path, manifest["files"])
    kernel_line = None
    config = json.loads((Path(out) / "config.json").read_text()) if (Path(out) / "config.json").is_file() else {}
    if config.get("quantization_config"):
        from qtune.export.vllm_kernels import card_line

        kernel_line = card_line(config["quantization_config"], config)
    return _transformers_snippet(fmt, path, manifest["bits"]) + "\n" + _vllm_snippet(path, kernel_line)


def _eval_text(text: dict, held_out: bool) -> str:
    """The eval text in words: qtune's bundled excerpt, or the files' names."""
    from qtune.eval.text import BUNDLED_ROOT, DEFAULT_TEXT

    files = [Path(f) for f in text.get("files", [])]
    sha = f", sha256 {text['sha256'][:12]}" if text.get("sha256") else ""
    if files and all(f.is_relative_to(DEFAULT_TEXT) for f in files):
        where = DEFAULT_TEXT.relative_to(BUNDLED_ROOT).as_posix()
        seen = ", prose that neither training nor calibration saw" if held_out else ""
        return f"qtune's bundled eval text (`{where}`, {len(files)} files{sha}){seen}"
    return f"the eval text `{', '.join(f.name for f in files)}`{sha}"


def _fidelity_lines(fidelity: dict) -> list[str]:
    """What each figure was measured on, from the measurement itself (``fidelity.json``)."""
    first = next(iter(fidelity.get("exports", {"": fidelity}).values()))["export"]
    t = first["text"]
    data = first.get("eval_data", "the recipe's eval split")
    note = fidelity.get("note")  # e.g. the calibration mix read the perplexity text (fidelity.calibrated_on_the_text)
    return [
        "## What the figures were measured on",
        "",
        f"- **eval loss**: mean NLL of the trained tokens (`data.train_on`) of {first['eval_examples']} conversations "
        f"of the fine-tune recipe's eval split ({data}), token-weighted;",
        f"- **perplexity**: {t['scored_tokens']} scored tokens of {_eval_text(t['text'], note is None)}; windows of "
        f"{t['window']} tokens, stride {t['stride']}{'; ' + note if note else ''};",
        f"- **reference**: {fidelity.get('reference', 'the merged 16-bit model')}.",
        "",
        "Both are qtune's own measurements (`qtune eval`'s code); every figure and its inputs are in `fidelity.json`.",
        "",
    ]


# Where each consumer of the snippets reads the stop tokens from (the table's "stops generating on").
_STOPS = {False: "Each stops at the end of the model's turn: transformers and vLLM read the stop tokens from "
                 "`generation_config.json` (`eos_token_id`).",
          True: "Each stops at the end of the model's turn: llama.cpp reads the stop tokens from the file "
                "(`tokenizer.ggml.eos_token_id`, `tokenizer.ggml.eot_token_id`)."}


def write_card(out: Path, manifest: dict, fidelity: dict | None, source_model: str, final: Path | None = None) -> None:
    """``final``: where ``out`` (a temporary folder) will be renamed to; the card names that.

    The snippets name the export by a relative path, ``./<folder name>``: they run from the folder that
    holds it (``RUN/exports/`` for ``qtune export``), wherever that folder has been moved or copied.
    """
    fmt = manifest["format"]
    name = Path(final or out).name
    lines = [
        f"# {name}",
        "",
        f"A {fmt} export of a QLoRA fine-tune of `{source_model}`, made by {manifest['created_by']}.",
        "",
        "| | |",
        "| --- | --- |",
        f"| format | {fmt} |",
        f"| bits per quantized weight | {manifest['bits']:g} |",
        f"| group size | {manifest['group_size'] if manifest['group_size'] is not None else '-'} |",
        f"| merged into | {manifest['base']} base |",
        f"| files | {', '.join(manifest['files'])} |",
    ]
    if manifest.get("stop_tokens"):
        lines.append(f"| stops generating on | {', '.join(f'`{t}` ({i})' for t, i in manifest['stop_tokens'].items())} |")
    if fidelity:
        for label, f in fidelity.get("exports", {"": fidelity}).items():
            e, m = f["export"], f["merged"]
            label = f" ({label})" if label else ""
            lines.append(f"| eval loss{label}, recipe's eval split | {e['eval_loss']:.4f} (reference {m['eval_loss']:.4f}) |")
            lines.append(f"| perplexity{label}, eval text | {e['perplexity']:.3f} (reference {m['perplexity']:.3f}) |")
        lines += [""] + _fidelity_lines(fidelity)
    else:
        lines += ["", "No fidelity figures: this export was written without measuring it (`qtune merge`, or `--no-fidelity`).", ""]
    lines += ["## Load it", "",
              f"Run these from the folder that holds `{name}/` (for a qtune run: `RUN/exports/`); after uploading "
              f"the folder, replace `./{name}` with its repository id. {_STOPS[fmt == 'gguf']}", "",
              _snippets(fmt, f"./{name}", manifest, out)]
    rundir.write_text(Path(out) / CARD, "\n".join(lines))


def write_fidelity(out: Path, fidelity: dict) -> None:
    rundir.write_json(Path(out) / FIDELITY, json.loads(json.dumps(fidelity)))
