"""Base models: packaged models (``packaged``), quantized loading and LoRA (``load``), and what a MODEL argument
means and how each kind loads (``sources``)."""
