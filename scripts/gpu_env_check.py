"""The first step of scripts/gpu_all.py: is this machine what the other steps need? One ``error:`` line and exit 2 if not.

Checked: qtune and its recipe schema import (pydantic comes as carried wheels); on the GPU a CUDA device is visible
and the carried bitsandbytes has the CUDA library this torch needs (``.gpu/site``, scripts/prepare_gpu.sh keeps one);
the carried wheels were built for this Python (``.gpu/manifest.json``); bitsandbytes quantizes and dequantizes a
4-bit weight on the device exactly as qtune's reference reads it; the tiny model is there. Printed as ``RESULT``:
the device, every version (the GPU image's torch, transformers and triton are older than constraints.txt's pins, so
they are part of every result), and the notes.

    python scripts/gpu_env_check.py [--tiny] [--model .gpu/tiny]
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
MANIFEST = REPO / ".gpu" / "manifest.json"
PACKAGES = ("torch", "triton", "transformers", "peft", "accelerate", "bitsandbytes", "liger_kernel", "pydantic")


def versions() -> dict[str, str]:
    out = {"python": ".".join(map(str, sys.version_info[:3]))}
    for name in PACKAGES:
        try:
            out[name] = getattr(importlib.import_module(name), "__version__", "?")
        except Exception as e:  # noqa: BLE001 - any import failure is reported, not raised
            out[name] = f"missing ({type(e).__name__})"
    return out


def carried_mismatch(manifest: dict, python: tuple[int, int], cuda: str | None, bnb_dir: Path) -> list[str]:
    """What the carried folder (its manifest) gets wrong for this Python and this torch's CUDA; [] when it fits."""
    problems = []
    if manifest.get("python") and manifest["python"] != "%d.%d" % python:
        problems.append(f".gpu/manifest.json: the carried wheels are for Python {manifest['python']}, this is "
                        f"{python[0]}.{python[1]}; rebuild with scripts/prepare_gpu.sh --python-version {python[0]}.{python[1]}")
    if cuda is not None:
        lib = f"libbitsandbytes_cuda{cuda.replace('.', '')}.so"
        if not (bnb_dir / lib).is_file():
            have = sorted(p.name for p in bnb_dir.glob("libbitsandbytes_*.so"))
            problems.append(f"{bnb_dir}: no {lib} for torch's CUDA {cuda} (carried: {', '.join(have) or 'none'}); "
                            f"rebuild with scripts/prepare_gpu.sh --cuda {cuda.replace('.', '')}")
    return problems


def round_trip(device: str) -> float:
    """Max |bitsandbytes' dequantization - qtune's reference| of one NF4 double-quant weight quantized on ``device``."""
    import bitsandbytes.functional as F
    import torch

    from qtune.kernels.dequant import dequantize_reference
    from qtune.kernels.storage import from_quant_state

    w = torch.randn(256, 320, generator=torch.Generator().manual_seed(0)).to(device, torch.bfloat16)
    packed, state = F.quantize_4bit(w, blocksize=64, quant_type="nf4", compress_statistics=True)
    theirs = F.dequantize_4bit(packed, state)
    ours = dequantize_reference(from_quant_state(packed, state), theirs.dtype)
    rel = ((theirs.float() - w.float()).abs().mean() / w.float().abs().mean()).item()
    if rel > 0.15:  # NF4's mean error on Gaussian weights: 0.091 of the mean |w| (measured, bitsandbytes 0.50.2 CPU)
        raise RuntimeError(f"bitsandbytes' dequantized weight is {rel:.2f} off the original (NF4 gives 0.09): "
                           "its library computes something else")
    return (theirs.float() - ours.float()).abs().max().item()


def check(tiny: bool, model: Path) -> tuple[dict, list[str]]:
    """(what was found, the errors)."""
    found, errors = {"versions": versions(), "notes": []}, []
    missing = [k for k, v in found["versions"].items() if v.startswith("missing")]
    hard = [k for k in missing if k != "liger_kernel"]
    if hard:
        return found, [f"missing packages {', '.join(hard)}: carry them (scripts/prepare_gpu.sh builds .gpu/)"]
    if missing:
        found["notes"].append("liger-kernel missing: the fast mode and liger switches will fail")
    import torch

    import qtune.recipe.schema  # noqa: F401 - pydantic and the schema import

    device = "cpu" if tiny else "cuda"
    if not tiny and not torch.cuda.is_available():
        return found, [f"no CUDA device visible to torch {torch.__version__} (built for CUDA {torch.version.cuda})"]
    found["device"] = torch.cuda.get_device_name() + " sm%d%d" % torch.cuda.get_device_capability() if not tiny else \
        f"CPU ({torch.get_num_threads()} threads)"
    manifest = json.loads(MANIFEST.read_text()) if MANIFEST.is_file() else {}
    import bitsandbytes

    problems = carried_mismatch(manifest, sys.version_info[:2], None if tiny else torch.version.cuda,
                                Path(bitsandbytes.__file__).parent)
    (found["notes"] if tiny else errors).extend(problems)  # on CPU the carried folder is not what runs
    if not manifest:
        found["notes"].append("no .gpu/manifest.json (scripts/prepare_gpu.sh not run): carried wheels unchecked")
    if errors:
        return found, errors
    try:
        found["round_trip_max_diff"] = round_trip(device)
    except Exception as e:  # noqa: BLE001 - the one line says what broke
        return found, [f"bitsandbytes 4-bit round trip on {device} failed: {type(e).__name__}: {str(e)[:200]}"]
    if found["round_trip_max_diff"] != 0:
        errors.append(f"bitsandbytes on {device} dequantizes differently from qtune's reference "
                      f"(max diff {found['round_trip_max_diff']:.3g}): the storage format moved")
    if not (model / "config.json").is_file() or not any(model.glob("tokenizer*")):
        errors.append(f"{model}: no tiny model (config.json + tokenizer); build it with scripts/prepare_gpu.sh")
    return found, errors


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiny", action="store_true", help="CPU: no CUDA checks")
    ap.add_argument("--model", type=Path, default=REPO / ".gpu" / "tiny")
    args = ap.parse_args()
    found, errors = check(args.tiny, args.model)
    print("RESULT " + json.dumps(found), flush=True)
    for e in errors:
        print(f"error: {e}", flush=True)
    return 2 if errors else 0


if __name__ == "__main__":
    raise SystemExit(main())
