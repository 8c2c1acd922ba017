"""Every model card's code runs as written: each snippet is cut out of the card and run verbatim, in a
subprocess, from the folder that holds the exports (what the card says), after that folder has moved
(so no snippet leans on the path it was written at).

The merged export's transformers snippet runs everywhere (CI included). The others need their consumer,
and skip naming it when it is missing: gptqmodel + optimum (GPTQ/AWQ) and llama-cpp-python (GGUF) come
with ``scripts/setup_consumers.sh``; vLLM needs a CUDA GPU; ``llama-cli`` is llama.cpp's own program.
"""

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys

import pytest

from qtune.export.card import CARD

pytestmark = pytest.mark.consumer

SETUP = "scripts/setup_consumers.sh"
# (export folder, card heading) -> what must be installed: python modules, or a program for sh snippets
SNIPPETS = {
    ("merged", "transformers"): ["transformers"],
    ("merged", "vLLM"): ["vllm"],
    ("gptq-w4g64", "transformers"): ["optimum", "gptqmodel"],
    ("gptq-w4g64", "vLLM"): ["vllm"],
    ("awq-w4g64", "transformers"): ["optimum", "gptqmodel"],
    ("awq-w4g64", "vLLM"): ["vllm"],
    ("gguf", "llama-cpp-python"): ["llama_cpp"],
    ("gguf", "llama.cpp"): ["llama-cli"],
}
HOW = {
    "vllm": "pip install vllm (a CUDA GPU)",
    "llama-cli": "llama.cpp's release binaries or `brew install llama.cpp` put it on PATH",
    "optimum": SETUP, "gptqmodel": SETUP, "llama_cpp": SETUP, "transformers": SETUP,
}


def card_snippets(card: str) -> dict[str, tuple[str, str]]:
    """heading -> (language, code) of the one fenced block under each ``### heading``."""
    out = {}
    for section in re.split(r"^### ", card, flags=re.M)[1:]:
        heading = section.splitlines()[0].strip()
        blocks = re.findall(r"^```(\w+)\n(.*?)^```", section, flags=re.M | re.S)
        assert len(blocks) == 1, f"### {heading}: {len(blocks)} code blocks, expected 1"
        out[heading] = blocks[0]
    return out


@pytest.fixture
def exports(tiny_exports):
    """Every format of a tiny run (conftest), in a folder moved after the cards were written."""
    return tiny_exports[1]


def test_cards_hold_only_the_snippets_tested(exports):
    found = {}
    for d in exports.iterdir():
        found.update({(d.name, h): code for h, (_, code) in card_snippets((d / CARD).read_text()).items()})
    assert set(found) == set(SNIPPETS), f"untested: {set(found) - set(SNIPPETS)}, missing: {set(SNIPPETS) - set(found)}"
    for (folder, heading), code in found.items():
        assert f'"./{folder}' in code or f" ./{folder}/" in code, f"{folder} / {heading} does not name ./{folder}:\n{code}"
        assert str(exports.parent) not in code, f"{folder} / {heading}: an absolute path\n{code}"


def test_cards_name_what_each_figure_was_measured_on(exports):
    for d in exports.iterdir():
        card, fid = (d / CARD).read_text(), json.loads((d / "fidelity.json").read_text())
        first = next(iter(fid.get("exports", {"": fid}).values()))["export"]
        assert "recipe's eval data" not in card, d.name
        assert f"{first['eval_examples']} conversations" in card and first["eval_data"] in card, d.name
        assert f"{first['text']['scored_tokens']} scored tokens of qtune's bundled eval text" in card, d.name
        assert "eval loss" in card and "| perplexity" in card


@pytest.mark.parametrize("folder,heading", list(SNIPPETS))
def test_card_snippet_runs_verbatim(folder, heading, exports):
    missing = [n for n in SNIPPETS[folder, heading]
               if (shutil.which(n) is None if "-" in n else importlib.util.find_spec(n) is None)]
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed here: {HOW[missing[0]]}")
    lang, code = card_snippets((exports / folder / CARD).read_text())[heading]
    cmd = [sys.executable, "-c", code] if lang == "python" else ["bash", "-c", code]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "GPTQMODEL_CPU_WORKERS": "2"}
    r = subprocess.run(cmd, cwd=exports, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, f"{folder} / {heading} failed (rc {r.returncode}):\n{code}\n{r.stderr[-3000:]}"
