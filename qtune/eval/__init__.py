"""Evaluation: token-weighted task loss (``loss``)."""
