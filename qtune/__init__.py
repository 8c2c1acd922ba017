"""qtune: fine-tune, quantize and deploy LLMs on one GPU, with every step measured.

The package is split by concern: ``recipe`` (schema and loading), ``models`` (resolving and
loading a base model, quantization, LoRA), ``data`` (formats, chat templates, masking),
``train`` (the Trainer run and its run directory), ``tracking``, ``kernels`` (Triton + reference),
``export`` and ``eval``. Importing ``qtune`` imports nothing heavy.
"""

__version__ = "0.1.0"
