"""Evaluation metrics of a loaded model: task loss (``loss``), strided perplexity (``perplexity``) on eval text
(``text``), size and memory (``footprint``), generation and chat (``generate``), and one model's numbers together
(``measure``). What a MODEL argument means and how it loads is :mod:`qtune.models.sources`."""
