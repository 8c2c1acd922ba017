"""The export directory's paperwork: ``qtune_export.json`` and a README model card.

``qtune_export.json`` is the exports contract other commands read::

    {"format": "merged"|"gptq"|"awq"|"gguf", "bits": float, "group_size": int|null,
     "files": [...], "base": "...", "created_by": "qtune X", ...details}
"""

from __future__ import annotations

import json
from pathlib import Path

from qtune import __version__, rundir

MANIFEST = "qtune_export.json"
FIDELITY = "fidelity.json"
CARD = "README.md"


def write_manifest(out: Path, fmt: str, bits: float, group_size: int | None, base: str, **details) -> dict:
    files = sorted(p.name for p in Path(out).iterdir() if p.is_file() and p.name not in (MANIFEST, CARD, FIDELITY))
    manifest = {"format": fmt, "bits": float(bits), "group_size": group_size, "files": files, "base": base,
                "created_by": f"qtune {__version__}", **details}
    rundir.write_json(Path(out) / MANIFEST, manifest)
    return manifest


def _snippets(fmt: str, path: str, files: list[str]) -> str:
    if fmt == "gguf":
        gguf = next((f for f in files if f.endswith(".gguf")), "model.gguf")
        return f"""### llama.cpp

```sh
llama-cli -m {path}/{gguf} -cnv
```

### llama-cpp-python

```python
from llama_cpp import Llama
llm = Llama(model_path="{path}/{gguf}")
print(llm.create_chat_completion(messages=[{{"role": "user", "content": "Hello!"}}]))
```
"""
    extra = {
        "merged": "",
        "gptq": "Needs `pip install optimum gptqmodel` (on CPU: `backend=\"torch\"`, and `GPTQMODEL_CPU_WORKERS=2` on 2-core machines).\n\n",
        "awq": "Needs `pip install optimum gptqmodel` (transformers reads AWQ GEMM checkpoints through it).\n\n",
    }[fmt]
    quant = {"merged": "", "gptq": ', quantization="gptq"', "awq": ', quantization="awq"'}[fmt]
    return f"""### transformers

{extra}```python
from transformers import AutoModelForCausalLM, AutoTokenizer
tok = AutoTokenizer.from_pretrained("{path}")
model = AutoModelForCausalLM.from_pretrained("{path}", device_map="auto")
msgs = [{{"role": "user", "content": "Hello!"}}]
ids = tok.apply_chat_template(msgs, add_generation_prompt=True, return_tensors="pt").to(model.device)
print(tok.decode(model.generate(ids, max_new_tokens=64)[0][ids.shape[1]:]))
```

### vLLM

```python
from vllm import LLM
llm = LLM(model="{path}"{quant})
print(llm.chat([{{"role": "user", "content": "Hello!"}}])[0].outputs[0].text)
```
"""


def write_card(out: Path, manifest: dict, fidelity: dict | None, source_model: str, final: Path | None = None) -> None:
    """``final``: where ``out`` (a temporary folder) will be renamed to; the card names that."""
    fmt = manifest["format"]
    final = Path(final or out)
    lines = [
        f"# {final.name}",
        "",
        f"A {fmt} export of a QLoRA fine-tune of `{source_model}`, made by {manifest['created_by']}.",
        "",
        "| | |",
        "| --- | --- |",
        f"| format | {fmt} |",
        f"| bits per quantized weight | {manifest['bits']:g} |",
        f"| group size | {manifest['group_size']} |",
        f"| merged into | {manifest['base']} base |",
        f"| files | {', '.join(manifest['files'])} |",
    ]
    if fidelity:
        for name, f in fidelity.get("exports", {"": fidelity}).items():
            e, m = f["export"], f["merged"]
            label = f" ({name})" if name else ""
            lines.append(f"| eval loss{label} | {e['eval_loss']:.4f} (reference {m['eval_loss']:.4f}) |")
            lines.append(f"| perplexity{label} | {e['perplexity']:.3f} (reference {m['perplexity']:.3f}) |")
    lines += ["", "Fidelity is measured on the recipe's eval data (`fidelity.json`); the reference is the merged "
              "16-bit model (for the merged export itself: the trained adapter on its quantized base).", "",
              "## Load it", "", _snippets(fmt, str(final.resolve()), manifest["files"])]
    rundir.write_text(Path(out) / CARD, "\n".join(lines))


def write_fidelity(out: Path, fidelity: dict) -> None:
    rundir.write_json(Path(out) / FIDELITY, json.loads(json.dumps(fidelity)))
