"""The streamed export against the in-memory path it replaced, its one-layer-at-a-time property, and
what an interrupted export leaves behind."""

import copy

import pytest
import torch
from safetensors.torch import load_file

from qtune import rundir
from qtune.export.layerwise import MergedWeights, lazy_model
from qtune.export.pipeline import ExportInterrupted, export_run
from qtune.export.stream import MergedTarget, QuantTarget, stream_export
from qtune.recipe import load_run_recipe
from qtune.recipe.schema import ExportSection

SETTINGS = dict(group_size=64, calibration={"samples": 8, "seq_len": 64}, fidelity=False, device="cpu")


def _tensors(folder):
    out = {}
    for f in sorted(folder.glob("*.safetensors")):
        out.update(load_file(str(f)))
    return out


def _in_memory(run, fmt, tokenizer, recipe, s, out):
    """The pre-streaming path: peft merges the whole float32 model, each format quantizes its own copy."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from qtune.export.awq import awq_layer_quantizer
    from qtune.export.calibration import calibration_tokens
    from qtune.export.checkpoint import quantization_config, write_checkpoint
    from qtune.export.gptq import gptq_layer_quantizer
    from qtune.export.sequential import sweep

    base = AutoModelForCausalLM.from_pretrained(recipe.model.path, dtype=torch.float32)
    model = PeftModel.from_pretrained(base, str(run / rundir.ADAPTER)).merge_and_unload().eval()
    if fmt == "merged":
        return {k: v.to(torch.float16) for k, v in model.state_dict().items() if k != "lm_head.weight"}
    cal = s.calibration
    calib = calibration_tokens(recipe, tokenizer, cal.samples, cal.seq_len, cal.source, cal.seed)
    quantizer = (gptq_layer_quantizer(s.bits, s.group_size, s.sym, s.act_order, s.damp, s.grid_search) if fmt == "gptq"
                 else awq_layer_quantizer(s.bits, s.group_size))
    model = copy.deepcopy(model)
    quantized = sweep(model, calib, 8, quantizer)
    qcfg = quantization_config(fmt, s.bits, s.group_size, s.sym and fmt == "gptq", s.act_order and fmt == "gptq", s.damp)
    write_checkpoint(model, tokenizer, quantized, qcfg, out)
    return _tensors(out)


def test_streamed_export_is_bit_identical_to_in_memory(tiny_run, tmp_path):
    from transformers import AutoTokenizer

    s = ExportSection(formats=["merged", "gptq", "awq"], **SETTINGS)
    done = export_run(tiny_run, s, out_root=tmp_path / "stream")
    recipe = load_run_recipe(tiny_run)
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_run / rundir.ADAPTER))
    for fmt, folder in done.items():
        ours, ref = _tensors(folder), _in_memory(tiny_run, fmt, tokenizer, recipe, s, tmp_path / f"mem-{fmt}")
        assert set(ours) == set(ref), f"{fmt}: {sorted(set(ours) ^ set(ref))[:5]}"
        differ = [k for k in ref if not torch.equal(ours[k], ref[k])]
        assert not differ, f"{fmt}: {len(differ)} tensors differ, e.g. {differ[:3]}"


class CountingWeights(MergedWeights):
    """The real merged-weights reader, counting how often each tensor is read."""

    def __init__(self, *args):
        super().__init__(*args)
        self.reads = {}

    def __call__(self, name):
        self.reads[name] = self.reads.get(name, 0) + 1
        return super().__call__(name)


class LayerProbe:
    """A target that records, per streamed layer, how many decoder layers hold real storage."""

    def __init__(self):
        self.seen, self.alive, self.one_layer = [], [], []

    def add(self, tensors):
        pass

    def flush(self):
        pass

    def layer(self, prefix, layer, merged, groups, device):
        self.seen.append(layer)
        self.alive.append(sum(any(p.device.type != "meta" for p in m.parameters()) for m in self.seen))
        self.one_layer.append(set(merged) == set(layer.state_dict()))


def test_one_layer_at_a_time(tiny_run, tmp_path):
    from transformers import AutoTokenizer

    from qtune.export.awq import awq_layer_quantizer
    from qtune.export.calibration import calibration_tokens
    from qtune.export.gptq import gptq_layer_quantizer

    weights = CountingWeights(tiny_run, "dequantized", "cpu")
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_run / rundir.ADAPTER))
    calib = calibration_tokens(weights.recipe, tokenizer, 4, 32)
    probe = LayerProbe()
    targets = [MergedTarget(tmp_path / "m"), QuantTarget("gptq", gptq_layer_quantizer(4, 64, False, True, 0.01), tmp_path / "q"),
               QuantTarget("awq", awq_layer_quantizer(4, 64), tmp_path / "a"), probe]
    for t in targets[:3]:
        t.folder.mkdir()
    stream_export(weights, targets, calib, 4)
    # each target after a quantizer sees every earlier layer back on the meta device
    assert probe.alive == [0, 0], probe.alive
    # one decoder layer's merged tensors per step, each merged once for all three formats (the
    # embeddings are read twice: written first, then again to embed the calibration tokens)
    assert probe.one_layer == [True, True]
    layer_reads = {k: v for k, v in weights.reads.items() if ".layers." in k}
    assert len(layer_reads) == 2 * 9 and set(layer_reads.values()) == {1}, layer_reads

    model = lazy_model(weights.config, weights, "cpu")
    layers = model.model.layers
    alive = []
    for layer in layers:  # registered after lazy_model's own hooks: runs once the layer is loaded
        layer.register_forward_pre_hook(
            lambda m, a: alive.append(sum(any(p.device.type != "meta" for p in l.parameters()) for l in layers)))
    with torch.no_grad():
        model(input_ids=torch.arange(16).view(1, 16))
    assert alive == [1, 1] and all(p.device.type == "meta" for p in layers.parameters())


@pytest.mark.parametrize("how", ["ctrl-c", "sigterm"])
def test_interrupted_export_leaves_no_folder(tiny_run, tmp_path, how):
    import os
    import signal

    def interrupt(i, n):
        if i == 1 and how == "ctrl-c":
            raise KeyboardInterrupt
        if i == 1:
            os.kill(os.getpid(), signal.SIGTERM)

    out = tmp_path / "exports"
    out.mkdir()
    with pytest.raises(ExportInterrupted) as e:
        export_run(tiny_run, ExportSection(formats=["merged", "gptq"], **SETTINGS), out_root=out, on_layer=interrupt)
    assert "rerun the same command" in str(e.value) and e.value.exit_code == 130
    assert list(out.iterdir()) == [], "no export folder and no hidden temporary one"
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
