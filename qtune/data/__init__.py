"""Training data: formats (``formats``), chat templates and masking (``template``), datasets (``dataset``)."""
