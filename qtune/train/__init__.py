"""Training: the Trainer subclass (``trainer``), callbacks (``callbacks``), the run (``run``), plots (``plot``)."""
