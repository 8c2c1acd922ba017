"""Kernel tests run Triton's CPU interpreter unless TRITON_INTERPRET=0 is set (scripts/gpu_all.py
does, on a CUDA machine); the root conftest sets the default before any kernel is defined."""

import os

import pytest
import torch


@pytest.fixture(scope="session")
def device() -> str:
    if os.environ["TRITON_INTERPRET"] == "1":
        return "cpu"
    if not torch.cuda.is_available():
        pytest.skip("TRITON_INTERPRET=0 needs a CUDA GPU")
    return "cuda"


def quantize(w: torch.Tensor, quant_type: str, blocksize: int, nested: bool):
    """bitsandbytes' own 4-bit quantization of ``w``: (packed uint8, QuantState)."""
    import bitsandbytes.functional as F

    return F.quantize_4bit(w, blocksize=blocksize, quant_type=quant_type, compress_statistics=nested)


def diff(a: torch.Tensor, b: torch.Tensor) -> str:
    d = (a.float() - b.float()).abs()
    return f"max diff {d.max().item():.3g}, mean diff {d.mean().item():.3g}"
