"""Layer-by-layer calibration: only one decoder layer's activations live at once.

The calibration tokens run through the embeddings once; the hidden states entering decoder layer 0
are captured (with the keyword arguments the model passes its layers: rotary embeddings, mask).
Then for each layer in turn a quantizer looks at the inputs of that layer's linears, replaces their
weights by the dequantized result, and the layer is run once more to produce the next layer's
inputs — from the already-quantized layer, so later layers compensate earlier errors.

:mod:`qtune.registry.families` says, per ``model_type``, where the decoder layers are and which
linears share an input and what precedes them (AWQ folds its scales into that op; GPTQ quantizes the
groups in this order, "true sequential").
"""

from __future__ import annotations

from typing import Callable

import torch

from qtune.registry.families import LinearGroup, family_of


Inputs = list[tuple[torch.Tensor, dict]]  # per calibration batch: (hidden (B, T, D), layer kwargs)


class _Stop(Exception):
    """Raised from a hook to end a forward pass early once the wanted inputs are seen."""


def layer_groups(model) -> tuple[LinearGroup, ...]:
    """The model family's linear groups, in forward order (:class:`~qtune.registry.families.LinearGroup`)."""
    return family_of(model).groups


def decoder_layers(model) -> tuple[str, torch.nn.ModuleList]:
    """The name (e.g. ``model.layers``) and module list of the decoder layers."""
    path = family_of(model).layers
    return path, model.get_submodule(path)


@torch.no_grad()
def capture_layer_inputs(model, calib: torch.Tensor, batch_size: int) -> Inputs:
    """Run ``calib`` (n, T) token ids up to the first decoder layer; keep what enters it."""
    _, layers = decoder_layers(model)
    captured: Inputs = []

    def grab(module, args, kwargs):
        hidden = args[0] if args else kwargs.pop("hidden_states")
        kwargs = {k: v for k, v in kwargs.items() if k not in ("past_key_values", "past_key_value")}
        captured.append((hidden, kwargs))
        raise _Stop

    handle = layers[0].register_forward_pre_hook(grab, with_kwargs=True)
    try:
        for start in range(0, calib.shape[0], batch_size):
            try:
                model(input_ids=calib[start : start + batch_size], use_cache=False)
            except _Stop:
                pass
    finally:
        handle.remove()
    return captured


@torch.no_grad()
def run_layer(layer, inputs: Inputs) -> Inputs:
    outs = []
    for hidden, kwargs in inputs:
        y = layer(hidden, **kwargs)
        outs.append((y[0] if isinstance(y, tuple) else y, kwargs))
    return outs


@torch.no_grad()
def feed_inputs(layer, inputs: Inputs, names: tuple[str, ...], sink: Callable[[str, torch.Tensor], None]) -> None:
    """Call ``sink(name, x)`` with each batch's input ``x`` (B, T, in) of the linears ``names``.

    The forward pass stops at the last of them, so later parts of the layer are not computed.
    """
    modules = dict(layer.named_modules())
    last = names[-1]

    def hook_for(name):
        def hook(module, args):
            sink(name, args[0])
            if name == last:
                raise _Stop

        return hook

    handles = [modules[n].register_forward_pre_hook(hook_for(n)) for n in names]
    try:
        for hidden, kwargs in inputs:
            try:
                layer(hidden, **kwargs)
            except _Stop:
                pass
    finally:
        for h in handles:
            h.remove()


def sweep(model, calib: torch.Tensor, batch_size: int, quantize_layer: Callable, progress=None) -> dict:
    """Quantize every decoder layer in order with ``quantize_layer(layer, inputs, groups)``.

    ``quantize_layer`` returns ``{local linear name: QuantizedWeight}`` and leaves the layer's
    linears holding their dequantized weights. Returns the same keyed by full module name.
    """
    prefix, layers = decoder_layers(model)
    groups = layer_groups(model)
    inputs = capture_layer_inputs(model, calib, batch_size)
    result = {}
    for i, layer in enumerate(layers):
        for name, w in quantize_layer(layer, inputs, groups).items():
            result[f"{prefix}.{i}.{name}"] = w
        inputs = run_layer(layer, inputs)
        if progress is not None:
            progress(i + 1, len(layers))
    return result


def set_weight(linear: torch.nn.Linear, weight: torch.Tensor) -> None:
    linear.weight.data.copy_(weight.to(linear.weight.dtype))
