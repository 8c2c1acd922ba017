"""Leaf registries: the names every layer chooses from (chat templates, …), importing nothing from qtune.

The recipe schema builds its choices from these; feature packages (data, models, export, …) read
them too. Nothing here imports torch or any other qtune package, so any layer may import it.
"""
