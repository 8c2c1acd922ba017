"""Autograd functions over whole LoRA blocks of a 4-bit decoder layer: linears that share one input, and a gated MLP.

A *projection* is one frozen 4-bit linear ``W`` (out, in) with its adapter ``A`` (r, in), ``B`` (out, r), scale
``s`` (alpha / r) and optional frozen ``bias``. For input rows ``X`` (N, in) its output is

    Y = X Wᵀ + s · (X_l Aᵀ) Bᵀ (+ bias)            X_l: X, or dropout(X) (then saved for backward)

**Group** (q/k/v of attention; any linears reading one input): every member's ``Y_i`` from one ``X`` in one node.
Saved: ``X`` once, each ``H_i = X_l,i A_iᵀ`` (N, r_i), each ``X_l,i`` that is not ``X``. With ``G_i = dL/dY_i``:

    dL/dX   = Σ_i G_i W_i  +  Σ_i s_i (G_i B_i) A_i      (summed into one buffer; W_i dequantized again, one at a time)
    dL/dB_i = s_i G_iᵀ H_i           dL/dA_i = s_i (G_i B_i)ᵀ X_l,i

and when ``X_l,i`` is a dropout of ``X``, its term ``s_i (G_i B_i) A_i`` is returned for it instead (autograd takes it
back through the dropout).

**Gated MLP** (Llama, Mistral, Qwen, Gemma): gate ``g``, up ``u`` and down ``d`` projections around an activation:

    E = proj_g(X)      U = proj_u(X)      Hm = act(E) ⊙ U      Y = proj_d(Hm ⊙ M)

``M`` is the down projection's dropout mask over (1 - p) (all ones without dropout; only the LoRA input sees it, as
in peft). Saved: ``X``, ``E``, ``U`` and the small (N, r) products; ``act(E)`` and ``Hm`` (N, intermediate) are not
saved but recomputed from ``E`` and ``U`` in backward, where the activation's own autograd gives
``dL/dE = (dL/dHm ⊙ U) act'(E)`` and ``dL/dU = dL/dHm ⊙ act(E)`` for any activation. peft + bitsandbytes saves
``X``, ``E``, ``act(E)``, ``U`` and ``Hm``: two (N, intermediate) tensors more per layer. Backward of the down
projection: ``dL/dHm = G W_d + s_d ((G B_d) A_d) ⊙ M``; then the group rule above for gate and up.

Every product runs in the compute dtype (bitsandbytes' ``compute_dtype``: bf16 for QLoRA), the adapter weights
cast to it, with autocast off inside the node, so the block costs the same casts under or without autocast;
outputs come back in the input's dtype and gradients in each tensor's own dtype. Each weight is dequantized once in
forward and once in backward, into the model's one reused :class:`Workspace` buffer, never kept.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch

from qtune.kernels.storage import Packed4bit

Dequantize = Callable[..., torch.Tensor]


class Workspace:
    """One reused buffer per (device, dtype) that every dequantized weight of a model is written into.

    Owned by the model it serves (``qtune.kernels.blocks.fuse`` makes one); the blocks use a dequantized weight
    before they dequantize the next, on one stream, so one buffer serves all of them. A backend that can write
    into a given tensor (``out=``) fills the buffer; any other returns its own tensor.
    """

    def __init__(self, dequantize: Dequantize, writes_out: bool):
        self._dequantize, self._writes_out = dequantize, writes_out
        self._buffers: dict[tuple[torch.device, torch.dtype], torch.Tensor] = {}

    def weight(self, w: Packed4bit, dtype: torch.dtype) -> torch.Tensor:
        if not self._writes_out:
            return self._dequantize(w, dtype)
        key = (w.device, dtype)
        buf = self._buffers.get(key)
        if buf is None or buf.numel() < w.numel:
            buf = self._buffers[key] = torch.empty(w.numel, dtype=dtype, device=w.device)
        return self._dequantize(w, dtype, out=buf[: w.numel].view(w.shape))


@dataclass(frozen=True)
class Projection:
    """One 4-bit linear with its adapter, as the block functions read it (no tensors are copied)."""

    weight: Packed4bit
    a: torch.Tensor  # (r, in)
    b: torch.Tensor  # (out, r)
    scaling: float
    bias: Optional[torch.Tensor] = None  # (out,)


def _forward(p: Projection, x: torch.Tensor, x_lora: torch.Tensor, ws: Workspace):
    """``x Wᵀ + s (x_lora Aᵀ) Bᵀ + bias`` in x's dtype, and ``H = x_lora Aᵀ`` (rows flattened)."""
    a, b = p.a.to(x.dtype), p.b.to(x.dtype)
    w = ws.weight(p.weight, x.dtype)
    y = torch.nn.functional.linear(x, w, None if p.bias is None else p.bias.to(x.dtype))  # (N, out)
    h = x_lora @ a.t()  # (N, r)
    return y.addmm_(h, b.t(), alpha=p.scaling), h


def _grad_through(p: Projection, g: torch.Tensor, dx: Optional[torch.Tensor], ws: Workspace) -> torch.Tensor:
    """``dx + g W`` (dx allocated when None): the base's share of an input gradient, W dequantized here."""
    w = ws.weight(p.weight, g.dtype)
    return g @ w if dx is None else dx.addmm_(g, w)


def _adapter_grads(p: Projection, g: torch.Tensor, h: torch.Tensor, x_lora: torch.Tensor, need_a: bool, need_b: bool):
    """(dA, dB, s (g B) A): the adapter's gradients and its share of dL/dx_lora, all in g's dtype."""
    gb = g @ p.b.to(g.dtype)  # (N, r)
    grad_a = (gb.t() @ x_lora).mul_(p.scaling) if need_a else None  # (r, in)
    grad_b = (g.t() @ h).mul_(p.scaling) if need_b else None  # (out, r)
    return grad_a, grad_b, (gb @ p.a.to(g.dtype)).mul_(p.scaling)  # (N, in)


def _rows(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return t.reshape(-1, t.shape[-1]).to(dtype)


class LoRAGroup(torch.autograd.Function):
    """Several projections of one input (see the module doc). Tensor arguments: ``x``, then per member
    ``x_lora_i, A_i, B_i, bias_i`` (bias may be None); ``x_lora_i is x`` means no dropout."""

    @staticmethod
    def forward(ctx, projs: tuple, ws: Workspace, compute: torch.dtype, x: torch.Tensor, *flat):
        ctx.projs, ctx.ws, ctx.out_dtype, ctx.lead = projs, ws, x.dtype, x.shape[:-1]
        xc = _rows(x, compute)  # (N, in)
        shared = [flat[4 * i] is x for i in range(len(projs))]
        lora_in = [xc if s else _rows(flat[4 * i], compute) for i, s in enumerate(shared)]
        with torch.autocast(x.device.type, enabled=False):
            ys, hs = zip(*(_forward(p, xc, xl, ws) for p, xl in zip(projs, lora_in)))
        ctx.shared = shared
        ctx.save_for_backward(xc, *hs, *[xl for xl, s in zip(lora_in, shared) if not s])
        return tuple(y.to(x.dtype).reshape(*ctx.lead, y.shape[-1]) for y in ys)

    @staticmethod
    def backward(ctx, *grads):
        xc, *rest = ctx.saved_tensors
        n = len(ctx.projs)
        hs, own = rest[:n], iter(rest[n:])
        lora_in = [xc if s else next(own) for s in ctx.shared]
        gs = [_rows(g, xc.dtype) for g in grads]
        out = [None] * (4 + 4 * n)
        dx = None
        with torch.autocast(xc.device.type, enabled=False):
            for i, (p, g) in enumerate(zip(ctx.projs, gs)):
                dx = _grad_through(p, g, dx, ctx.ws)
                need_a, need_b = ctx.needs_input_grad[5 + 4 * i], ctx.needs_input_grad[6 + 4 * i]
                grad_a, grad_b, dxl = _adapter_grads(p, g, hs[i], lora_in[i], need_a, need_b)
                if ctx.shared[i]:
                    dx.add_(dxl)
                else:
                    out[4 + 4 * i] = dxl.to(ctx.out_dtype).reshape(*ctx.lead, -1)
                out[5 + 4 * i] = None if grad_a is None else grad_a.to(p.a.dtype)
                out[6 + 4 * i] = None if grad_b is None else grad_b.to(p.b.dtype)
                if p.bias is not None and ctx.needs_input_grad[7 + 4 * i]:
                    out[7 + 4 * i] = g.sum(0).to(p.bias.dtype)
        out[3] = dx.to(ctx.out_dtype).reshape(*ctx.lead, -1) if ctx.needs_input_grad[3] else None
        return tuple(out)


def lora_group(projs: tuple[Projection, ...], x: torch.Tensor, x_loras: tuple[torch.Tensor, ...], ws: Workspace,
               compute: torch.dtype) -> tuple[torch.Tensor, ...]:
    """Every projection of ``x`` as one autograd node; ``x_loras[i]`` is x or dropout_i(x)."""
    flat = []
    for p, xl in zip(projs, x_loras):
        flat += [xl, p.a, p.b, p.bias]
    return LoRAGroup.apply(projs, ws, compute, x, *flat)


class LoRAMLP(torch.autograd.Function):
    """``proj_d(act(proj_g(X)) ⊙ proj_u(X))`` as one node (see the module doc). Tensor arguments: ``x``, the gate's
    and the up's adapter inputs (``x`` itself, or a dropout of it), ``keep`` (the down adapter's boolean dropout
    mask, or None), then ``A, B`` of gate, up, down."""

    @staticmethod
    def forward(ctx, projs: tuple, act: Callable, ws: Workspace, compute: torch.dtype, keep_scale: float,
                x: torch.Tensor, xl_g: torch.Tensor, xl_u: torch.Tensor, keep: Optional[torch.Tensor], *adapters):
        gate, up, down = projs
        ctx.projs, ctx.act, ctx.ws, ctx.out_dtype, ctx.lead = projs, act, ws, x.dtype, x.shape[:-1]
        ctx.keep_scale, ctx.shared = keep_scale, (xl_g is x, xl_u is x)
        xc = _rows(x, compute)
        lora_in = [xc if shared else _rows(xl, compute) for xl, shared in zip((xl_g, xl_u), ctx.shared)]
        keep_rows = None if keep is None else keep.reshape(-1, keep.shape[-1])
        with torch.autocast(x.device.type, enabled=False):
            e, h_g = _forward(gate, xc, lora_in[0], ws)  # (N, inter), (N, r)
            u, h_u = _forward(up, xc, lora_in[1], ws)
            hm = act(e).mul_(u)  # (N, inter), dropped after this call
            y, h_d = _forward(down, hm, hm if keep is None else _dropped(hm, keep_rows, keep_scale), ws)
        own = [xl for xl, shared in zip(lora_in, ctx.shared) if not shared]
        ctx.save_for_backward(xc, e, u, h_g, h_u, h_d, keep_rows, *own)
        return y.to(x.dtype).reshape(*ctx.lead, y.shape[-1])

    @staticmethod
    def backward(ctx, grad):
        xc, e, u, h_g, h_u, h_d, keep, *own = ctx.saved_tensors
        gate, up, down = ctx.projs
        need = ctx.needs_input_grad
        own = iter(own)
        lora_in = [xc if shared else next(own) for shared in ctx.shared]
        g = _rows(grad, xc.dtype)
        with torch.autocast(xc.device.type, enabled=False):
            with torch.enable_grad():  # recompute act(E) ⊙ U, the one piece not saved, to differentiate it
                e_, u_ = e.detach().requires_grad_(), u.detach().requires_grad_()
                hm = ctx.act(e_) * u_
            x_down = hm.detach() if keep is None else _dropped(hm.detach(), keep, ctx.keep_scale)
            grad_ad, grad_bd, d_lora = _adapter_grads(down, g, h_d, x_down, need[13], need[14])
            if keep is not None:
                d_lora = _dropped(d_lora, keep, ctx.keep_scale)
            d_hm = _grad_through(down, g, d_lora, ctx.ws)
            d_e, d_u = torch.autograd.grad(hm, (e_, u_), d_hm)
            del hm, x_down, d_hm
            dx, grads, d_lora_in = None, [], [None, None]
            for i, (p, gp, hp) in enumerate(((gate, d_e, h_g), (up, d_u, h_u))):
                dx = _grad_through(p, gp, dx, ctx.ws)
                grad_a, grad_b, dxl = _adapter_grads(p, gp, hp, lora_in[i], need[9 + 2 * i], need[10 + 2 * i])
                if ctx.shared[i]:
                    dx.add_(dxl)
                else:
                    d_lora_in[i] = dxl.to(ctx.out_dtype).reshape(*ctx.lead, -1)
                grads += [grad_a, grad_b]
        grads += [grad_ad, grad_bd]
        typed = [None if t is None else t.to(ref.dtype)
                 for t, ref in zip(grads, (gate.a, gate.b, up.a, up.b, down.a, down.b))]
        dx = dx.to(ctx.out_dtype).reshape(*ctx.lead, -1) if need[5] else None
        return (None, None, None, None, None, dx, *d_lora_in, None, *typed)


def _dropped(t: torch.Tensor, keep: torch.Tensor, scale: float) -> torch.Tensor:
    """Inverted dropout with a given mask: ``t ⊙ keep / (1 - p)``."""
    return (t * keep).mul_(scale)


def lora_mlp(gate: Projection, up: Projection, down: Projection, act: Callable, x: torch.Tensor,
             x_loras: tuple[torch.Tensor, torch.Tensor], keep: Optional[torch.Tensor], keep_scale: float,
             ws: Workspace, compute: torch.dtype) -> torch.Tensor:
    """The gated MLP of ``x`` as one autograd node. ``x_loras``: the gate's and up's adapter inputs (x, or a dropout
    of x); ``keep``: the down adapter's boolean dropout mask (None: no dropout), ``keep_scale`` = 1 / (1 - p)."""
    if any(p.bias is not None for p in (gate, up, down)):
        raise ValueError("lora_mlp: biased MLP projections are not supported (use the per-linear path)")
    return LoRAMLP.apply((gate, up, down), act, ws, compute, keep_scale, x, *x_loras, keep,
                         gate.a, gate.b, up.a, up.b, down.a, down.b)
