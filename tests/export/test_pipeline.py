"""``qtune export`` end to end on a tiny run: every format, the exports contract, fidelity."""

import json

import torch

from qtune.export.card import FIDELITY, MANIFEST
from qtune.export.checkpoint import load_dequantized
from qtune.registry.exports import DEFAULT_MERGE_BASE
from qtune.export.gguf_export import load_gguf_dequantized
from qtune.export.merge import merged_model


def test_export_all_formats(tiny_exports):
    tiny_run, root = tiny_exports  # conftest: merged, gptq, awq, gguf (F16, Q8_0, Q4_0), group 64, 8 x 64 calibration
    done = {json.loads((d / MANIFEST).read_text())["format"]: d for d in root.iterdir()}
    assert set(done) == {"merged", "gptq", "awq", "gguf"}
    for fmt, path in done.items():
        m = json.loads((path / MANIFEST).read_text())
        assert m["format"] == fmt and m["created_by"].startswith("qtune ") and m["base"] == DEFAULT_MERGE_BASE
        assert all((path / f).is_file() for f in m["files"])
        assert (path / "README.md").read_text().count("```") >= 2
        fid = json.loads((path / FIDELITY).read_text())
        assert fid
    gptq_meta = json.loads((done["gptq"] / MANIFEST).read_text())
    cal = gptq_meta["calibration"]
    assert cal["samples"] == 8 and cal["task_samples"] == 6 and cal["mix"]["samples"] == 2, cal
    fid = json.loads((done["gptq"] / FIDELITY).read_text())
    assert fid["export"]["figures"]["perplexity"].startswith("general text: ") and "task data" in fid["export"]["figures"]["eval_loss"]
    assert "not held out" in fid["note"]  # the mix is the bundled prose the perplexity is measured on
    assert done["gptq"].name == "gptq-w4g64" and gptq_meta["bits"] == 4.0 and gptq_meta["grid_search"] is True
    cfg = json.loads((done["gptq"] / "config.json").read_text())["quantization_config"]
    assert cfg["quant_method"] == "gptq" and cfg["desc_act"] is True and cfg["checkpoint_format"] == "gptq"
    cfg = json.loads((done["awq"] / "config.json").read_text())["quantization_config"]
    assert cfg["quant_method"] == "awq" and cfg["version"] == "gemm" and cfg["zero_point"] is True

    merged = merged_model(tiny_run, DEFAULT_MERGE_BASE)[0]
    ids = torch.randint(0, 1000, (2, 48), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = merged(input_ids=ids).logits
        f16 = load_gguf_dequantized(done["gguf"] / "run-F16.gguf", done["merged"])(input_ids=ids).logits
        gptq = load_dequantized(done["gptq"])(input_ids=ids).logits
    # F16 GGUF, with q/k permuted and back, is the merged model up to float16 rounding
    d = (f16 - ref).abs()
    assert d.max() < 1e-2, f"F16 max {d.max():.3e} mean {d.mean():.3e}"
    assert (gptq - ref).abs().mean() > 10 * d.mean(), "4-bit GPTQ should differ more than F16 rounding"
    gg = json.loads((done["gguf"] / FIDELITY).read_text())["exports"]
    err = {k.split("-")[1][:-5]: abs(v["delta"]["perplexity"]) for k, v in gg.items()}
    assert err["F16"] <= err["Q8_0"] <= err["Q4_0"], err
    bits = json.loads((done["gguf"] / MANIFEST).read_text())["bits_per_file"]
    assert bits["run-Q8_0.gguf"] == 8.5 and bits["run-Q4_0.gguf"] == 4.5 and bits["run-F16.gguf"] == 16, bits
    fid = json.loads((done["gptq"] / FIDELITY).read_text())
    # a random tiny model is fragile; 4-bit still keeps the eval loss within 10% here
    assert abs(fid["delta"]["eval_loss"]) < 0.1 * fid["merged"]["eval_loss"], fid


def test_gguf_tensors_read_a_block_of_rows_at_a_time_equal_one_read(tiny_exports):
    """GGUFWeights dequantizes a block of rows at a time (gguf's dequantize makes several float32 copies of
    what it is given); every tensor of every file type equals the whole tensor read and dequantized at once."""
    import gguf
    import numpy as np

    from qtune.export.gguf_export import GGUFWeights

    _, root = tiny_exports
    done = {json.loads((d / MANIFEST).read_text())["format"]: d for d in root.iterdir()}
    for path in sorted(done["gguf"].glob("*.gguf")):
        blocks = GGUFWeights(path, done["merged"])
        blocks.CHUNK = 100  # a few rows per block, and a last block that is not full
        for name, (qtype, shape, offset, dtype, stored) in blocks.tensors.items():
            raw = np.fromfile(path, dtype=dtype, count=int(np.prod(stored)), offset=offset).reshape(stored)
            whole = gguf.quants.dequantize(raw, qtype).astype(np.float32).reshape(shape[::-1])
            got = blocks(name)
            if not name.endswith(("q_proj.weight", "k_proj.weight", "norm.weight")):  # those are un-permuted / offset
                assert np.array_equal(got.numpy(), whole), f"{path.name} {name}"
            assert torch.equal(got, GGUFWeights(path, done["merged"])(name)), f"{path.name} {name}: block size changed it"


def test_loading_a_gptq_or_awq_export_without_its_backend_says_what_to_install(tiny_exports):
    """``qtune eval`` / ``report`` on a GPTQ or AWQ export where transformers cannot load it: one line naming the export,
    the packages, what transformers found missing and the extra (the row of a report says the same)."""
    import importlib.util

    import pytest

    from qtune.errors import QtuneError
    from qtune.models.sources import load_source, resolve_source

    if importlib.util.find_spec("gptqmodel") and importlib.util.find_spec("optimum"):
        pytest.skip("optimum and gptqmodel are installed: tests/export/test_consumers.py loads these exports")
    _, root = tiny_exports
    for fmt in ("gptq", "awq"):
        path = next(d for d in root.iterdir() if json.loads((d / MANIFEST).read_text())["format"] == fmt)
        with pytest.raises(QtuneError) as info:
            load_source(resolve_source(str(path)), "cpu")
        msg = str(info.value)
        assert msg.startswith(f"loading the {fmt.upper()} export '{path}' needs optimum and gptqmodel (transformers: "), msg
        assert msg.endswith("): pip install 'qtune[verify]'") and "\n" not in msg, msg


def test_every_export_names_its_stop_tokens_where_its_consumer_reads_them(tiny_exports):
    """generation_config.json (transformers, vLLM) of merged/GPTQ/AWQ and the GGUF's metadata (llama.cpp) name the
    run's stop tokens, and so do the manifest and card. This run's adapter folder has no generation config (a run
    from before train wrote one): its stops come from its tokenizer and family, SmolLM2's <|im_end|> alone (the
    llama family's <|eot_id|> is no token of it)."""
    import gguf
    from transformers import AutoTokenizer

    from qtune.models.generation_config import gguf_stops, read_stop_ids

    tiny_run, root = tiny_exports
    eos = AutoTokenizer.from_pretrained(tiny_run / "adapter").eos_token_id
    done = {json.loads((d / MANIFEST).read_text())["format"]: d for d in root.iterdir()}
    for fmt, path in done.items():
        assert json.loads((path / MANIFEST).read_text())["stop_tokens"] == {"<|im_end|>": eos}, fmt
        assert f"| stops generating on | `<|im_end|>` ({eos}) |" in (path / "README.md").read_text()
        if fmt != "gguf":
            assert read_stop_ids(path) == [eos], fmt
    for f in sorted(done["gguf"].glob("*.gguf")):
        assert gguf_stops(gguf.GGUFReader(str(f))) == {"eos": eos}, f.name
