"""GPTQ and AWQ time and peak memory per decoder layer at a real model's width, extrapolated to all its layers.

The export quantizes one decoder layer at a time (:mod:`qtune.export.stream`): capture the calibration hidden states
entering layer 0 once, then per layer run the quantizer (the export's own, ``qtune.export.pipeline._quantizer`` with
the recipe defaults) and the layer's forward for the next layer's inputs. This runs that loop on a random Llama of
the given width with ``--layers`` layers (float32, as the export's skeleton), random calibration tokens
(``--samples`` x ``--seq``), and prints per format a ``RESULT`` line:

    capture_s, layer_s (each layer)     seconds, synchronised
    peak_bytes                          torch.cuda.max_memory_allocated over the format (CPU: none)
    extrapolated_s                      capture_s + FULL_LAYERS x mean(layer_s of layers 2..N) — layer 1 carries the
                                        first-call warm-up (cuSOLVER, Triton); the weights' merge and disk I/O of the
                                        real export are not in it
    peak_one_layer_bytes                peak_bytes - (N - 1) x one layer's float32 weights: the streamed export holds
                                        one layer, this loop holds N

    python scripts/bench_export_layers.py --width 7b --layers 2 --samples 128 --seq 2048      # on a GPU
    python scripts/bench_export_layers.py --width tiny --layers 2 --samples 4 --seq 64          # CPU rehearsal
"""

from __future__ import annotations

import argparse
import json
import time

import torch

WIDTHS = {  # (config fields, the real model's layer count)
    "7b": (dict(hidden_size=4096, intermediate_size=11008, num_attention_heads=32, num_key_value_heads=32,
                vocab_size=32000), 32),
    "tiny": (dict(hidden_size=128, intermediate_size=256, num_attention_heads=4, num_key_value_heads=2,
                  vocab_size=1024), 4),
}


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def one_format(fmt: str, width: str, layers: int, calib: torch.Tensor, device: str) -> dict:
    from transformers import LlamaConfig, LlamaForCausalLM

    from qtune.export.pipeline import _quantizer
    from qtune.export.sequential import capture_layer_inputs, decoder_layers, layer_groups, run_layer
    from qtune.recipe.schema import ExportSection

    fields, full = WIDTHS[width]
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM(LlamaConfig(num_hidden_layers=layers, max_position_embeddings=4096, **fields)).eval()
    section = ExportSection(formats=[fmt])
    quantize_layer = _quantizer(fmt, section)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    sync(device)
    t0 = time.perf_counter()
    inputs = capture_layer_inputs(model, calib, batch_size=8)  # the export's default batch
    sync(device)
    capture = time.perf_counter() - t0
    _, blocks = decoder_layers(model)
    groups = layer_groups(model)
    per_layer = []
    for layer in blocks:
        t0 = time.perf_counter()
        quantize_layer(layer, inputs, groups)
        inputs = run_layer(layer, inputs)
        sync(device)
        per_layer.append(time.perf_counter() - t0)
        print(f"{fmt} layer {len(per_layer)}: {per_layer[-1]:.2f} s", flush=True)
    steady = per_layer[1:] or per_layer
    layer_bytes = sum(p.numel() * p.element_size() for p in blocks[0].parameters())
    peak = torch.cuda.max_memory_allocated() if device == "cuda" else None
    return {"format": fmt, "width": width, "group_size": section.group_size, "calibration": list(calib.shape),
            "capture_s": round(capture, 2), "layer_s": [round(s, 2) for s in per_layer], "full_layers": full,
            "extrapolated_s": round(capture + full * sum(steady) / len(steady), 1),
            "extrapolation": f"capture + {full} x mean(layers 2..{layers})" if len(per_layer) > 1 else
                             f"capture + {full} x layer 1",
            "peak_bytes": peak, "peak_one_layer_bytes": None if peak is None else peak - (layers - 1) * layer_bytes}


def main() -> None:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--width", choices=list(WIDTHS), default="7b" if device == "cuda" else "tiny")
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--samples", type=int, default=128)
    ap.add_argument("--seq", type=int, default=2048)
    ap.add_argument("--formats", nargs="+", choices=("gptq", "awq"), default=["gptq", "awq"])
    args = ap.parse_args()
    vocab = WIDTHS[args.width][0]["vocab_size"]
    calib = torch.randint(0, vocab, (args.samples, args.seq), generator=torch.Generator().manual_seed(0)).to(device)
    for fmt in args.formats:
        result = one_format(fmt, args.width, args.layers, calib, device)
        print("RESULT " + json.dumps(result), flush=True)
        if device == "cuda":
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
