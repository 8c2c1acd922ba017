"""``train.compile: layers``: each decoder layer ``torch.compile``-d in place (regional compilation).

Compiling the layers one by one rather than the whole model is torchtune's and transformers' practice: the layers
share one code object, so dynamo compiles the first and the others reuse it (the compile time of one layer, not of
the model), and what runs outside them (embeddings, the head, the loss, peft's wrapper) stays eager. It is applied
after the liger switches, so it compiles what will run. It takes ``train.kernels: bitsandbytes`` only: the fused
kernels bind their forwards to each layer's modules (``functools.partial`` over the instance), which dynamo guards
by identity, so every layer recompiles and the graph breaks at them (a 2-step SmolLM2 run with blocks reached
dynamo's recompile limit, 8, and left the later layers eager; with the limit raised to 38 a frame after the graph
break reached that too); :func:`qtune.kernels.dispatch.check_switches` refuses the pair in one line.

Checked on CPU (tests/train/test_compile.py, tiny NF4 Llama, float32, gradient checkpointing on, 3 training
steps): the compiled run's losses equal the eager run's within 1.8e-7 relative; one step's LoRA gradients,
checked by hand, within 1.1e-6. Whether it is faster is a GPU question (``scripts/bench_train_step.py --modes
compiled``); until a measurement says so, ``auto`` is ``off`` (:mod:`qtune.kernels.dispatch`).
"""

from __future__ import annotations


def compile_layers(model) -> int:
    """``torch.compile`` every decoder layer of ``model`` (a peft model or a transformers one) in place; how many."""
    from qtune.registry.families import family_of

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    layers = base.get_submodule(family_of(base).layers)
    for layer in layers:
        layer.compile()
    return len(layers)
