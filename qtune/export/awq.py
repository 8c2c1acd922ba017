"""AWQ (Lin et al., 2023): protect the weights that large activations multiply, then round.

For a group of linears sharing an input ``X`` (tokens, in) — e.g. q/k/v after the attention norm —
scaling input channel ``j`` of their weights by ``s_j`` and dividing the preceding op's output
channel ``j`` by ``s_j`` changes nothing in float arithmetic (``W X = (W·diag s)(diag s⁻¹ X)``), but
4-bit rounding then costs channel ``j`` about ``1/s_j`` as much relative error. AWQ picks

    s = mean|X|^α / sqrt(max · min),   α ∈ {0, 1/20, ..., 19/20}

minimising the group's output error ``||X Wᵀ - (X/s) Q(W·s)ᵀ||²`` on calibration tokens (``Q`` is
group-wise round-to-nearest, asymmetric). The scales are folded into the preceding op the model
family names (:mod:`qtune.registry.families`): an RMSNorm's weight (``w ← (c + w) / s - c`` for a norm
computing ``x̂ · (c + w)``: ``c`` is 1 for Gemma, 0 for Llama), ``v_proj``'s rows for ``o_proj`` (only
without grouped-query attention, where their sizes match), ``up_proj``'s rows for ``down_proj``. A
group with no such op (Phi-3's fused projections) keeps scale 1 and is only clipped and rounded.

Then a clipping search shrinks each group's range ``[-m, m]`` with ``m = r · max|w|``,
``r ∈ {1, 0.95, ..., 0.55}``, per output row and group, keeping the ``r`` with the least output
error of that group's slice of the matmul (not for q/k, whose errors the softmax amplifies: the
family's ``no_clip``).

The error measured here is of the linears' outputs, where AutoAWQ measures the attention / MLP
block's output; this keeps the search a matmul per candidate.
"""

from __future__ import annotations

import torch

from qtune.export.grid import QuantizedWeight, rtn
from qtune.export.sequential import feed_inputs, set_weight


def search_scale(x: torch.Tensor, x_mean: torch.Tensor, weight: torch.Tensor, bits: int, group_size: int, n_grid: int = 20) -> torch.Tensor:
    """The per-input-channel scale ``s`` (in,) of the module docstring; ``x`` (n, in) tokens."""
    ref = x @ weight.T  # (n, out)
    best_err, best = float("inf"), torch.ones_like(x_mean)
    for k in range(n_grid):
        s = x_mean.pow(k / n_grid).clamp(min=1e-4)
        s = s / (s.max() * s.min()).sqrt()
        wq = rtn(weight * s, bits, group_size).dequantize() / s
        err = ((x @ wq.T - ref) ** 2).mean().item()
        if err < best_err:
            best_err, best = err, s
    return best


def search_clip(x: torch.Tensor, weight: torch.Tensor, bits: int, group_size: int, n_grid: int = 20, max_shrink: float = 0.5,
                rows: int = 256) -> torch.Tensor:
    """``weight`` (out, in) clipped per (row, group) to the range that minimises output error.

    Rows are searched ``rows`` at a time (every (row, group) is independent), so the per-candidate
    products are (n, rows, G) instead of (n, out, G): on a 0.5 B Llama's MLP (512 tokens) 32 MiB
    each instead of 128 MiB, with four of them alive at once.
    """
    out, n_in = weight.shape
    g = n_in if group_size == -1 else group_size
    xg = x.reshape(x.shape[0], n_in // g, g)  # (n, G, g)
    return torch.cat([_clip_rows(xg, weight[r0 : r0 + rows], bits, group_size, n_grid, max_shrink)
                      for r0 in range(0, out, rows)])


def _clip_rows(xg: torch.Tensor, weight: torch.Tensor, bits: int, group_size: int, n_grid: int, max_shrink: float) -> torch.Tensor:
    out, n_in = weight.shape
    G, g = xg.shape[1], xg.shape[2]
    wg = weight.reshape(out, G, g)  # (out, G, g)
    ref = torch.einsum("ngc,ogc->nog", xg, wg)
    m = wg.abs().amax(-1, keepdim=True)  # (out, G, 1)
    best_err = torch.full((out, G), float("inf"), device=weight.device)
    best_m = m.clone()
    for i in range(int(max_shrink * n_grid)):
        mi = m * (1 - i / n_grid)
        wq = rtn(torch.clamp(wg, -mi, mi).reshape(out, n_in), bits, group_size).dequantize().reshape(out, G, g)
        d = torch.einsum("ngc,ogc->nog", xg, wq).sub_(ref)  # (n, out, G)
        err = d.square_().mean(0)  # (out, G)
        del d
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best_m = torch.where(better.unsqueeze(-1), mi, best_m)
    return torch.clamp(wg, -best_m, best_m).reshape(out, n_in)


def _fold(prev: torch.nn.Module, linears: list[torch.nn.Linear], s: torch.Tensor, offset: float = 0.0) -> None:
    """Divide ``prev``'s output channels by ``s`` and multiply the linears' input channels by it.

    A norm computing ``x̂ · (offset + w)`` gets ``w ← (offset + w) / s - offset``.
    """
    if prev.weight.dim() == 2:
        prev.weight.data.div_(s.view(-1, 1))
    else:
        prev.weight.data.add_(offset).div_(s.to(prev.weight.dtype)).sub_(offset)
    if getattr(prev, "bias", None) is not None:
        prev.bias.data.div_(s)
    for lin in linears:
        lin.weight.data.mul_(s.view(1, -1))


def awq_layer_quantizer(bits: int, group_size: int, clip: bool = True, search_tokens: int = 512, seed: int = 0):
    """A ``quantize_layer`` for :func:`qtune.export.sequential.sweep`.

    One pass collects each group's input (AWQ's scaling is exact in float, so the inputs of later
    groups do not change before rounding); scales are searched and folded group by group, then
    every linear is clipped and rounded.
    """

    @torch.no_grad()
    def quantize_layer(layer, inputs, groups) -> dict[str, QuantizedWeight]:
        modules = dict(layer.named_modules())
        firsts = tuple(grp.linears[0] for grp in groups)
        seen: dict[str, list[torch.Tensor]] = {n: [] for n in firsts}
        feed_inputs(layer, inputs, firsts, lambda name, x: seen[name].append(x.reshape(-1, x.shape[-1]).float()))
        gen = torch.Generator().manual_seed(seed)
        samples = {}
        for grp in groups:  # fold every scale first: a later fold rescales an earlier group's rows
            x = torch.cat(seen.pop(grp.linears[0]))  # (tokens, in)
            x_mean = x.abs().mean(0)
            sample = x[torch.randperm(x.shape[0], generator=gen)[:search_tokens].to(x.device)]  # CPU generator: same draw on every device
            del x
            prev, lins = modules.get(grp.prev), [modules[n] for n in grp.linears]
            if prev is not None and (not isinstance(prev, torch.nn.Linear) or prev.out_features == lins[0].in_features):
                s = search_scale(sample, x_mean, torch.cat([l.weight for l in lins]), bits, group_size)
                _fold(prev, lins, s, grp.prev_offset)
                sample = sample / s
            samples.update({n: sample for n in grp.linears})
        out = {}
        for grp in groups:
            for name in grp.linears:
                w = modules[name].weight.data.float()
                if clip and name not in grp.no_clip:
                    w = search_clip(samples[name], w, bits, group_size)
                q = rtn(w, bits, group_size)
                set_weight(modules[name], q.dequantize())
                out[name] = q
        return out

    return quantize_layer
