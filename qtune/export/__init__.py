"""Merge, re-quantize (GPTQ, AWQ, GGUF) and export a fine-tuned run; see ``qtune export --help``."""
