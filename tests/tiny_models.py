"""Tiny random-weight models of the target architectures, built from configs (no download).

``head_dim`` is 16 by default (the smallest, fastest); vLLM's CPU attention accepts 32, 64, ...
only, so models that vLLM loads are built with ``head_dim=32``. Float32, eval mode, on the CPU.
"""

from __future__ import annotations

import torch

#: SmolLM2's vocabulary: the default, so that the stand-in tokenizers of ``family_fixtures`` fit.
SMOLLM2_VOCAB = 49152


def build_tiny_gpt_oss(vocab_size: int = SMOLLM2_VOCAB, sliding_window: int = 16, seed: int = 0,
                       head_dim: int = 16, heads: tuple[int, int] = (4, 2)):
    """A random GptOssForCausalLM: 2 layers (sliding, full), 4 experts, sinks, eager attention;
    ``heads``: (query heads, key/value heads) (gpt-oss-20b's are (64, 8), with ``head_dim=64``)."""
    from transformers import GptOssConfig, GptOssForCausalLM

    torch.manual_seed(seed)
    config = GptOssConfig(vocab_size=vocab_size, hidden_size=64, intermediate_size=64, head_dim=head_dim,
                          num_attention_heads=heads[0], num_key_value_heads=heads[1], num_hidden_layers=2,
                          num_local_experts=4, num_experts_per_tok=2, sliding_window=sliding_window,
                          max_position_embeddings=4096, attn_implementation="eager",
                          eos_token_id=2, pad_token_id=2, bos_token_id=1)
    model = GptOssForCausalLM(config).eval()
    # Random init puts every logit near 0 (all entropies near log2 k); sharper logits make the
    # signals, the argmax and the comparisons meaningful.
    with torch.no_grad():
        model.lm_head.weight.mul_(40.0)
    return model


def build_tiny_qwen3_moe(vocab_size: int = SMOLLM2_VOCAB, seed: int = 0, head_dim: int = 16):
    """A random Qwen3MoeForCausalLM: 2 full-attention layers, 8 experts, 2 active."""
    from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM

    torch.manual_seed(seed)
    config = Qwen3MoeConfig(vocab_size=vocab_size, hidden_size=64, intermediate_size=128, moe_intermediate_size=32,
                            head_dim=head_dim, num_attention_heads=4, num_key_value_heads=2, num_hidden_layers=2,
                            num_experts=8, num_experts_per_tok=2, norm_topk_prob=True,
                            max_position_embeddings=4096, eos_token_id=2, pad_token_id=2, bos_token_id=1)
    model = Qwen3MoeForCausalLM(config).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(40.0)
    return model
