"""Training data: sources (``sources``), formats (``formats``), chat templates (``template``), masking and
truncation (``masking``), packing (``packing``), batching (``collate``), the preprocessing cache
(``cache``), the pipeline and its checks (``dataset``), and ``qtune data inspect`` (``inspect``)."""
