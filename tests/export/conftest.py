import pytest
import torch


def tiny_llama(kv_heads: int = 4, seed: int = 0):
    """A 2-layer llama whose sizes are multiples of 128 (every group size divides them)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=256, hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=kv_heads, max_position_embeddings=256, tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():  # larger, uneven weights than the init, so quantization error is visible
        for p in model.parameters():
            if p.dim() == 2:
                p.mul_(torch.exp(torch.randn(1, p.shape[1]) * 0.5) * 3)
    return model


@pytest.fixture
def make_tiny():
    return tiny_llama


@pytest.fixture
def calib():
    g = torch.Generator().manual_seed(1)
    return torch.randint(0, 256, (16, 64), generator=g)


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    """These tests run many small ops; on a shared 2-core machine OpenMP spinning made them ~10x slower."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
