"""Route a peft 4-bit LoRA model's decoder blocks through :mod:`qtune.kernels.lora_blocks` (``train.kernels: blocks``).

What a block is comes from the model family's registry entry (:mod:`qtune.registry.families`): each ``LinearGroup``
of two or more linears sharing one input (q/k/v) becomes one :func:`lora_group` node, and the family's gated MLP
(gate, up, activation, down) one :func:`lora_mlp` node. Every other 4-bit LoRA linear (o_proj) takes the per-linear
fused path of :mod:`qtune.kernels.peft_layers`.

A group is served lazily, so the attention code of every family runs unchanged: the first member called with an
input computes all members' outputs in one node and keeps the others' for their own calls with that same tensor
(the attention calls q, k and v with one ``hidden_states``). A call the block cannot take — an adapter disabled or
merged, several or no active adapters, DoRA or another variant, per-row ``adapter_names`` — runs the per-linear
path, which itself defers to peft for what it cannot take.
"""

from __future__ import annotations

from functools import partial

import torch

import qtune.kernels.peft_layers as peft_layers
from qtune.kernels.lora_blocks import Projection, Workspace, lora_group, lora_mlp
from qtune.registry.families import family_of

_PER_LINEAR = "_qtune_per_linear_forward"
_MLP = "_qtune_block_mlp"


def _projection(layer, adapter: str) -> Projection:
    base = layer.base_layer
    return Projection(peft_layers.packed_weight(layer), layer.lora_A[adapter].weight, layer.lora_B[adapter].weight,
                      layer.scaling[adapter], base.bias)


def _adapter_of(layers, args=(), kwargs=None) -> str | None:
    """The one vanilla-LoRA adapter every layer of a block can fuse, or None."""
    names = {peft_layers.single_adapter(layer, args, kwargs or {}) for layer in layers}
    return names.pop() if len(names) == 1 and None not in names else None


def _adapter_input(layer, adapter: str, x: torch.Tensor) -> torch.Tensor:
    drop = layer.lora_dropout[adapter]
    return x if isinstance(drop, torch.nn.Identity) or not drop.training or drop.p == 0 else drop(x)


class Group:
    """The members of one shared-input group, and the outputs computed for those not yet called."""

    def __init__(self, members, workspace: Workspace):
        self.members, self.workspace = members, workspace
        self._input, self._pending = None, {}

    def forward(self, layer, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        if self._input is x and layer in self._pending:
            out = self._pending.pop(layer)
            if not self._pending:
                self._input = None
            return out
        self._input, self._pending = None, {}
        adapter = _adapter_of(self.members, args, kwargs)
        if adapter is None:
            return getattr(layer, _PER_LINEAR)(x, *args, **kwargs)
        compute = layer.base_layer.compute_dtype or x.dtype
        projs = tuple(_projection(m, adapter) for m in self.members)
        x_loras = tuple(_adapter_input(m, adapter, x) for m in self.members)
        outs = lora_group(projs, x, x_loras, self.workspace, compute)
        self._input = x
        self._pending = {m: o for m, o in zip(self.members, outs) if m is not layer}
        return outs[self.members.index(layer)]


def _mlp_forward(mlp, x: torch.Tensor, names: tuple[str, str, str], workspace: Workspace) -> torch.Tensor:
    gate, up, down = (getattr(mlp, n) for n in names)
    adapter = _adapter_of((gate, up, down))
    if adapter is None or any(p.base_layer.bias is not None for p in (gate, up, down)):
        return type(mlp).forward(mlp, x)
    compute = gate.base_layer.compute_dtype or x.dtype
    drop = down.lora_dropout[adapter]
    keep, keep_scale = None, 1.0
    if not (isinstance(drop, torch.nn.Identity) or not drop.training or drop.p == 0):
        inter = down.base_layer.in_features
        keep = torch.empty((*x.shape[:-1], inter), dtype=torch.bool, device=x.device).bernoulli_(1 - drop.p)
        keep_scale = 1 / (1 - drop.p)
    x_loras = (_adapter_input(gate, adapter, x), _adapter_input(up, adapter, x))
    return lora_mlp(_projection(gate, adapter), _projection(up, adapter), _projection(down, adapter), mlp.act_fn,
                    x, x_loras, keep, keep_scale, workspace, compute)


def _is_lora_4bit(module) -> bool:
    from peft.tuners.lora.bnb import Linear4bit

    return isinstance(module, Linear4bit)


def fuse(model, backend: str) -> dict[str, int]:
    """Send ``model``'s blocks through the block nodes and its other 4-bit LoRA linears through the per-linear
    path; returns how many of each: ``{"groups": ..., "mlps": ..., "linears": ...}``."""
    from qtune.kernels.dequant import BACKENDS

    fam = family_of(model.get_base_model())
    linears = peft_layers.fuse(model, backend)
    workspace = Workspace(BACKENDS[backend], writes_out=backend == "triton")
    counts = {"groups": 0, "mlps": 0, "linears": linears}
    for layer in model.get_base_model().get_submodule(fam.layers):
        mlp_names = set()
        if fam.gated_mlp is not None:
            path, *names = fam.gated_mlp
            mlp = layer.get_submodule(path)
            if all(_is_lora_4bit(getattr(mlp, n)) for n in names):
                mlp.forward = partial(_mlp_forward, mlp, names=tuple(names), workspace=workspace)
                setattr(mlp, _MLP, True)
                mlp_names = {f"{path}.{n}" for n in names}
                counts["mlps"] += 1
        for g in fam.groups:
            if len(g.linears) < 2 or set(g.linears) <= mlp_names:
                continue
            members = [layer.get_submodule(n) for n in g.linears]
            if not all(_is_lora_4bit(m) for m in members):
                continue
            group = Group(members, workspace)
            for m in members:
                setattr(m, _PER_LINEAR, m.forward)
                m.forward = partial(group.forward, m)
            counts["groups"] += 1
    return counts


def unfuse(model) -> None:
    """Give every block and linear peft's own forward back."""
    for module in model.modules():
        if hasattr(module, _MLP):
            del module.forward
            delattr(module, _MLP)
        if hasattr(module, _PER_LINEAR):
            delattr(module, _PER_LINEAR)
    peft_layers.unfuse(model)

