"""GPTQ and AWQ bit packing round-trips exactly; act-order's g_idx survives the trip."""

import pytest
import torch

from qtune.export.gptq import gptq_quantize
from qtune.export.grid import QuantizedWeight, rtn
from qtune.export.packing import pack_awq, pack_gptq, unpack_awq, unpack_gptq


def random_qweight(out, n_in, bits, group_size, act_order, seed=0) -> QuantizedWeight:
    g = torch.Generator().manual_seed(seed)
    n_groups = n_in // group_size
    g_idx = torch.arange(n_in) // group_size
    if act_order:
        g_idx = g_idx[torch.randperm(n_in, generator=g)]
    return QuantizedWeight(
        q=torch.randint(0, 2**bits, (out, n_in), generator=g).to(torch.uint8),
        scale=(torch.rand(out, n_groups, generator=g) + 0.01).half().float(),
        zero=torch.randint(0, 2**bits, (out, n_groups), generator=g).to(torch.int32),  # includes 0 and 2^b-1
        g_idx=g_idx.to(torch.int32),
        bits=bits,
        group_size=group_size,
    )


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("act_order", [False, True])
def test_gptq_pack_roundtrip(bits, act_order):
    w = random_qweight(64, 256, bits, 32, act_order)
    packed = pack_gptq(w)
    assert packed["qweight"].shape == (256 * bits // 32, 64) and packed["qweight"].dtype == torch.int32
    assert packed["qzeros"].shape == (8, 64 * bits // 32) and packed["scales"].dtype == torch.float16
    back = unpack_gptq(packed, bits, 32)
    for f in ("q", "zero", "g_idx"):
        assert torch.equal(getattr(back, f).long(), getattr(w, f).long()), f
    assert torch.equal(back.scale, w.scale)
    assert torch.equal(back.dequantize(), w.dequantize())


def test_gptq_pack_layout_matches_reference_loop():
    """The layout written out by hand, as in the original GPTQ pack(): word r, bits j·b of q[r·k + j]."""
    w = random_qweight(16, 64, 4, 32, act_order=False, seed=3)
    qweight = pack_gptq(w)["qweight"].to(torch.int64) & 0xFFFFFFFF
    intw = w.q.T.to(torch.int64)  # (in, out)
    for r in range(qweight.shape[0]):
        word = torch.zeros(16, dtype=torch.int64)
        for j in range(8):
            word |= intw[r * 8 + j] << (4 * j)
        assert torch.equal(qweight[r], word)


def test_act_order_handled_on_load():
    """An act-order GPTQ weight unpacks, via g_idx, to exactly the weights GPTQ computed."""
    torch.manual_seed(0)
    x = torch.randn(512, 128) * torch.linspace(0.1, 5, 128)
    w = torch.randn(64, 128)
    q = gptq_quantize(w, 2 * x.T @ x / 512, 4, 32, act_order=True)
    assert not torch.equal(q.g_idx.long(), torch.arange(128) // 32)
    back = unpack_gptq(pack_gptq(q), 4, 32)
    assert torch.equal(back.dequantize(), q.dequantize())
    err = (back.dequantize() - w).abs()
    assert err.max() < 1.0, f"max {err.max():.3f} mean {err.mean():.3f}"  # sanity: it is still w


def test_awq_pack_roundtrip_and_order():
    w = random_qweight(64, 256, 4, 64, act_order=False)
    packed = pack_awq(w)
    assert packed["qweight"].shape == (256, 8) and packed["qzeros"].shape == (4, 8)
    back = unpack_awq(packed, 64)
    assert torch.equal(back.q, w.q) and torch.equal(back.zero.long(), w.zero.long())
    # AutoAWQ's interleave: nibble i of a word holds output column 8·c + (0,2,4,6,1,3,5,7)[i]
    word = int(packed["qweight"][5, 0]) & 0xFFFFFFFF
    nibbles = [(word >> (4 * i)) & 0xF for i in range(8)]
    assert nibbles == [int(w.q[o, 5]) for o in (0, 2, 4, 6, 1, 3, 5, 7)]


def test_rtn_dequantize_error_is_within_half_step():
    torch.manual_seed(0)
    w = torch.randn(32, 128)
    r = rtn(w, 4, 64)
    step = r.scale[:, r.g_idx.long()]
    err = (r.dequantize() - w).abs()
    assert (err <= step / 2 + 1e-6).all(), f"max err/step {(err / step).max():.3f}"
