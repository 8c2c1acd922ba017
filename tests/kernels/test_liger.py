"""``train.cross_entropy / rope: liger`` on tiny NF4 models of every family (Triton's CPU interpreter): the loss and
every LoRA gradient equal the torch path's, no ``(N, vocab)`` tensor is saved for backward, and nothing outside the
model instance is changed. ``rms_norm: liger`` cannot run here (liger's RMSNorm kernel fails under the interpreter,
see qtune.kernels.dispatch): only its wiring is tested."""

import dataclasses

import pytest
import torch

from qtune.errors import QtuneError
from qtune.kernels import liger
from qtune.registry.families import FAMILIES

from tests.conftest import TINY_FAMILIES, tiny_family_dir
from tests.kernels.test_blocks import build, step

pytest.importorskip("liger_kernel")


class Shapes:
    """The shape and dtype of every tensor autograd saves for backward."""

    def __init__(self):
        self.saved = []

    def pack(self, t):
        self.saved.append((tuple(t.shape), t.dtype))
        return t

    @staticmethod
    def unpack(t):
        return t

    def vocab_sized(self, tokens: int, vocab: int) -> list:
        """Saved tensors holding a row of ``vocab`` values per token: logits, their softmax or gradient."""
        return [(s, d) for s, d in self.saved if len(s) >= 2 and s[-1] == vocab and torch.Size(s[:-1]).numel() >= tokens]


def _model(model_type: str, tmp_path, gradient_checkpointing: bool = False, device: str = "cpu"):
    """On ``device``: the kernel fixture's (CPU under Triton's interpreter, CUDA under TRITON_INTERPRET=0, where
    liger's kernels cannot take CPU tensors); the refusal tests stay on CPU, the case they refuse."""
    return build(tiny_family_dir(model_type, tmp_path / model_type), gradient_checkpointing=gradient_checkpointing,
                 device=device)


def _ids(vocab: int, device: str = "cpu"):
    return torch.randint(3, vocab, (2, 16), generator=torch.Generator().manual_seed(0)).to(device)


def _gap(grads: dict, ref: dict) -> dict:
    """name -> max |Δ| / max |ref| for every LoRA gradient."""
    assert grads.keys() == ref.keys() and grads
    return {n: ((grads[n] - ref[n]).abs().max() / ref[n].abs().max().clamp_min(1e-12)).item() for n in ref}


# Measured on CPU in float32 (max |Δ| / max |grad| over all LoRA gradients, loss relative): see the docstring of each.
# The bound rtol 1e-4 holds with room on every family.
RTOL = 1e-4


@pytest.mark.parametrize("model_type", list(TINY_FAMILIES))
def test_fused_cross_entropy_equals_torch(model_type, tmp_path, device):
    """Loss and LoRA gradients through liger's fused linear + cross-entropy equal transformers' (measured: losses to
    1e-7 relative, gradients to 1e-6 of their size or better), and no (N, vocab) tensor is saved."""
    model = _model(model_type, tmp_path, device=device)
    if model_type == "gemma2":  # liger's softcapping kernel path fails under the interpreter: tested without it
        model.config.final_logit_softcapping = None
    vocab = model.config.vocab_size
    ids = _ids(vocab, device)
    torch_shapes, liger_shapes = Shapes(), Shapes()
    with torch.autograd.graph.saved_tensors_hooks(torch_shapes.pack, torch_shapes.unpack):
        loss_ref, grads_ref = step(model, ids)
    assert liger.apply(model, FAMILIES[model_type], "liger", "torch", "torch") == {"cross_entropy": 1}
    with torch.autograd.graph.saved_tensors_hooks(liger_shapes.pack, liger_shapes.unpack):
        loss, grads = step(model, ids)
    gaps = _gap(grads, grads_ref)
    worst = max(gaps, key=gaps.get)
    print(f"{model_type}: loss {loss:.7f} vs {loss_ref:.7f}, worst gradient {worst} {gaps[worst]:.2e}")
    assert loss == pytest.approx(loss_ref, rel=RTOL)
    assert gaps[worst] < RTOL, f"{worst}: max |Δ| / max |grad| {gaps[worst]:.3g} (mean {sum(gaps.values()) / len(gaps):.3g})"
    n = ids.numel() - ids.shape[0]  # tokens with a next-token label
    assert torch_shapes.vocab_sized(n, vocab), "the torch path should save its logits (the check would see them)"
    assert not liger_shapes.vocab_sized(n, vocab), liger_shapes.vocab_sized(n, vocab)


@pytest.mark.parametrize("model_type", ["llama", "qwen3", "gemma2", "phi3"])
def test_rope_equals_torch(model_type, tmp_path, monkeypatch, device):
    """liger's rotary embedding in every attention module (each layer's call counted): loss and LoRA gradients equal
    (measured: bit-identical on all four — the kernel computes q·cos + rotate(q)·sin in float32 as torch does)."""
    from liger_kernel.transformers import rope as liger_rope

    calls = []
    kernel = liger_rope.liger_rotary_pos_emb
    monkeypatch.setattr(liger_rope, "liger_rotary_pos_emb", lambda *a, **k: calls.append(1) or kernel(*a, **k))
    model = _model(model_type, tmp_path, device=device)
    ids = _ids(model.config.vocab_size, device)
    loss_ref, grads_ref = step(model, ids)
    taken = liger.apply(model, FAMILIES[model_type], "torch", "torch", "liger")
    assert taken == {"rope": model.config.num_hidden_layers}
    loss, grads = step(model, ids)
    assert len(calls) == model.config.num_hidden_layers, calls  # liger's kernel ran in every layer
    gaps = _gap(grads, grads_ref)
    print(f"{model_type}: loss {loss:.7f} vs {loss_ref:.7f}, worst gradient {max(gaps.values()):.2e}")
    assert loss == pytest.approx(loss_ref, rel=RTOL)
    assert max(gaps.values()) < RTOL, max(gaps.items(), key=lambda kv: kv[1])


def test_liger_changes_only_the_instance(tmp_path, device):
    """After liger's cross-entropy, RMSNorm and RoPE go on one model, transformers' classes and module functions are
    the originals: a second model of the family, built after, runs transformers' own code; with gradient
    checkpointing (the layer recomputed in backward) the rope still trains, and the module function is restored."""
    from transformers.models.llama import modeling_llama

    forward, rope, norm = modeling_llama.LlamaForCausalLM.forward, modeling_llama.apply_rotary_pos_emb, \
        modeling_llama.LlamaRMSNorm.forward
    model = _model("llama", tmp_path, gradient_checkpointing=True, device=device)
    taken = liger.apply(model, FAMILIES["llama"], "liger", "liger", "liger")
    layers = model.config.num_hidden_layers
    assert taken == {"cross_entropy": 1, "rms_norm": 2 * layers + 1, "rope": layers}
    assert (modeling_llama.LlamaForCausalLM.forward, modeling_llama.apply_rotary_pos_emb,
            modeling_llama.LlamaRMSNorm.forward) == (forward, rope, norm)
    assert type(model.get_base_model()).forward is forward and model.get_base_model().forward.__func__ is not forward
    other = _model("llama", tmp_path / "other")
    assert "forward" not in vars(other.get_base_model()) and "forward" not in vars(other.get_base_model().model.norm)
    ids = _ids(model.config.vocab_size, device)
    liger.remove(model)
    assert not any("forward" in vars(m) for m in model.get_base_model().modules() if not hasattr(m, "base_layer"))
    loss_ref, grads_ref = step(model, ids)
    liger.apply(model, FAMILIES["llama"], "liger", "torch", "liger")  # rms_norm: liger's kernel needs CUDA; off here
    loss, grads = step(model, ids)
    assert loss == pytest.approx(loss_ref, rel=RTOL) and max(_gap(grads, grads_ref).values()) < RTOL
    assert modeling_llama.apply_rotary_pos_emb is rope


def test_a_family_liger_lacks_is_refused():
    lacking = dataclasses.replace(FAMILIES["llama"], liger=None, title="Some family", model_type="some")
    for switch, args in (("cross_entropy", ("liger", "torch", "torch")), ("rope", ("torch", "torch", "liger"))):
        with pytest.raises(QtuneError, match=rf"train.{switch}: liger-kernel has no kernels for Some family \(some\)"):
            liger.apply(torch.nn.Linear(1, 1), lacking, *args)


def test_softcapping_on_cpu_is_refused(tmp_path):
    model = _model("gemma2", tmp_path)
    assert model.config.final_logit_softcapping
    with pytest.raises(QtuneError, match="final_logit_softcapping needs a CUDA GPU"):
        liger.apply(model, FAMILIES["gemma2"], "liger", "torch", "torch")


def test_rope_with_16_bit_activations_on_cpu_is_refused(tmp_path):
    """liger's rotary kernel gives NaN for bfloat16 q/k in Triton's interpreter (measured: every output NaN)."""
    model = _model("llama", tmp_path)
    model.get_base_model().get_input_embeddings().to(torch.bfloat16)
    with pytest.raises(QtuneError, match="train.rope: 'liger' with bfloat16 activations needs a CUDA GPU"):
        liger.apply(model, FAMILIES["llama"], "torch", "torch", "liger")
