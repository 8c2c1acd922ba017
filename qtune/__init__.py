"""qtune: fine-tune, quantize and deploy LLMs on one GPU, with every step measured.

The package is split by concern: ``recipe`` (schema and loading), ``models`` (resolving and
loading every kind of model, quantization, LoRA), ``data`` (formats, chat templates, masking),
``train`` (the Trainer run), ``tracking``, ``kernels`` (Triton + reference), ``eval`` (metrics),
``export``, ``report``, ``plan``, and ``compat`` (the only code that touches other libraries'
internals). The README's "Layout" lists their floors. Importing ``qtune`` imports nothing heavy.
"""

__version__ = "0.1.0"
