"""GPTQ and AWQ over a whole (tiny) model, layer by layer, and the checkpoints they write."""

import pytest
import torch

from qtune.export.awq import awq_layer_quantizer
from qtune.export.checkpoint import load_dequantized, quantization_config, write_checkpoint
from qtune.export.gptq import gptq_layer_quantizer
from qtune.export.grid import rtn
from qtune.export.sequential import sweep

from tests.conftest import TINY_FAMILIES, tiny_family_dir


class ByteTokenizer:
    """Enough of a tokenizer for save_pretrained in write_checkpoint."""

    def save_pretrained(self, path):
        (path / "tokenizer_config.json").write_text("{}")


def logits_mse(model, ref_logits, tokens):
    with torch.no_grad():
        return ((model(input_ids=tokens).logits - ref_logits) ** 2).mean().item()


def rtn_model(model, bits, group_size):
    with torch.no_grad():
        for name, m in model.model.layers.named_modules():
            if isinstance(m, torch.nn.Linear):
                m.weight.copy_(rtn(m.weight, bits, group_size).dequantize())
    return model


@pytest.mark.parametrize("method,kv_heads", [("gptq", 2), ("awq", 4), ("awq", 2)])
def test_sweep_beats_rtn_and_checkpoint_reloads_exactly(method, kv_heads, calib, make_tiny, tmp_path):
    tiny_llama = make_tiny
    held_out = torch.randint(0, 256, (8, 64), generator=torch.Generator().manual_seed(7))
    fp = tiny_llama(kv_heads)
    with torch.no_grad():
        ref = fp(input_ids=held_out).logits
    mse_rtn = logits_mse(rtn_model(tiny_llama(kv_heads), 4, 32), ref, held_out)

    model = tiny_llama(kv_heads)
    quantizer = gptq_layer_quantizer(4, 32, sym=False, act_order=True, damp=0.01) if method == "gptq" else awq_layer_quantizer(4, 32)
    quantized = sweep(model, calib, batch_size=4, quantize_layer=quantizer)
    assert len(quantized) == 2 * 7
    mse_q = logits_mse(model, ref, held_out)
    # measured on this model (seeded): GPTQ 0.64x, AWQ 0.81x (MHA) and 0.84x (GQA) of RTN's logit MSE
    assert mse_q < 0.95 * mse_rtn, f"{method} logits mse {mse_q:.3e} vs RTN {mse_rtn:.3e}"

    out = tmp_path / method
    qcfg = quantization_config(method, 4, 32, sym=False, act_order=method == "gptq", damp=0.01)
    files = write_checkpoint(model, ByteTokenizer(), quantized, qcfg, out)
    assert "model.safetensors" in files and "config.json" in files
    loaded = load_dequantized(out)
    mods = dict(model.named_modules())
    for name in quantized:  # the quantized linears come back bit-exactly
        assert torch.equal(dict(loaded.named_modules())[name].weight, mods[name].weight), name
    diff = (loaded(input_ids=held_out).logits - model(input_ids=held_out).logits).abs()
    # only norms/embeddings went through float16: measured max diff ~1e-3
    assert diff.max() < 2e-2, f"max {diff.max():.3e} mean {diff.mean():.3e}"


@pytest.mark.parametrize("model_type", list(TINY_FAMILIES))
def test_awq_scales_fold_exactly_into_each_familys_ops(model_type, tmp_path):
    """Folding AWQ scales (no rounding) into the ops the family registry names leaves a layer's output
    unchanged: the right ``prev`` per group, and Gemma's ``1 + w`` norms folded as ``(1 + w) / s - 1``. The
    registry's q/k/v bias flag matches the layer transformers builds."""
    from transformers import AutoModelForCausalLM

    from qtune.export.awq import _fold
    from qtune.export.sequential import capture_layer_inputs, decoder_layers, layer_groups, run_layer
    from qtune.registry.families import family

    model = AutoModelForCausalLM.from_pretrained(tiny_family_dir(model_type, tmp_path), dtype=torch.float32).eval()
    g = torch.Generator().manual_seed(0)
    inputs = capture_layer_inputs(model, torch.randint(0, model.config.vocab_size, (2, 16), generator=g), 2)
    layer = decoder_layers(model)[1][0]
    first = dict(layer.named_modules())[layer_groups(model)[0].linears[0]]
    assert (first.bias is not None) == family(model_type).qkv_bias, "the registry's qkv_bias disagrees with transformers"
    before = run_layer(layer, inputs)[0][0]
    modules, folded = dict(layer.named_modules()), []
    for grp in layer_groups(model):
        prev, lins = modules.get(grp.prev), [modules[n] for n in grp.linears]
        if prev is None or (isinstance(prev, torch.nn.Linear) and prev.out_features != lins[0].in_features):
            continue  # AWQ skips these too (Phi-3's fused inputs; v -> o under grouped-query attention)
        _fold(prev, lins, torch.exp(torch.randn(lins[0].in_features, generator=g) * 0.5), grp.prev_offset)
        folded.append(grp.prev)
    after = run_layer(layer, inputs)[0][0]
    d = (after - before).abs() / before.abs().max()
    assert len(folded) >= 2, folded
    # measured: at most 4.2e-7 of the output's largest entry (float32 rounding); Gemma's norm offset
    # ignored gives 0.9 (Gemma 2) and 1.07 (Gemma 3)
    assert d.max() < 1e-5, f"{model_type} folded into {folded}: max {d.max():.3e} mean {d.mean():.3e} (relative)"


def test_awq_clip_search_a_block_of_rows_at_a_time_equals_all_rows():
    """search_clip searches rows in blocks to bound its (tokens, rows, groups) temporaries; each (row, group)
    is independent, so any block size gives the all-rows search bit for bit (a last block not full too)."""
    from qtune.export.awq import search_clip

    g = torch.Generator().manual_seed(0)
    x, w = torch.randn(96, 128, generator=g), torch.randn(37, 128, generator=g) * 0.02
    w[3, :32] *= 8  # an outlier group, so clipping matters somewhere
    whole = search_clip(x, w, 4, 32, rows=w.shape[0])
    assert not torch.equal(whole, w), "the search clipped nothing: the test would not see a difference"
    for rows in (1, 5, 36):
        assert torch.equal(search_clip(x, w, 4, 32, rows=rows), whole), rows
