"""Base models: packaged models (``packaged``), quantized loading and LoRA (``load``)."""
