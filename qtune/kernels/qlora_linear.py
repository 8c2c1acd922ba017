"""A fused QLoRA linear: the 4-bit base and its LoRA adapter in one autograd node.

Forward, for input rows ``X`` (N, in), frozen 4-bit ``W`` (out, in), adapter ``A`` (r, in),
``B`` (out, r) and scale ``s`` (alpha / r):

    Y = X Wᵀ + s · (X_l Aᵀ) Bᵀ   (+ bias)                                       (N, out)

where ``X_l`` is the adapter's input (``X`` itself, or ``dropout(X)``, or ``X`` in the adapter's
dtype). ``W`` is dequantized from bitsandbytes' storage just for the product and dropped; only
``X_l`` (N, in) and ``H = X_l Aᵀ`` (N, r) are kept for backward, never ``W``.

Backward, with ``G = dL/dY`` (N, out). Each output element is
``Y_nj = Σ_i X_ni W_ji + s Σ_k H_nk B_jk`` and ``H_nk = Σ_i X_l,ni A_ki``, so

    dL/dX   = G W                   since ∂Y_nj/∂X_ni = W_ji         (W dequantized again here)
    dL/dB   = s · Gᵀ H              since ∂Y_nj/∂B_jk = s H_nk
    dL/dH   = s · G B               since ∂Y_nj/∂H_nk = s B_jk
    dL/dA   = (dL/dH)ᵀ X_l = s · (G B)ᵀ X_l      since ∂H_nk/∂A_ki = X_l,ni
    dL/dX_l = (dL/dH) A   = s · (G B) A          since ∂H_nk/∂X_l,ni = A_ki
    dL/dbias = Σ_n G_n

When ``X_l`` is ``X`` (no dropout, same dtype) the two input gradients are summed here. ``W`` is
frozen, so nothing of size (out, in) outlives a call.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch

from qtune.kernels.storage import Packed4bit

Dequantize = Callable[[Packed4bit, torch.dtype], torch.Tensor]


class QLoRALinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, x_lora: torch.Tensor, weight: Packed4bit, dequantize: Dequantize,
                lora_a: torch.Tensor, lora_b: torch.Tensor, scaling: float, bias: Optional[torch.Tensor],
                out_dtype: torch.dtype) -> torch.Tensor:
        # x (..., in) in the compute dtype; x_lora (..., in) in the adapter's dtype
        base = torch.nn.functional.linear(x, dequantize(weight, x.dtype), bias)  # (..., out)
        h = x_lora @ lora_a.t()  # (..., r)
        lora = (h @ lora_b.t()) * scaling  # (..., out)
        ctx.save_for_backward(x_lora, h, lora_a, lora_b)
        ctx.weight, ctx.dequantize, ctx.scaling = weight, dequantize, scaling
        ctx.x_dtype, ctx.shared = x.dtype, x_lora is x
        ctx.has_bias = bias is not None
        ctx.device_type = x.device.type  # backward reruns under the forward's autocast, as torch.amp.custom_bwd does
        ctx.autocast = torch.is_autocast_enabled(ctx.device_type)
        ctx.autocast_dtype = torch.get_autocast_dtype(ctx.device_type)
        return base.to(out_dtype) + lora.to(out_dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        with torch.autocast(ctx.device_type, dtype=ctx.autocast_dtype, enabled=ctx.autocast):
            return QLoRALinear._backward(ctx, grad)

    @staticmethod
    def _backward(ctx, grad: torch.Tensor):
        x_lora, h, lora_a, lora_b = ctx.saved_tensors
        s = ctx.scaling
        g = grad.to(lora_b.dtype)  # (..., out)
        g_rows = g.reshape(-1, g.shape[-1])  # (N, out)
        gb = g @ lora_b  # (..., r)
        grad_a = grad_b = None
        if ctx.needs_input_grad[4]:
            grad_a = s * gb.reshape(-1, gb.shape[-1]).t() @ x_lora.reshape(-1, x_lora.shape[-1])  # (r, in)
        if ctx.needs_input_grad[5]:
            grad_b = s * g_rows.t() @ h.reshape(-1, h.shape[-1])  # (out, r)
        grad_x_lora = (s * gb) @ lora_a if ctx.needs_input_grad[1] else None  # (..., in)
        grad_x = None
        if ctx.needs_input_grad[0]:
            w = ctx.dequantize(ctx.weight, ctx.x_dtype)  # (out, in), recomputed, freed on return
            grad_x = grad.to(ctx.x_dtype) @ w
            del w
        if ctx.shared and grad_x is not None:  # x_lora is x: autograd would add the two gradients; add them here once
            grad_x, grad_x_lora = grad_x + grad_x_lora.to(ctx.x_dtype), None
        grad_bias = grad.reshape(-1, grad.shape[-1]).sum(0) if ctx.has_bias and ctx.needs_input_grad[7] else None
        return grad_x, grad_x_lora, None, None, grad_a, grad_b, None, grad_bias, None


def qlora_linear(x, x_lora, weight: Packed4bit, dequantize: Dequantize, lora_a, lora_b, scaling: float,
                 bias=None, out_dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """``x · dequant(W)ᵀ + scaling · (x_lora · Aᵀ) · Bᵀ (+ bias)`` as one autograd node (see module doc)."""
    return QLoRALinear.apply(x, x_lora, weight, dequantize, lora_a, lora_b, scaling, bias, out_dtype or x.dtype)
