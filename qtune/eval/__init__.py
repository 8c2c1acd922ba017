"""Evaluation: task loss (``loss``), strided perplexity (``perplexity``) on eval text (``text``),
what MODEL means and how it loads (``sources``), size and memory (``footprint``), generation and
chat (``generate``), one model's numbers (``measure``), and the fidelity report (``report``, ``chart``)."""
