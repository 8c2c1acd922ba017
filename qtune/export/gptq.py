"""GPTQ (Frantar et al., 2022): quantize a linear layer column by column with error feedback.

For a linear ``y = W x`` with calibration inputs ``X`` (in, n), GPTQ minimises the layer's output
error ``||W X - W' X||²`` over quantized ``W'``, one row at a time but with the columns shared:

1. Hessian of that loss per row: ``H = 2 X Xᵀ / n`` (in, in), accumulated batch by batch
   (:class:`HessianAccumulator`). Dead inputs (``H[i, i] = 0``) are fixed to zero weight.
2. Act-order (``desc_act``): visit columns by decreasing ``H[i, i]`` so the most activated
   inputs are quantized first, while the most error can still be compensated.
3. Damping: ``H += λ · mean(diag H) · I`` (``λ`` = ``damp``, 0.01) keeps ``H`` invertible.
4. ``U = chol(H⁻¹)ᵀ`` (upper Cholesky factor of the inverse). Quantizing column ``i`` to
   ``q_i`` leaves the error ``e = (w_i - q_i) / U[i, i]``; the optimal update of the columns not yet
   quantized is ``W[:, j] -= e · U[i, j]`` for ``j > i`` (the OBS update, which in Cholesky form
   needs no re-inversion).
5. Lazy batch updates: the update is applied inside a block of columns immediately, and to the
   columns right of the block once per block (``E @ U[block, rest]``), which turns many rank-1
   updates into one matmul.
6. Groups: the grid (scale, zero) of group ``k`` is chosen from the error-updated weights when
   the sweep reaches the group's first column. Under act-order groups are contiguous in the
   visiting order, so ``g_idx[perm[i]] = i // group_size``. With ``grid_search`` the grid is not
   the group's full range but the shrunk one with the least rounding error
   (:func:`~qtune.export.grid.find_grid`, the reference code's ``mse`` option); on SmolLM2-135M
   it closes 79% instead of 48% of round-to-nearest's eval-loss gap (docs/export.md).

The result is a :class:`~qtune.export.grid.QuantizedWeight` in the original column order.
"""

from __future__ import annotations

import torch

from qtune.export.grid import QuantizedWeight, find_grid, quantize
from qtune.export.threads import one_thread


class HessianAccumulator:
    """Running ``H = 2/n Σ x xᵀ`` over every token seen, in float32, on one CPU thread (the
    product's reduction over tokens is split across threads otherwise: :mod:`qtune.export.threads`)."""

    def __init__(self, in_features: int, device: torch.device | str = "cpu"):
        self.H = torch.zeros(in_features, in_features, device=device)
        self.n = 0

    def add(self, x: torch.Tensor) -> None:
        x = x.reshape(-1, x.shape[-1]).float()  # (tokens, in)
        m = x.shape[0]
        self.H *= self.n / (self.n + m)
        self.n += m
        x = x * (2 / self.n) ** 0.5
        with one_thread(x.device):
            self.H += x.T @ x


def gptq_quantize(
    weight: torch.Tensor,
    H: torch.Tensor,
    bits: int,
    group_size: int,
    sym: bool = False,
    act_order: bool = False,
    damp: float = 0.01,
    block_size: int = 128,
    grid_search: bool = False,
) -> QuantizedWeight:
    """Quantize ``weight`` (out, in) against Hessian ``H`` (in, in); see the module docstring.

    Runs on one CPU thread, so the result does not depend on the thread count (:mod:`qtune.export.threads`)."""
    with one_thread(weight.device):
        return _gptq_quantize(weight, H, bits, group_size, sym, act_order, damp, block_size, grid_search)


def _gptq_quantize(weight, H, bits, group_size, sym, act_order, damp, block_size, grid_search) -> QuantizedWeight:
    W = weight.detach().float().clone()
    out, n = W.shape
    g = n if group_size == -1 else group_size
    block = max(g, block_size // g * g) if g <= block_size else g  # whole groups per block

    # (in, in) matrices are the largest temporaries here (64 MiB each for in = 4096): at most two
    # are alive at once — the damped copy of H and the factor being computed from it.
    diag = torch.diag(H).float()
    dead = diag == 0
    diag[dead] = 1
    W[:, dead] = 0
    dev = W.device
    if act_order:
        perm = torch.argsort(diag, descending=True)
        W, H = W[:, perm], H.detach().float()[perm][:, perm]
    else:
        perm = torch.arange(n, device=dev)
        H = H.detach().float().clone()
    diag = diag[perm]
    H.diagonal().copy_(diag + damp * torch.mean(diag))  # dead inputs get 1, then every diagonal the damping
    L = torch.linalg.cholesky(H)
    del H
    Hinv = torch.cholesky_inverse(L)
    del L
    U = torch.linalg.cholesky(Hinv, upper=True)
    del Hinv

    Q = torch.zeros_like(W)
    scales = torch.zeros(out, n // g, device=dev)
    zeros = torch.zeros(out, n // g, device=dev)
    for b0 in range(0, n, block):
        b1 = min(b0 + block, n)
        W1 = W[:, b0:b1].clone()  # (out, B) updated in place as the sweep goes
        E1 = torch.zeros_like(W1)
        U1 = U[b0:b1, b0:b1]
        for i in range(b1 - b0):
            col = b0 + i
            if col % g == 0:
                scale, zero = find_grid(W1[:, i : i + g], bits, sym, grid_search)  # (out, 1) each
                scales[:, col // g], zeros[:, col // g] = scale[:, 0], zero[:, 0]
            w = W1[:, i : i + 1]  # (out, 1)
            q = quantize(w, scale, zero, bits)
            Q[:, col] = q[:, 0]
            err = (w - scale * (q - zero)) / U1[i, i]
            W1[:, i:] -= err @ U1[i : i + 1, i:]
            E1[:, i] = err[:, 0]
        W[:, b1:] -= E1 @ U[b0:b1, b1:]

    inv = torch.argsort(perm)
    g_idx = (torch.arange(n, device=dev) // g)[inv]  # group of original column c = its visiting position // g
    return QuantizedWeight(
        q=Q[:, inv].to(torch.uint8),
        scale=scales,
        zero=zeros.to(torch.int32),
        g_idx=g_idx.to(torch.int32),
        bits=bits,
        group_size=group_size,
    )


def gptq_layer_quantizer(bits: int, group_size: int, sym: bool, act_order: bool, damp: float, grid_search: bool = False):
    """A ``quantize_layer`` for :func:`qtune.export.sequential.sweep`, true-sequential.

    Each group of linears sharing an input gets one Hessian, collected from the layer with the
    groups before it already quantized; the forward pass stops at the group's input.
    """
    from qtune.export.sequential import feed_inputs, set_weight

    def quantize_layer(layer, inputs, groups) -> dict[str, QuantizedWeight]:
        modules = dict(layer.named_modules())
        out = {}
        for group in groups:
            first = modules[group.linears[0]]
            acc = HessianAccumulator(first.in_features, first.weight.device)
            feed_inputs(layer, inputs, group.linears[:1], lambda name, x: acc.add(x))
            for name in group.linears:
                w = gptq_quantize(modules[name].weight, acc.H, bits, group_size, sym, act_order, damp, grid_search=grid_search)
                set_weight(modules[name], w.dequantize())
                out[name] = w
        return out

    return quantize_layer
